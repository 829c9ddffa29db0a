//! What the benchmarks of workflow runs share: calls to the server under test, and a run's
//! time as the server recorded it.

use anyhow::{Context, bail};
use serde_json::Value;
use std::time::{Duration, Instant};

/// One API call; a status that is not a success is an error with the answer.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() {
        bail!("{status}: {v}");
    }
    Ok(v)
}

/// Starts a run (`body` is `POST /v1/runs`'s); its id.
pub async fn start(http: &reqwest::Client, base: &str, body: Value) -> anyhow::Result<String> {
    let started = call(http, reqwest::Method::POST, format!("{base}/v1/runs"), Some(body)).await?;
    Ok(started["id"].as_str().context("no run id")?.to_string())
}

/// Waits for the run's end (at most `within`); its run time as the server recorded it
/// (`finished_at - created_at`). A run that did not succeed is an error.
pub async fn run_time(http: &reqwest::Client, base: &str, id: &str, within: Duration) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + within;
    loop {
        let run = call(http, reqwest::Method::GET, format!("{base}/v1/runs/{id}"), None).await?;
        if !matches!(run["state"].as_str(), Some("running" | "queued")) {
            if run["state"] != "succeeded" {
                bail!("run {id} ended {}: {}", run["state"], run["error"]);
            }
            let at = |k: &str| run[k].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            let (Some(a), Some(b)) = (at("created_at"), at("finished_at")) else { bail!("run {id} has no times") };
            return Ok((b - a).to_std().unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("run {id} did not end within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
