//! The command line: `ferry server`, client commands that talk to the API, `ferry bench`.

use crate::config::{Config, FlagOverrides};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ferry_store::sqlite::Durability;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Show a job: state, attempts, output, error.
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
        command: TokenCommand,
    },
    /// Queues: counts and run-time settings.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
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
    /// Measure throughput and pickup latency on a fresh, temporary store.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token in the store (`--data-dir` or `--database`) and print it once, alone
    /// on the last line. A SQLite data directory must not be in use by a running server:
    /// use `POST /v1/tokens` as an admin then.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        user: String,
        /// viewer, submitter, admin, or operator (every right of an admin in its workspace,
        /// plus the server-wide queue settings; made only here, never through the API)
        #[arg(long)]
        role: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Data directory holding the SQLite file [env: FERRY_DATA_DIR] [default: ./ferry-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Reopen a store whose tokens were all revoked: a server on it serves unauthenticated
    /// requests again on loopback (or with --insecure), as the operator. Refused while any
    /// unrevoked token exists. A SQLite data directory must not be in use by a running server.
    Reopen {
        #[command(flatten)]
        store: StoreArgs,
        /// Data directory holding the SQLite file [env: FERRY_DATA_DIR] [default: ./ferry-data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the workspace's tokens (without their secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token: refused from the next request on.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
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
    /// Change a queue at run time; what is not given keeps its value. An operator changes
    /// the whole queue; a workspace admin only pauses or resumes its own jobs on it.
    Set {
        name: String,
        /// Operator: pause or resume this workspace's jobs only
        #[arg(long)]
        workspace: Option<String>,
        /// Attempts at once per worker process
        #[arg(long)]
        concurrency: Option<u32>,
        /// Most waiting jobs (0: no cap)
        #[arg(long)]
        max_depth: Option<u64>,
        /// Most attempts started per second, across every worker process
        #[arg(long)]
        rate: Option<f64>,
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
    /// Replace them: JSON text, or @FILE (see `PUT /v1/limits`).
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
    #[command(flatten)]
    pub client: ClientArgs,
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
    /// API address [env: FERRY_LISTEN] [default: 127.0.0.1:7700]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
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
    /// Address of /healthz, /readyz and /metrics
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: SocketAddr,
}

impl StoreArgs {
    fn load(&self, flags: FlagOverrides) -> anyhow::Result<Config> {
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
            listen: self.listen,
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

/// Where the API is.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's base URL
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// API token, sent as `Authorization: Bearer …`
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The job's kind (noop, sleep, fail, http)
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
    /// Wait for the job to finish, showing progress; exit status 0 only if it succeeded
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A thin API client for the CLI.
struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Client { base: args.server.trim_end_matches('/').to_string(), http, token: args.token.clone() })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the Ferry server at {}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let e = &value["error"];
            let field = e["field"].as_str().map(|f| format!(" (field `{f}`)")).unwrap_or_default();
            bail!(
                "{status}: {}: {}{field}",
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn read_input(raw: &str) -> anyhow::Result<Value> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => raw.to_string(),
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

/// Runs a client command; returns the process exit code.
pub async fn run_client(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Submit(args) => submit(args).await,
        Command::Status { id, client } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, client } => {
            print(&Client::new(&client)?.call(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::List { limit, client } } => {
            let page = Client::new(&client)?
                .call(reqwest::Method::GET, &format!("/v1/jobs?state=dead&limit={limit}"), None)
                .await?;
            print(&page);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::Replay { id, client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::POST, &format!("/v1/jobs/{id}/replay"), None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command: DlqCommand::Delete { id, client } } => {
            Client::new(&client)?.call(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"), None).await?;
            println!("deleted {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::Apply { file, client } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            // YAML is a superset of JSON: one parser reads both.
            let def: Value =
                yaml_serde::from_str(&text).with_context(|| format!("{} is not valid YAML or JSON", file.display()))?;
            print(&Client::new(&client)?.call(reqwest::Method::POST, "/v1/workflows", Some(&def)).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::List { client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, "/v1/workflows", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command: WorkflowCommand::Show { name, client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, &format!("/v1/workflows/{name}"), None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args).await,
        Command::Queue { command: QueueCommand::List { workspace, client } } => {
            let path = match workspace {
                Some(w) => format!("/v1/queues?workspace={w}"),
                None => "/v1/queues".to_string(),
            };
            print(&Client::new(&client)?.call(reqwest::Method::GET, &path, None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command: QueueCommand::Set { name, workspace, concurrency, max_depth, rate, pause, resume, client },
        } => {
            let mut body = serde_json::Map::new();
            if let Some(c) = concurrency {
                body.insert("concurrency".into(), json!(c));
            }
            if let Some(d) = max_depth {
                body.insert("max_depth".into(), json!(d));
            }
            if let Some(r) = rate {
                body.insert("rate".into(), json!(r));
            }
            if pause || resume {
                body.insert("paused".into(), json!(pause));
            }
            let path = match workspace {
                Some(w) => format!("/v1/queues/{name}?workspace={w}"),
                None => format!("/v1/queues/{name}"),
            };
            print(&Client::new(&client)?.call(reqwest::Method::PUT, &path, Some(&Value::Object(body))).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::Get { client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, "/v1/limits", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::Set { limits, client } } => {
            let body = read_input(&limits)?;
            print(&Client::new(&client)?.call(reqwest::Method::PUT, "/v1/limits", Some(&body)).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::Rates { client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, "/v1/limits/rates", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::SetRate { label, rate, client } } => {
            let path = format!("/v1/limits/rates/{label}");
            print(&Client::new(&client)?.call(reqwest::Method::PUT, &path, Some(&json!({"rate": rate}))).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits { command: LimitsCommand::UnsetRate { label, client } } => {
            let path = format!("/v1/limits/rates/{label}");
            Client::new(&client)?.call(reqwest::Method::DELETE, &path, None).await?;
            println!("removed the rate on `{label}`");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command: TokenCommand::List { client } } => {
            print(&Client::new(&client)?.call(reqwest::Method::GET, "/v1/tokens", None).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command: TokenCommand::Revoke { id, client } } => {
            Client::new(&client)?.call(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None).await?;
            println!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command: TokenCommand::Create { workspace, user, role, store, data_dir } } => {
            let cfg = store.load(FlagOverrides { data_dir, ..FlagOverrides::default() })?;
            let role: ferry_core::auth::Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let ok_name = |s: &str| {
                !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
            };
            if !ok_name(&workspace) || !ok_name(&user) {
                bail!("--workspace and --user must be 1 to 64 letters, digits, `_`, `-`, `.` or `@`");
            }
            let store = crate::app::open_store(&cfg).await?;
            let secret = ferry_core::auth::new_token();
            let token = store
                .create_token(ferry_store::NewToken {
                    id: uuid::Uuid::now_v7(),
                    workspace,
                    user,
                    role,
                    hash: ferry_core::auth::token_hash(&secret),
                })
                .await?;
            store.close().await;
            println!(
                "token {} for user `{}` of workspace `{}`, role {}",
                token.id, token.user, token.workspace, token.role
            );
            println!("it is shown once; keep it secret (send it as `Authorization: Bearer …`):");
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command: TokenCommand::Reopen { store, data_dir } } => {
            let cfg = store.load(FlagOverrides { data_dir, ..FlagOverrides::default() })?;
            let store = crate::app::open_store(&cfg).await?;
            let outcome = store.reopen().await;
            store.close().await;
            match outcome? {
                ferry_store::ReopenOutcome::Reopened => println!(
                    "reopened: while no API token exists, a server on this store serves unauthenticated requests \
                     (on loopback, or with --insecure) as user `local` of workspace `default`, with every right, \
                     the operator's included; the first new token closes it again"
                ),
                ferry_store::ReopenOutcome::AlreadyOpen => {
                    println!("nothing to do: the store was not closed (it has had no token since it was last opened)")
                }
                ferry_store::ReopenOutcome::TokensRemain(n) => bail!(
                    "refused: {n} unrevoked API token(s) exist; revoke them first (`ferry token revoke ID`), \
                     the store stays closed"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("not a client command: {other:?}"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let mut req = json!({ "workflow": args.name });
    if let Some(v) = args.workflow_version {
        req["version"] = json!(v);
    }
    if let Some(raw) = &args.input {
        req["input"] = read_input(raw)?;
    }
    if let Some(k) = &args.idempotency_key {
        req["idempotency_key"] = json!(k);
    }
    let accepted = client.call(reqwest::Method::POST, "/v1/runs", Some(&req)).await?;
    if !args.follow {
        print(&accepted);
        return Ok(ExitCode::SUCCESS);
    }
    let id = accepted["id"].as_str().context("the server answered without an id")?.to_string();
    println!("run {id} of {} v{}", args.name, accepted["version"]);
    // One line per node, redrawn in place as the run moves.
    let lines = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: Vec<(String, ProgressBar)> = Vec::new();
    loop {
        let run = client.call(reqwest::Method::GET, &format!("/v1/runs/{id}"), None).await?;
        for node in run["nodes"].as_array().into_iter().flatten() {
            let name = node["id"].as_str().unwrap_or("?").to_string();
            let bar = match bars.iter().find(|(n, _)| *n == name) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = lines.add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(name.clone()));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bars.push((name, bar.clone()));
                    bar
                }
            };
            let state = node["state"].as_str().unwrap_or("?");
            let mut msg = state.to_string();
            if let Some(items) = node["items"].as_u64() {
                let done =
                    node["jobs"].as_array().map_or(0, |j| j.iter().filter(|j| j["state"] == "succeeded").count());
                msg.push_str(&format!("  {done}/{items} elements"));
            }
            if node["attempts"].as_u64().unwrap_or(0) > 1 {
                msg.push_str(&format!("  ({} attempts)", node["attempts"]));
            }
            if let Some(err) = node["error"]["message"].as_str() {
                msg.push_str(&format!("  {err}"));
            }
            bar.set_message(msg);
            if !matches!(state, "pending" | "running") && !bar.is_finished() {
                bar.finish();
            }
        }
        let state = run["state"].as_str().unwrap_or("?").to_string();
        if state != "running" {
            for (_, bar) in &bars {
                bar.finish();
            }
            println!("run {id}: {state}");
            if let Some(err) = run["error"]["message"].as_str() {
                println!("  {err}");
            }
            return Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    let mut spec = json!({ "kind": args.kind });
    if let Some(raw) = &args.input {
        spec["input"] = read_input(raw)?;
    }
    if let Some(q) = args.queue {
        spec["queue"] = json!(q);
    }
    if let Some(p) = args.priority {
        spec["priority"] = json!(p);
    }
    if let Some(m) = args.max_attempts {
        spec["max_attempts"] = json!(m);
    }
    if let Some(t) = args.timeout_ms {
        spec["timeout_ms"] = json!(t);
    }
    if let Some(d) = args.delay_ms {
        spec["delay_ms"] = json!(d);
    }
    if let Some(k) = args.idempotency_key {
        spec["idempotency_key"] = json!(k);
    }
    let accepted = client.call(reqwest::Method::POST, "/v1/jobs", Some(&spec)).await?;
    if !args.wait {
        print(&accepted);
        return Ok(ExitCode::SUCCESS);
    }
    let id = accepted["id"].as_str().context("the server answered without an id")?.to_string();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut pause = Duration::from_millis(20);
    loop {
        let job = client.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None).await?;
        let state = job["state"].as_str().unwrap_or("?").to_string();
        bar.set_message(format!("job {id}: {state}, attempts used {}/{}", job["attempts_used"], job["max_attempts"]));
        if matches!(state.as_str(), "succeeded" | "dead" | "cancelled") {
            bar.finish_and_clear();
            print(&job);
            return Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
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
    fn worker_takes_a_queue_list() {
        let cli = Cli::try_parse_from(["ferry", "worker", "--queue", "a,b", "--database", "postgres://x@y/z"]).unwrap();
        let Command::Worker(w) = cli.command else { panic!("not a worker command") };
        assert_eq!(w.queues, vec!["a", "b"]);
        assert_eq!(w.store.database_url.as_deref(), Some("postgres://x@y/z"));
        assert!(Cli::try_parse_from(["ferry", "worker"]).is_err(), "--queue is required");
    }
}
