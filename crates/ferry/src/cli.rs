//! The command line: `ferry server`, client commands that talk to the API, `ferry bench`.
//!
//! Client commands print a short view for people ([`crate::view`]) and, with `--json`,
//! the server's whole answer for scripts. They reach the server at `--server`
//! (`FERRY_SERVER`; the scheme may be left out) with `--token` (`FERRY_TOKEN`).

use crate::client::Client;
use crate::config::{Config, FlagOverrides, ListenAddr};
use crate::view;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ferry_store::sqlite::Durability;
use reqwest::Method;
use serde_json::{Value, json};
use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

/// Ferry: a durable job and workflow engine.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and embedded workers (SQLite in the data directory by default, or
    /// PostgreSQL with --database).
    Server(ServerArgs),
    /// Run workers only, for the given queues, on a shared PostgreSQL store. Serves only
    /// /healthz, /readyz and /metrics on its listen address.
    Worker(WorkerArgs),
    /// Submit a job.
    Submit(SubmitArgs),
    /// Show a job: kind, queue, state, attempts, last error, output (all of it with --json).
    Status {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// API tokens: create one directly in the store (the first admin token, before any
    /// server runs; any operator token), list and revoke them through the API, or reopen a
    /// store whose tokens were all revoked.
    Token {
        #[command(subcommand)]
        command: crate::token_cmd::TokenCommand,
    },
    /// Queues: counts and run-time settings.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Schedules: list, create, pause, resume, delete.
    Schedule {
        #[command(subcommand)]
        command: crate::schedule_cmd::ScheduleCommand,
    },
    /// Circuit breakers: list them; reset, open or close one (operator).
    Breaker {
        #[command(subcommand)]
        command: crate::breaker_cmd::BreakerCommand,
    },
    /// The workspace's failures, grouped by cause: count, severity, last seen.
    Errors(crate::errors_cmd::ErrorsArgs),
    /// Blobs of the workspace: fetch one by hash.
    Blob {
        #[command(subcommand)]
        command: crate::blob_cmd::BlobCommand,
    },
    /// The workspace's concurrency limits and label rates (admin).
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// Register and inspect workflows.
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
    /// Start a run of a workflow; with --follow, watch each node until the run ends (the
    /// exit status says whether it succeeded).
    Run(RunArgs),
    /// Workflow runs: show, cancel and list them.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure Ferry on a fresh, temporary store: throughput and pickup latency (`queue`,
    /// the default), the `exec` sandbox's overhead (`sandbox`), the workflow engine's
    /// (`workflow`).
    Bench(crate::bench::BenchArgs),
    /// Stand-ins for the services jobs call, answering from a script on loopback: a test
    /// and demo aid (`ferry stand-in llm --script FILE`).
    StandIn {
        #[command(subcommand)]
        command: crate::stand_in::StandInCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queue with its counts and settings: an operator's are every workspace's,
    /// anyone else's its own workspace's.
    List {
        /// Operator: only this workspace's counts and share
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a queue at run time; what is not given keeps its value, and `null` returns a
    /// setting to the configured value (`--rate null`: no rate). An operator changes the
    /// whole queue; a workspace admin changes only its own jobs on it (pause, resume, rate).
    Set {
        name: String,
        /// Operator: change this workspace's share only (pause, resume, rate)
        #[arg(long)]
        workspace: Option<String>,
        /// Attempts at once per worker process, or null
        #[arg(long, value_parser = parse_setting::<u32>)]
        concurrency: Option<Setting<u32>>,
        /// Most waiting jobs (0: no cap), or null
        #[arg(long, value_parser = parse_setting::<u64>)]
        max_depth: Option<Setting<u64>>,
        /// Most attempts started per second, across every worker process, or null
        #[arg(long, value_parser = parse_setting::<f64>)]
        rate: Option<Setting<f64>>,
        /// Stop dispatching (submissions are still accepted)
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        /// Dispatch again
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Show the limits in force.
    Get {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace them with a whole limits object: JSON text, or @FILE (`PUT /v1/limits`).
    /// Nothing is merged: a part left out (`per_workspace`, `per_user`, `users`) takes its
    /// built-in default, and a number left out inside a part is null (no limit). To change
    /// one value, start from `ferry limits get --json`.
    Set {
        limits: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The workspace's rates on label keys.
    Rates {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rate-limit the workspace's jobs that carry a label: at most RATE starts per second
    /// for each value of the label, across every worker process.
    SetRate {
        label: String,
        rate: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove the workspace's rate on a label key.
    UnsetRate {
        label: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Register a workflow from a YAML or JSON file (a new version of its name).
    Apply {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the workflows and their latest versions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a workflow's versions and definitions.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The workflow's name
    pub name: String,
    /// The version to run (default: the latest)
    #[arg(long)]
    pub workflow_version: Option<u32>,
    /// The run's input: JSON text, or @FILE to read it from a file
    #[arg(long)]
    pub input: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Show each node live until the run ends
    #[arg(long)]
    pub follow: bool,
    /// Wait for the run to end, then show it (exit status 0 only if it succeeded)
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Show a run: its state and each node's (all of it with --json).
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a run: running nodes stop, waiting ones never start.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first.
    List {
        /// Only runs in this state (queued, running, succeeded, failed, cancelled, timed_out)
        #[arg(long)]
        state: Option<String>,
        /// Only runs of this workflow
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead jobs, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a dead job again with fresh attempts.
    Replay {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a dead (or other finished) job for good.
    Delete {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged configuration (defaults, file, FERRY_* environment, flags).
    Show(ServerArgs),
}

/// Flags every command that opens the store shares.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// TOML configuration file [env: FERRY_CONFIG]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL; unset, Ferry uses SQLite in the data directory [env: FERRY_DATABASE_URL]
    #[arg(long = "database")]
    pub database_url: Option<String>,
}

/// Flags of `ferry server`. Each is also an environment variable and a key of the TOML file.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// API address, IP:PORT or HOST:PORT (`localhost:7803`) [env: FERRY_LISTEN] [default: 127.0.0.1:7700]
    #[arg(long)]
    pub listen: Option<ListenAddr>,
    /// Data directory holding the SQLite file [env: FERRY_DATA_DIR] [default: ./ferry-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Default concurrency of each queue's embedded workers; 0 serves the API only
    /// [env: FERRY_WORKERS] [default: 10]
    #[arg(long)]
    pub workers: Option<usize>,
    /// `process`: a job survives a crash of the process; `full`: also a power cut (an
    /// fsync per group commit) [env: FERRY_DURABILITY] [default: process]
    #[arg(long, value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Serve unauthenticated requests on a non-loopback address while no API token
    /// exists (anyone who reaches it is admin of workspace `default`) [env: FERRY_INSECURE]
    #[arg(long)]
    pub insecure: bool,
    /// Default limit on each user's running workflow runs, for workspaces that set none [default: 5]
    #[arg(long)]
    pub user_runs: Option<u64>,
    /// Default limit on each workspace's running workflow runs [default: 10]
    #[arg(long)]
    pub workspace_runs: Option<u64>,
    /// Default limit on each user's unfinished standalone jobs [default: none]
    #[arg(long)]
    pub user_jobs: Option<u64>,
    /// Default limit on each workspace's unfinished standalone jobs [default: none]
    #[arg(long)]
    pub workspace_jobs: Option<u64>,
}

/// Flags of `ferry worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Queues to serve, comma-separated
    #[arg(long = "queue", value_delimiter = ',', required = true)]
    pub queues: Vec<String>,
    /// Attempts run at once per queue [default: the `workers` setting, 10]
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Address of /healthz, /readyz and /metrics, IP:PORT or HOST:PORT
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: ListenAddr,
}

impl StoreArgs {
    pub(crate) fn load(&self, flags: FlagOverrides) -> anyhow::Result<Config> {
        let file = self.config.clone().or_else(|| std::env::var_os("FERRY_CONFIG").map(PathBuf::from));
        Config::load(file.as_ref(), &FlagOverrides { database_url: self.database_url.clone(), ..flags })
    }
}

impl WorkerArgs {
    /// The merged, validated configuration.
    pub fn load(&self) -> anyhow::Result<Config> {
        self.store.load(FlagOverrides::default())
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "process" => Ok(Durability::Process),
        "full" => Ok(Durability::Full),
        _ => Err("expected `process` or `full`".into()),
    }
}

impl ServerArgs {
    /// The merged, validated configuration.
    pub fn load(&self) -> anyhow::Result<Config> {
        self.store.load(FlagOverrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            workers: self.workers,
            durability: self.durability,
            database_url: None,
            insecure: self.insecure.then_some(true),
            default_limits: self.default_limits(),
        })
    }

    /// The default-limit flags that were given, shaped like `default_limits`.
    fn default_limits(&self) -> Option<Value> {
        let mut limits = serde_json::Map::new();
        for (scope, key, value) in [
            ("per_user", "runs", self.user_runs),
            ("per_workspace", "runs", self.workspace_runs),
            ("per_user", "jobs", self.user_jobs),
            ("per_workspace", "jobs", self.workspace_jobs),
        ] {
            if let Some(v) = value {
                let entry = limits.entry(scope).or_insert_with(|| json!({}));
                entry[key] = json!(v);
            }
        }
        (!limits.is_empty()).then_some(Value::Object(limits))
    }
}

/// Where the API is, who is asking, and how to print the answer.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's base URL; without a scheme, http:// is assumed (`127.0.0.1:7899`)
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// API token, sent as `Authorization: Bearer …`
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the server's whole JSON answer instead of the short view
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token.clone())
    }

    /// Prints `answer`: whole as JSON with `--json`, else `short`'s view of it.
    pub(crate) fn print(&self, answer: &Value, short: impl FnOnce(&Value) -> String) {
        if self.json {
            print(answer);
        } else {
            print!("{}", short(answer));
        }
    }
}

/// A queue setting on the command line: a value, or `null` to return to the configured one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    Value(T),
    Null,
}

fn parse_setting<T: FromStr>(s: &str) -> Result<Setting<T>, String>
where
    T::Err: Display,
{
    if s == "null" {
        return Ok(Setting::Null);
    }
    s.parse().map(Setting::Value).map_err(|e| format!("{e} (give a number, or null for the configured value)"))
}

impl<T: serde::Serialize> Setting<T> {
    fn to_json(&self) -> Value {
        match self {
            Setting::Value(v) => json!(v),
            Setting::Null => Value::Null,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The job's kind: noop, sleep, fail, http, webhook, llm or exec (see the README's "Kinds")
    pub kind: String,
    /// The input: JSON text, or @FILE to read it from a file
    #[arg(long)]
    pub input: Option<String>,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt, in milliseconds
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Run no earlier than this many milliseconds from now
    #[arg(long)]
    pub delay_ms: Option<u64>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The circuit breaker the job goes through (default: its kind's, e.g. an http URL's origin)
    #[arg(long)]
    pub breaker: Option<String>,
    /// Run one at a time with the workspace's other jobs of this key, in submission order
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Wait for the job to finish, showing progress, then show it; exit status 0 only if
    /// it succeeded
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(crate) fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn read_input(raw: &str) -> anyhow::Result<Value> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => raw.to_string(),
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Submit(args) => crate::watch::submit(args).await,
        Command::Status { id, client } => {
            client.print(&client.client()?.call(Method::GET, &format!("/v1/jobs/{id}"), None).await?, view::job);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, client } => {
            let answer = client.client()?.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await?;
            client.print(&answer, |a| view::accepted("job", a));
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::List { limit, client } } => {
            let page = client.client()?.call(Method::GET, &format!("/v1/jobs?state=dead&limit={limit}"), None).await?;
            client.print(&page, view::job_list);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::Replay { id, client } } => {
            let answer = client.client()?.call(Method::POST, &format!("/v1/jobs/{id}/replay"), None).await?;
            client.print(&answer, |a| view::accepted("job", a));
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::Delete { id, client } } => {
            client.client()?.call(Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
            println!("deleted {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::Apply { file, client } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // YAML is a superset of JSON: one parser reads both.
            let def: Value =
                yaml_serde::from_str(&text).with_context(|| format!("{} is not valid YAML or JSON", file.display()))?;
            print(&client.client()?.call(Method::POST, "/v1/workflows", Some(&def)).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::List { client } } => {
            print(&client.client()?.call(Method::GET, "/v1/workflows", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::Show { name, client } } => {
            print(&client.client()?.call(Method::GET, &format!("/v1/workflows/{name}"), None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => crate::watch::run(args).await,
        Command::Runs { command: RunsCommand::Show { id, client } } => {
            client.print(&client.client()?.call(Method::GET, &format!("/v1/runs/{id}"), None).await?, view::run);
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { command: RunsCommand::Cancel { id, client } } => {
            let answer = client.client()?.call(Method::POST, &format!("/v1/runs/{id}/cancel"), None).await?;
            client.print(&answer, |a| view::accepted("run", a));
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { command: RunsCommand::List { state, workflow, limit, client } } => {
            let mut path = format!("/v1/runs?limit={limit}");
            for (key, value) in [("state", state), ("workflow", workflow)] {
                if let Some(v) = value {
                    path.push_str(&format!("&{key}={v}"));
                }
            }
            client.print(&client.client()?.call(Method::GET, &path, None).await?, view::run_list);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { command: QueueCommand::List { workspace, client } } => {
            let path = match workspace {
                Some(w) => format!("/v1/queues?workspace={w}"),
                None => "/v1/queues".to_string(),
            };
            print(&client.client()?.call(Method::GET, &path, None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command: QueueCommand::Set { name, workspace, concurrency, max_depth, rate, pause, resume, client },
        } => {
            let mut body = serde_json::Map::new();
            if let Some(c) = concurrency {
                body.insert("concurrency".into(), c.to_json());
            }
            if let Some(d) = max_depth {
                body.insert("max_depth".into(), d.to_json());
            }
            if let Some(r) = rate {
                body.insert("rate".into(), r.to_json());
            }
            if pause || resume {
                body.insert("paused".into(), json!(pause));
            }
            let path = match workspace {
                Some(w) => format!("/v1/queues/{name}?workspace={w}"),
                None => format!("/v1/queues/{name}"),
            };
            print(&client.client()?.call(Method::PUT, &path, Some(&Value::Object(body))).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule { command } => crate::schedule_cmd::run(command).await,
        Command::Breaker { command } => crate::breaker_cmd::run(command).await,
        Command::Errors(args) => crate::errors_cmd::run(args).await,
        Command::Blob { command } => crate::blob_cmd::run(command).await,
        Command::Limits { command: LimitsCommand::Get { client } } => {
            print(&client.client()?.call(Method::GET, "/v1/limits", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::Set { limits, client } } => {
            let body = read_input(&limits)?;
            let answer = client.client()?.call(Method::PUT, "/v1/limits", Some(&body)).await?;
            print(&answer);
            // PUT replaces: say which parts went back to their defaults, since a reader of
            // the command may have meant a merge.
            let left_out: Vec<&str> =
                ["per_workspace", "per_user", "users"].into_iter().filter(|k| body.get(*k).is_none()).collect();
            if !left_out.is_empty() {
                eprintln!(
                    "note: the limits were replaced as a whole; {} took the default (left out)",
                    left_out.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::Rates { client } } => {
            print(&client.client()?.call(Method::GET, "/v1/limits/rates", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::SetRate { label, rate, client } } => {
            let path = format!("/v1/limits/rates/{label}");
            print(&client.client()?.call(Method::PUT, &path, Some(&json!({"rate": rate}))).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::UnsetRate { label, client } } => {
            let path = format!("/v1/limits/rates/{label}");
            client.client()?.call(Method::DELETE, &path, None).await?;
            println!("removed the rate on `{label}`");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => crate::token_cmd::run(command).await,
        other => bail!("not a client command: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queue_settings_take_a_number_or_null() {
        let cli =
            Cli::try_parse_from(["ferry", "queue", "set", "q", "--concurrency", "null", "--rate", "2.5"]).unwrap();
        let Command::Queue { command: QueueCommand::Set { concurrency, rate, max_depth, .. } } = cli.command else {
            panic!("not queue set")
        };
        assert_eq!((concurrency, rate, max_depth), (Some(Setting::Null), Some(Setting::Value(2.5)), None));
        assert_eq!(Setting::<u32>::Null.to_json(), Value::Null);
        let err = Cli::try_parse_from(["ferry", "queue", "set", "q", "--max-depth", "lots"]).unwrap_err().to_string();
        assert!(err.contains("null"), "the refusal says null is allowed: {err}");
    }

    #[test]
    fn worker_takes_a_queue_list() {
        let cli = Cli::try_parse_from(["ferry", "worker", "--queue", "a,b", "--database", "postgres://x@y/z"]).unwrap();
        let Command::Worker(w) = cli.command else { panic!("not a worker command") };
        assert_eq!(w.queues, vec!["a", "b"]);
        assert_eq!(w.store.database_url.as_deref(), Some("postgres://x@y/z"));
        assert!(Cli::try_parse_from(["ferry", "worker"]).is_err(), "--queue is required");
    }
}
