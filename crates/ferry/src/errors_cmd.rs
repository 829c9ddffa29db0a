//! `ferry errors`: the workspace's failures of a time window, grouped (`GET /v1/errors`),
//! one line per group: count, severity, type, queue/kind, target, message, last seen.

use crate::cli::ClientArgs;
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ErrorsArgs {
    /// The window's start: RFC 3339 (`2026-05-01T10:00:00Z`) or a span back from now
    /// (`30m`, `6h`, `2d`); default an hour ago
    #[arg(long)]
    pub since: Option<String>,
    /// Only failures of this queue's jobs
    #[arg(long)]
    pub queue: Option<String>,
    /// Only failures of this kind's jobs
    #[arg(long)]
    pub kind: Option<String>,
    /// Only failures of jobs with this breaker key (`https://api.example.com:443`)
    #[arg(long)]
    pub target: Option<String>,
    /// Most groups shown (1 to 1000; default 50)
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `ferry errors`.
pub async fn run(args: ErrorsArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|s| since(s, chrono::Utc::now()));
    let path = path(&[
        ("since", since),
        ("queue", args.queue.clone()),
        ("kind", args.kind.clone()),
        ("target", args.target.clone()),
        ("limit", args.limit.map(|n| n.to_string())),
    ]);
    let answer = args.client.client()?.call(Method::GET, &path, None).await?;
    args.client.print(&answer, report);
    Ok(ExitCode::SUCCESS)
}

/// A span back from `now` (`90s`, `30m`, `6h`, `2d`) as RFC 3339; anything else as given,
/// for the server to read (or refuse, naming `since`).
fn since(value: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let split = value.len().saturating_sub(1);
    let (n, unit) = value.split_at(if value.is_char_boundary(split) { split } else { 0 });
    let secs = match (n.parse::<i64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        (Ok(n), "d") => n * 86_400,
        _ => return value.to_string(),
    };
    (now - chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `/v1/errors` with the parameters given, percent-encoded.
fn path(params: &[(&str, Option<String>)]) -> String {
    let mut url = reqwest::Url::parse("http://ferry/v1/errors").expect("a valid base");
    for (k, v) in params {
        if let Some(v) = v {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// One group on one line.
fn line(g: &Value) -> String {
    let text = |k: &str| g[k].as_str().unwrap_or("-").to_string();
    format!(
        "{:>6}  {:<8}  {}  {}/{}  {}  {}  last {}",
        g["count"].as_u64().unwrap_or(0),
        text("severity"),
        text("type"),
        text("queue"),
        text("kind"),
        text("target"),
        text("message"),
        text("last_seen"),
    )
}

fn report(answer: &Value) -> String {
    let groups = answer["groups"].as_array().map(Vec::as_slice).unwrap_or_default();
    let since = answer["since"].as_str().unwrap_or("-");
    if groups.is_empty() {
        return format!("no failures since {since}\n");
    }
    let mut out: String = groups.iter().map(|g| line(g) + "\n").collect();
    let total = answer["total_groups"].as_u64().unwrap_or(groups.len() as u64);
    if total > groups.len() as u64 {
        out.push_str(&format!("({} of {total} groups; --limit shows more)\n", groups.len()));
    }
    if answer["truncated"].as_bool() == Some(true) {
        out.push_str("(only the newest failures of the window were read: narrow it with --since or a filter)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn since_takes_spans_and_passes_the_rest() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z").unwrap().to_utc();
        assert_eq!(since("30m", now), "2026-05-01T11:30:00Z");
        assert_eq!(since("2d", now), "2026-04-29T12:00:00Z");
        assert_eq!(since("2026-05-01T10:00:00Z", now), "2026-05-01T10:00:00Z");
        assert_eq!(since("soon", now), "soon");
        assert_eq!(since("", now), "");
    }

    #[test]
    fn parameters_are_encoded_and_a_group_is_one_line() {
        assert_eq!(path(&[("queue", None)]), "/v1/errors");
        assert_eq!(
            path(&[("target", Some("https://x.io:443".into())), ("kind", Some("http".into()))]),
            "/v1/errors?target=https%3A%2F%2Fx.io%3A443&kind=http"
        );
        let g = json!({"count": 3, "severity": "high", "type": "network", "queue": "default", "kind": "http",
                       "target": null, "message": "refused <n>", "last_seen": "2026-05-01T10:00:00Z"});
        assert_eq!(line(&g), "     3  high      network  default/http  -  refused <n>  last 2026-05-01T10:00:00Z");
        assert!(report(&json!({"since": "x", "groups": []})).starts_with("no failures since x"));
        let r = report(&json!({"since": "x", "groups": [g], "total_groups": 2, "truncated": true}));
        assert!(r.contains("(1 of 2 groups") && r.contains("only the newest"));
    }
}
