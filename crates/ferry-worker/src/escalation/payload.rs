//! What an endpoint receives when a rule fires: Slack-compatible (`{"text", "blocks"}`)
//! or Ferry's generic JSON, with a summary in words that holds no link. Everything in it
//! that a workspace wrote (messages, queue and kind names, breaker keys) is escaped for
//! Slack, so that a job's error message cannot mention `@channel` or add a link.

use super::evaluate::Candidate;
use ferry_core::escalation::{Condition, Format, Rule};
use ferry_core::time::{self, Micros};
use serde_json::{Value, json};

/// The `event_type` of every escalation delivery (`ferry-event-type`) and the JSON
/// payload's `type`.
pub const EVENT_TYPE: &str = "ferry.escalation";

/// The longest message a payload quotes, in characters.
const MAX_MESSAGE: usize = 500;

/// A window as written in a rule (`5m`), in its largest whole unit.
pub fn window(ms: u64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn field<'a>(c: &'a Candidate, name: &str) -> &'a str {
    c.group.get(name).and_then(Value::as_str).unwrap_or("")
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// One sentence saying what happened, plain text.
pub fn summary(rule: &Rule, c: &Candidate) -> String {
    let w = window(rule.window_ms);
    let severity = c.severity.map(|s| format!(", severity up to {s}")).unwrap_or_default();
    let what = match &rule.condition {
        Condition::Failures { .. } => {
            let target = match c.group.get("target").and_then(Value::as_str) {
                Some(t) => format!(", target {t}"),
                None => String::new(),
            };
            format!(
                "{} failures of type {} in {w} on queue {} (workspace {}, kind {}{target}{severity}): {}",
                c.count,
                field(c, "type"),
                field(c, "queue"),
                field(c, "workspace"),
                field(c, "kind"),
                clip(field(c, "message")),
            )
        }
        Condition::Dead { .. } => {
            let jobs = if c.count == 1 { "1 job".to_string() } else { format!("{} jobs", c.count) };
            format!(
                "{jobs} went dead in {w} on queue {} (workspace {}{severity})",
                field(c, "queue"),
                field(c, "workspace")
            )
        }
        Condition::BreakerOpens { .. } => {
            format!("circuit breaker {} opened (trip {})", field(c, "breaker"), c.count)
        }
    };
    format!("Ferry escalation {}: {what}", rule.name)
}

/// Slack's escaping of text it would otherwise read as markup (mentions, links).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The payload of `c`'s firing by the evaluation at `at`, in `format`.
pub fn payload(format: Format, rule: &Rule, c: &Candidate, at_time: Micros) -> Value {
    let summary = summary(rule, c);
    let at = |us| time::to_datetime(us).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match format {
        Format::Json => {
            let mut group = c.group.clone();
            if let Some(Value::String(m)) = group.get_mut("message") {
                *m = clip(m);
            }
            json!({
            "type": EVENT_TYPE,
            "rule": rule.name,
            "when": rule.when,
            "window_ms": rule.window_ms,
            "group": group,
            "count": c.count,
            "severity": c.severity,
            "first_seen": at(c.first_seen),
            "last_seen": at(c.last_seen),
            "sample_job_id": c.sample_job_id,
            "at": at(at_time),
            "summary": summary,
            })
        }
        Format::Slack => {
            let text = slack_escape(&summary);
            let mut context = format!("rule {} · when {} · at {}", rule.name, rule.when, at(at_time));
            context.push_str(&format!(" · first seen {} · last seen {}", at(c.first_seen), at(c.last_seen)));
            if let Some(id) = c.sample_job_id {
                context.push_str(&format!(" · sample job {id}"));
            }
            json!({
                "text": text,
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(&context)}]},
                ],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Severity;
    use ferry_core::escalation::RuleConfig;

    fn rule(when: &str) -> Rule {
        Rule::parse(&RuleConfig { name: "storm".into(), when: when.into(), notify: "ops".into(), window: None })
            .unwrap()
    }

    fn candidate(group: Value) -> Candidate {
        let Value::Object(group) = group else { unreachable!() };
        Candidate {
            rule: 0,
            group,
            count: 20,
            first_seen: 1_700_000_000_000_000,
            last_seen: 1_700_000_060_000_000,
            severity: Some(Severity::High),
            sample_job_id: Some(ferry_core::JobId::from_u128(7)),
        }
    }

    #[test]
    fn windows_read_as_written() {
        assert_eq!([window(300_000), window(2_000), window(86_400_000), window(1_500)], ["5m", "2s", "1d", "1500ms"]);
    }

    #[test]
    fn slack_gets_text_and_blocks_with_markup_escaped() {
        let r = rule("severity >= high and count >= 20 in 5m");
        let c = candidate(json!({"workspace": "acme", "type": "network", "queue": "q", "kind": "http",
            "target": null, "message": "<!channel> <https://evil|click> & more"}));
        let p = payload(Format::Slack, &r, &c, 0);
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("Ferry escalation storm: 20 failures of type network in 5m on queue q"), "{text}");
        assert!(text.contains("&lt;!channel&gt; &lt;https://evil|click&gt; &amp; more"), "{text}");
        assert!(!text.contains('<'), "{text}");
        assert_eq!(p["blocks"][0]["text"]["text"], p["text"]);
        assert_eq!(p["blocks"][1]["type"], "context");
    }

    #[test]
    fn json_carries_the_rule_group_count_and_times() {
        let r = rule("dead on queue x");
        let c = candidate(json!({"workspace": "acme", "queue": "x"}));
        let p = payload(Format::Json, &r, &c, 0);
        assert_eq!(p["type"], EVENT_TYPE);
        assert_eq!((p["rule"].as_str(), p["window_ms"].as_u64()), (Some("storm"), Some(300_000)));
        assert_eq!(p["group"], json!({"workspace": "acme", "queue": "x"}));
        assert_eq!((p["count"].as_u64(), p["severity"].as_str()), (Some(20), Some("high")));
        assert_eq!(p["first_seen"], "2023-11-14T22:13:20.000Z");
        assert_eq!(p["sample_job_id"], ferry_core::JobId::from_u128(7).to_string());
        assert_eq!(
            p["summary"],
            "Ferry escalation storm: 20 jobs went dead in 5m on queue x (workspace acme, severity up to high)"
        );
        let long = candidate(json!({"message": "x".repeat(2000)}));
        let r = rule("count >= 1 in 1m");
        assert!(summary(&r, &long).chars().count() < 700);
    }
}
