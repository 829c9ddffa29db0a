//! `ferry bench agent`: what agent runs cost the engine. On a fresh temporary store, with
//! the stand-in LLM server (`ferry::stand_in`) on loopback:
//! - **overhead per step**: one agent that calls a `noop` tool ten times, then answers
//!   (eleven LLM steps, ten tool jobs), the stand-in answering at once; the run time (the
//!   API's `finished_at - created_at`) divided by the steps is what one step costs the
//!   engine: an `llm` job, a tool job and the advances between them. `--samples` rounds
//!   after one warm-up, median and range.
//! - **runs waiting on I/O**: `--runs` runs (default 50) started together, each of three
//!   LLM calls that the stand-in answers after `--delay-ms` (default 1000) with a `noop`
//!   tool call between them. Their wall time, start to the last end, against the longest
//!   single run: close to 1 when waiting on the provider holds no worker slot.

use super::runs::{self, call};
use super::stats::{median, range};
use super::target::{Target, TargetArgs};
use crate::app;
use crate::stand_in::StandInLlm;
use clap::Args;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// LLM steps of the overhead run: ten tool calls, then the answer.
const STEPS: usize = 11;

/// `ferry bench agent`'s flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Rounds of the overhead run, after one warm-up (3 to 50)
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Agent runs started together in the I/O run
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// How long the stand-in takes to answer each call of the I/O run
    #[arg(long, default_value_t = 1000)]
    pub delay_ms: u64,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

async fn start(http: &reqwest::Client, base: &str, workflow: &str, question: &str) -> anyhow::Result<String> {
    runs::start(http, base, json!({"workflow": workflow, "input": {"question": question}})).await
}

/// Waits for the run's end; its run time as the server recorded it.
async fn finished(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<Duration> {
    runs::run_time(http, base, id, Duration::from_secs(300)).await
}

/// A workflow of one agent node on the stand-in, with a `noop` tool.
fn workflow(name: &str, llm: &StandInLlm) -> Value {
    json!({"name": name, "agent_limits": {"max_steps": 50}, "agents": {"a": {
        "model": "stand-in", "base_url": llm.base_url(), "instructions": format!("bench {name}"),
        "tools": [{"name": "work", "kind": "noop"}]}},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "{{ input.question }}"}]})
}

/// Measures and prints.
pub async fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.target)?;
    let result = measure(args, &target).await;
    target.remove().await;
    result
}

async fn measure(args: &AgentArgs, target: &Target) -> anyhow::Result<()> {
    let work = json!({"tool_calls": [{"name": "work", "arguments": {}}], "usage": {"prompt_tokens": 10, "completion_tokens": 1}});
    let slow_work = json!({"tool_calls": [{"name": "work", "arguments": {}}], "delay_ms": args.delay_ms});
    let mut turns: Vec<Value> = vec![work; STEPS - 1];
    turns.push(json!({"content": "done"}));
    let llm = StandInLlm::start(json!({"conversations": [
        {"match": "bench overhead", "turns": turns},
        {"match": "bench waiting", "turns": [slow_work.clone(), slow_work, {"content": "done", "delay_ms": args.delay_ms}]},
    ]}));
    let server = app::start(&target.cfg).await?;
    let base = server.url();
    let http = reqwest::Client::new();
    for name in ["overhead", "waiting"] {
        call(&http, reqwest::Method::POST, format!("{base}/v1/workflows"), Some(workflow(name, &llm))).await?;
    }
    // Room for every run at once (the defaults admit 10 per workspace).
    let limits = json!({"per_workspace": {"runs": null}, "per_user": {"runs": null}});
    call(&http, reqwest::Method::PUT, format!("{base}/v1/limits"), Some(limits)).await?;

    let rounds = args.samples.clamp(3, 50);
    let id = start(&http, &base, "overhead", "warm-up").await?;
    finished(&http, &base, &id).await?;
    let mut per_step = Vec::new();
    for i in 0..rounds {
        let id = start(&http, &base, "overhead", &format!("round {i}")).await?;
        per_step.push(finished(&http, &base, &id).await?.as_secs_f64() * 1e3 / STEPS as f64);
    }

    let began = Instant::now();
    let mut ids = Vec::new();
    for i in 0..args.runs {
        ids.push(start(&http, &base, "waiting", &format!("run {i}")).await?);
    }
    let mut longest = Duration::ZERO;
    for id in &ids {
        longest = longest.max(finished(&http, &base, id).await?);
    }
    let wall = began.elapsed();
    server.stop().await?;
    llm.stop().await;

    let step = median(per_step.clone());
    let report = json!({
        "backend": target.backend(),
        "rounds": rounds,
        "steps_per_run": STEPS,
        "overhead_ms_per_step_median": step,
        "overhead_ms_per_step_range": range(&per_step),
        "waiting_runs": args.runs,
        "llm_delay_ms": args.delay_ms,
        "waiting_wall_ms": wall.as_secs_f64() * 1e3,
        "waiting_longest_run_ms": longest.as_secs_f64() * 1e3,
        "waiting_wall_over_longest": wall.as_secs_f64() / longest.as_secs_f64().max(1e-9),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("agent runs ({} rounds, medians; the stand-in LLM answers at once)", rounds);
        println!("  overhead per step:  {step:6.2} ms (an llm job, a noop tool job and their advances)");
        println!("    range {:?} ms", range(&per_step));
        println!(
            "  {} runs of 3 calls waiting {} ms each: {:.0} ms wall, longest run {:.0} ms ({:.2}×)",
            args.runs,
            args.delay_ms,
            wall.as_secs_f64() * 1e3,
            longest.as_secs_f64() * 1e3,
            wall.as_secs_f64() / longest.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
