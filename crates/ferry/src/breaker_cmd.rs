//! `ferry breaker`: list the circuit breakers, and reset, open or close one, through the
//! API (operator). See `ferry_core::breaker` for what a breaker does.

use crate::cli::ClientArgs;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Every breaker: its state, trips and, while open, when probes may begin.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Closed and as new: the jobs it held back go at once (also what enables a target
    /// that said it is gone, a webhook endpoint's 410).
    Reset {
        /// The breaker's key (`https://api.example.com:443`, or a job's own `breaker`)
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Open now, for the next cool-down: its jobs wait without spending attempts.
    Open {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Closed now, as a reset: the jobs it held back go at once.
    Close {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `ferry breaker` command.
pub async fn run(command: BreakerCommand) -> anyhow::Result<ExitCode> {
    let (client, key, body) = match command {
        BreakerCommand::List { client } => {
            let answer = client.client()?.call(Method::GET, "/v1/breakers", None).await?;
            client.print(&answer, list);
            return Ok(ExitCode::SUCCESS);
        }
        BreakerCommand::Reset { key, client } => (client, key, json!({"reset": true})),
        BreakerCommand::Open { key, client } => (client, key, json!({"state": "open"})),
        BreakerCommand::Close { key, client } => (client, key, json!({"state": "closed"})),
    };
    let answer = client.client()?.call(Method::PUT, &path(&key), Some(&body)).await?;
    client.print(&answer, |b| line(b) + "\n");
    Ok(ExitCode::SUCCESS)
}

/// A key as one path segment (`https://host:443` → `https:%2F%2Fhost:443`).
fn path(key: &str) -> String {
    let mut url = reqwest::Url::parse("http://ferry/v1/breakers").expect("a valid base");
    url.path_segments_mut().expect("a base with a path").push(key);
    url.path().to_string()
}

/// One breaker on one line.
fn line(b: &Value) -> String {
    let text = |k: &str| b[k].as_str().unwrap_or("-").to_string();
    let mut s = format!("{}  {}  trips {}", text("key"), text("state"), b["trips"]);
    if let Some(at) = b["retry_at"].as_str() {
        s.push_str(&format!("  probes from {at}"));
    }
    if b["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
        s.push_str(&format!("  {} failures in a row", b["consecutive_failures"]));
    }
    s
}

fn list(answer: &Value) -> String {
    let items = answer["breakers"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return "no breakers (a target gets one when an attempt through it fails)\n".to_string();
    }
    items.iter().map(|b| line(b) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_path_segment_and_a_breaker_one_line() {
        assert_eq!(path("https://api.x.io:443"), "/v1/breakers/https:%2F%2Fapi.x.io:443");
        assert_eq!(path("a b?"), "/v1/breakers/a%20b%3F");
        assert_eq!(path("partner-api"), "/v1/breakers/partner-api");
        let b = json!({"key": "k", "state": "open", "trips": 2, "retry_at": "2026-12-03T10:00:00Z",
                       "consecutive_failures": 0});
        assert_eq!(line(&b), "k  open  trips 2  probes from 2026-12-03T10:00:00Z");
        assert!(list(&json!({"breakers": []})).starts_with("no breakers"));
    }
}
