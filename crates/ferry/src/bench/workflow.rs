//! `ferry bench workflow`: the engine's overhead per workflow step. Runs, on a fresh
//! temporary store, a chain of 20 `noop` nodes and a 1,000-wide `for_each` of `noop`s,
//! each `--samples` times (3 to 50), and reports the run time from the start request to
//! the run's end as the API reports it (`finished_at - created_at`). `noop` does no work,
//! so the run time is all overhead: divided by the steps for the chain, by the elements
//! for the fan-out.

use super::runs::{self, call};
use super::stats::{median, range};
use super::target::{Target, TargetArgs};
use crate::app;
use clap::Args;
use serde_json::{Value, json};
use std::time::Duration;

const CHAIN: usize = 20;
const WIDTH: usize = 1000;

/// `ferry bench workflow`'s flags.
#[derive(Debug, Clone, Args)]
pub struct WorkflowArgs {
    /// Rounds of each workflow, after one warm-up (3 to 50)
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

/// Starts a run and waits for its end; returns the run time the server recorded.
async fn time_run(http: &reqwest::Client, base: &str, workflow: &str, input: Value) -> anyhow::Result<Duration> {
    let id = runs::start(http, base, json!({"workflow": workflow, "input": input})).await?;
    runs::run_time(http, base, &id, Duration::from_secs(120)).await
}

/// Measures and prints.
pub async fn run(args: &WorkflowArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.target)?;
    let result = measure(args, &target).await;
    target.remove().await;
    result
}

async fn measure(args: &WorkflowArgs, target: &Target) -> anyhow::Result<()> {
    let server = app::start(&target.cfg).await?;
    let base = server.url();
    let http = reqwest::Client::new();
    let chain: Vec<Value> = (0..CHAIN)
        .map(|i| {
            let deps = if i == 0 { json!([]) } else { json!([format!("s{}", i - 1)]) };
            json!({"id": format!("s{i}"), "kind": "noop", "depends_on": deps, "input": {"step": i}})
        })
        .collect();
    call(&http, reqwest::Method::POST, format!("{base}/v1/workflows"), Some(json!({"name": "chain", "nodes": chain})))
        .await?;
    let fan = json!({"name": "fan", "nodes": [
        {"id": "each", "kind": "noop", "for_each": "{{ input.items }}", "concurrency": 1000, "input": {"n": "{{ item }}"}},
        {"id": "join", "kind": "noop", "depends_on": ["each"], "input": {"count": "{{ nodes.each.output }}"}}
    ]});
    call(&http, reqwest::Method::POST, format!("{base}/v1/workflows"), Some(fan)).await?;
    let items: Vec<usize> = (0..WIDTH).collect();
    let rounds = args.samples.clamp(3, 50);
    // One warm-up of each.
    time_run(&http, &base, "chain", json!(null)).await?;
    time_run(&http, &base, "fan", json!({"items": items})).await?;
    let (mut chain_ms, mut fan_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        chain_ms.push(time_run(&http, &base, "chain", json!(null)).await?.as_secs_f64() * 1e3);
        fan_ms.push(time_run(&http, &base, "fan", json!({"items": items})).await?.as_secs_f64() * 1e3);
    }
    server.stop().await?;
    let (c, f) = (median(chain_ms.clone()), median(fan_ms.clone()));
    let report = json!({
        "backend": target.backend(),
        "rounds": rounds,
        "chain_steps": CHAIN,
        "chain_run_ms_median": c,
        "chain_overhead_ms_per_step": c / CHAIN as f64,
        "chain_run_ms_range": range(&chain_ms),
        "fanout_width": WIDTH,
        "fanout_run_ms_median": f,
        "fanout_overhead_ms_per_element": f / WIDTH as f64,
        "fanout_run_ms_range": range(&fan_ms),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("workflow overhead ({} rounds, medians; noop nodes do no work)", rounds);
        println!("  {CHAIN}-step chain:        {c:8.1} ms per run, {:.2} ms per step (target < 2)", c / CHAIN as f64);
        println!(
            "  {WIDTH}-wide for_each + join: {f:8.1} ms per run, {:.3} ms per element (target: run < 1000 ms)",
            f / WIDTH as f64
        );
        println!("  ranges: chain {:?} ms, fan-out {:?} ms", range(&chain_ms), range(&fan_ms));
    }
    Ok(())
}
