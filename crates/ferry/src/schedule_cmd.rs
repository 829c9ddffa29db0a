//! `ferry schedule`: list, create, pause, resume and delete the workspace's schedules
//! through the API. See `ferry_core::schedule` and `docs/schedules.md` for what a
//! schedule does.

use crate::cli::{ClientArgs, read_input};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// The workspace's schedules: state, next fire times, counts.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A new schedule that starts a job (`--job`) or a workflow run (`--workflow`) on a
    /// cron expression (`--cron`) or every interval (`--every-ms`).
    Create(CreateArgs),
    /// No tick fires until resumed.
    Pause {
        /// The schedule's name or id
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fires again from the next tick (ticks that fell while paused are not caught up).
    Resume {
        /// The schedule's name or id
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes the schedule (what it started goes on).
    Delete {
        /// The schedule's name or id
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Unique in the workspace (A-Z a-z 0-9 . _ -)
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first (`*/10 * * * * *`)
    #[arg(long, conflicts_with = "every_ms")]
    pub cron: Option<String>,
    /// A fixed interval in milliseconds (at least 1000)
    #[arg(long)]
    pub every_ms: Option<u64>,
    /// The cron's IANA time zone (default UTC)
    #[arg(long)]
    pub timezone: Option<String>,
    /// The job each tick submits, as `POST /v1/jobs` takes it (JSON, or @file)
    #[arg(long, conflicts_with = "workflow")]
    pub job: Option<String>,
    /// The workflow each tick runs
    #[arg(long)]
    pub workflow: Option<String>,
    /// The workflow's version (default: its latest at each tick)
    #[arg(long, requires = "workflow")]
    pub workflow_version: Option<u32>,
    /// The run's input (JSON, or @file)
    #[arg(long, requires = "workflow")]
    pub input: Option<String>,
    /// A tick whose previous start has not ended
    #[arg(long, value_enum)]
    pub overlap: Option<Overlap>,
    /// Ticks missed while no server ran
    #[arg(long, value_enum)]
    pub catch_up: Option<CatchUp>,
    /// With `--catch-up all`: the most missed ticks started (1 to 100, default 10)
    #[arg(long, requires = "catch_up")]
    pub catch_up_max: Option<u32>,
    /// Created paused
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Overlap {
    Skip,
    Queue,
    Allow,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CatchUp {
    None,
    Latest,
    All,
}

/// The request body of `ferry schedule create`.
fn body(a: &CreateArgs) -> anyhow::Result<Value> {
    let mut b = Map::new();
    b.insert("name".into(), json!(a.name));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b.insert(k.into(), v);
        }
    };
    put("cron", a.cron.as_ref().map(|c| json!(c)));
    put("every_ms", a.every_ms.map(|e| json!(e)));
    put("timezone", a.timezone.as_ref().map(|t| json!(t)));
    put("job", a.job.as_deref().map(read_input).transpose()?);
    if let Some(workflow) = &a.workflow {
        let mut run = json!({"workflow": workflow});
        if let Some(v) = a.workflow_version {
            run["version"] = json!(v);
        }
        if let Some(input) = &a.input {
            run["input"] = read_input(input)?;
        }
        put("run", Some(run));
    }
    put("overlap", a.overlap.map(|o| json!(format!("{o:?}").to_lowercase())));
    put(
        "catch_up",
        a.catch_up.map(|c| {
            let mut v = json!({"policy": format!("{c:?}").to_lowercase()});
            if let Some(max) = a.catch_up_max {
                v["max"] = json!(max);
            }
            v
        }),
    );
    put("paused", a.paused.then_some(json!(true)));
    Ok(Value::Object(b))
}

/// Runs a `ferry schedule` command.
pub async fn run(command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let (client, schedule, method, action) = match command {
        ScheduleCommand::List { client } => {
            let answer = client.client()?.call(Method::GET, "/v1/schedules", None).await?;
            client.print(&answer, list);
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Create(args) => {
            let answer = args.client.client()?.call(Method::POST, "/v1/schedules", Some(&body(&args)?)).await?;
            args.client.print(&answer, |s| line(s) + "\n");
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Pause { schedule, client } => (client, schedule, Method::POST, "/pause"),
        ScheduleCommand::Resume { schedule, client } => (client, schedule, Method::POST, "/resume"),
        ScheduleCommand::Delete { schedule, client } => (client, schedule, Method::DELETE, ""),
    };
    let http = client.client()?;
    let id = match uuid::Uuid::parse_str(&schedule) {
        Ok(id) => id.to_string(),
        Err(_) => {
            let all = http.call(Method::GET, "/v1/schedules", None).await?;
            let found = all["schedules"].as_array().and_then(|s| s.iter().find(|s| s["name"] == schedule.as_str()));
            let Some(id) = found.and_then(|s| s["id"].as_str()) else {
                anyhow::bail!("no schedule named `{schedule}` in the workspace");
            };
            id.to_string()
        }
    };
    let answer = http.call(method, &format!("/v1/schedules/{id}{action}"), None).await?;
    match answer {
        Value::Null => println!("deleted {schedule}"),
        _ => client.print(&answer, |s| line(s) + "\n"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One schedule on one line.
fn line(s: &Value) -> String {
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
    let when = match (s["spec"]["cron"].as_str(), s["spec"]["every_ms"].as_u64()) {
        (Some(cron), _) => format!("cron `{cron}` {}", s["spec"]["timezone"].as_str().unwrap_or("UTC")),
        (None, Some(ms)) => format!("every {ms} ms"),
        _ => "-".into(),
    };
    let state = if s["paused"] == true { "paused".to_string() } else { format!("next {}", text("next_fire_at")) };
    let mut out = format!(
        "{}  {}  {when}  {state}  started {} skipped {} refused {} missed {}",
        text("name"),
        text("id"),
        s["started"],
        s["skipped"],
        s["refused"],
        s["missed"]
    );
    if let Some(e) = s["last_error"].as_str() {
        out.push_str(&format!("  last error: {e}"));
    }
    out
}

fn list(answer: &Value) -> String {
    let items = answer["schedules"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return "no schedules (`ferry schedule create NAME --every-ms 60000 --job '{\"kind\": \"noop\"}'`)\n".into();
    }
    items.iter().map(|s| line(s) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ScheduleCommand,
    }

    #[test]
    fn create_flags_become_the_request_and_a_schedule_one_line() {
        let cli = Cli::parse_from([
            "x",
            "create",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--timezone",
            "Europe/Paris",
            "--job",
            r#"{"kind": "noop"}"#,
            "--overlap",
            "queue",
            "--catch-up",
            "all",
            "--catch-up-max",
            "3",
        ]);
        let ScheduleCommand::Create(args) = cli.command else { panic!("create") };
        assert_eq!(
            body(&args).unwrap(),
            json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris", "job": {"kind": "noop"},
                   "overlap": "queue", "catch_up": {"policy": "all", "max": 3}})
        );
        let s = json!({"name": "n", "id": "i", "spec": {"every_ms": 1000}, "paused": false,
                       "next_fire_at": "2026-12-04T10:00:00Z", "started": 2, "skipped": 1, "refused": 0, "missed": 0});
        assert_eq!(line(&s), "n  i  every 1000 ms  next 2026-12-04T10:00:00Z  started 2 skipped 1 refused 0 missed 0");
        assert!(list(&json!({"schedules": []})).starts_with("no schedules"));
    }
}
