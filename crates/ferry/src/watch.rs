//! Commands that hand work to the server and can watch it to the end: `ferry submit`
//! (`--wait`: until the job succeeded, died or was cancelled) and `ferry run` (`--follow`:
//! one line per node, redrawn in place, until the run ended). Their exit status is 0 only
//! if the work succeeded, so a script can chain on them.
//!
//! `--wait` (`ferry submit`, `ferry run`) asks the server to hold each request until the
//! work ended (`?wait=`, woken by the end: no polling). `--follow` reads the run and its
//! events (whose agent steps, tool calls and token budgets it prints a line each) a few
//! times a second.

use crate::cli::{RunArgs, SubmitArgs, print, read_input};
use crate::view;
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// `ferry run`: starts a run; with `--follow`, shows each node until the run ends.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
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
    if args.wait {
        // The server holds each request until the run ends (or `WAIT_STEP` passes).
        let mut run = client.call(Method::POST, &format!("/v1/runs?wait={WAIT_STEP}"), Some(&req)).await?;
        let id = run["id"].as_str().context("the server answered without an id")?.to_string();
        while matches!(run["state"].as_str(), Some("queued" | "running")) {
            run = client.call(Method::GET, &format!("/v1/runs/{id}?wait={WAIT_STEP}"), None).await?;
        }
        args.client.print(&run, view::run);
        return Ok(if run["state"] == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let accepted = client.call(Method::POST, "/v1/runs", Some(&req)).await?;
    if !args.follow {
        args.client.print(&accepted, |a| view::accepted("run", a));
        return Ok(ExitCode::SUCCESS);
    }
    let id = accepted["id"].as_str().context("the server answered without an id")?.to_string();
    println!("run {id} of {} v{}", args.name, accepted["version"]);
    // One line per node, redrawn in place as the run moves.
    let lines = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: Vec<(String, ProgressBar)> = Vec::new();
    let mut after = 0;
    loop {
        // Agents' steps, tool calls and budgets, a line each, above the nodes' lines.
        let events = client.call(Method::GET, &format!("/v1/runs/{id}/events?after={after}"), None).await?;
        for e in events["events"].as_array().into_iter().flatten() {
            after = e["id"].as_i64().unwrap_or(after).max(after);
            if let Some(line) = crate::agent_view::line(e)
                && !args.client.json
            {
                // Above the redrawn lines on a terminal; as plain lines when piped, where
                // the redrawn lines are hidden.
                if lines.is_hidden() {
                    println!("{line}");
                } else {
                    lines.println(line).ok();
                }
            }
        }
        let run = client.call(Method::GET, &format!("/v1/runs/{id}"), None).await?;
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
        // A queued run waits for a concurrency slot: it has not ended.
        if !matches!(state.as_str(), "queued" | "running") {
            for (_, bar) in &bars {
                bar.finish();
            }
            if args.client.json {
                print(&run);
            } else {
                println!("run {id}: {state}");
                if let Some(err) = run["error"]["message"].as_str() {
                    println!("  {err}");
                }
            }
            return Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ferry submit`: submits a job; with `--wait`, shows progress until it ends, then the job.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
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
    if let Some(b) = args.breaker {
        spec["breaker"] = json!(b);
    }
    if let Some(k) = args.ordering_key {
        spec["ordering_key"] = json!(k);
    }
    if !args.wait {
        let accepted = client.call(Method::POST, "/v1/jobs", Some(&spec)).await?;
        args.client.print(&accepted, |a| view::accepted("job", a));
        return Ok(ExitCode::SUCCESS);
    }
    // The server holds each request until the job ends (or `WAIT_STEP` passes): the
    // answer to a job that ended is the job itself.
    let mut job = client.call(Method::POST, &format!("/v1/jobs?wait={WAIT_STEP}"), Some(&spec)).await?;
    let id = job["id"].as_str().context("the server answered without an id")?.to_string();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    loop {
        let state = job["state"].as_str().unwrap_or("?").to_string();
        if matches!(state.as_str(), "succeeded" | "dead" | "cancelled") {
            bar.finish_and_clear();
            args.client.print(&job, view::job);
            return Ok(if state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        bar.set_message(format!("job {id}: {state}"));
        job = client.call(Method::GET, &format!("/v1/jobs/{id}?wait={WAIT_STEP}"), None).await?;
        if let Some(used) = job["attempts_used"].as_u64() {
            bar.set_message(format!("job {id}: {}, attempts used {used}/{}", job["state"], job["max_attempts"]));
        }
    }
}

/// How long one request of `--wait` waits for the end: each answer refreshes the line.
const WAIT_STEP: &str = "5s";
