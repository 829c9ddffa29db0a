//! Which groups of which rules are over their thresholds, from what the store read: pure,
//! so the rules' arithmetic is tested without a store. Whether a group fires is the
//! store's decision (at most once per window), never this module's.

use ferry_core::Severity;
use ferry_core::escalation::{Condition, Rule};
use ferry_core::time::{self, Micros};
use ferry_store::{BreakerRecord, Occurrence, Signals};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// A group over its rule's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The rule's index in the evaluator's list.
    pub rule: usize,
    /// The group's fields, as the payload shows them: for failures the `GET /v1/errors`
    /// group with its workspace; for dead jobs the workspace and queue; for a breaker its
    /// key.
    pub group: Map<String, Value>,
    /// How many failures or dead jobs in the window; for a breaker, its trips so far.
    pub count: u64,
    pub first_seen: Micros,
    pub last_seen: Micros,
    /// The worst severity seen (none for a breaker).
    pub severity: Option<Severity>,
    /// The newest job of the group (none for a breaker).
    pub sample_job_id: Option<ferry_core::JobId>,
}

impl Candidate {
    /// The group's key in the store: a digest of its fields (sorted, so every node and
    /// every version computes the same), short whatever the message's length.
    pub fn key(&self) -> String {
        let text = serde_json::to_string(&self.group).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Every rule's groups over their thresholds at `signals.now`. `skip_breakers`: breaker
/// keys no rule reports (the escalation endpoints' own: an escalation cannot report the
/// failure of its own channel through it).
pub fn evaluate(rules: &[Rule], signals: &Signals, skip_breakers: &BTreeSet<String>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let since = signals.now.saturating_sub(time::ms(rule.window_ms));
        match &rule.condition {
            Condition::Failures { count, severity, queue, kind, error_type } => {
                let matching = signals.failures.iter().filter(|o| {
                    let (r, e) = (&o.row, &o.row.error);
                    r.at >= since
                        && severity.is_none_or(|min| e.severity.is_some_and(|s| s >= min))
                        && queue.as_ref().is_none_or(|q| *q == r.queue)
                        && kind.as_ref().is_none_or(|k| *k == r.kind)
                        && error_type.is_none_or(|t| t == e.error_type)
                });
                out.extend(failure_groups(i, matching, *count));
            }
            Condition::Dead { queue } => {
                let matching = signals
                    .dead
                    .iter()
                    .filter(|o| o.row.at >= since && queue.as_ref().is_none_or(|q| *q == o.row.queue));
                out.extend(dead_groups(i, matching));
            }
            Condition::BreakerOpens { key } => {
                let matching = signals.opened.iter().filter(|b| {
                    b.changed_at >= since && key.as_ref().is_none_or(|k| *k == b.key) && !skip_breakers.contains(&b.key)
                });
                out.extend(matching.map(|b| breaker(i, b)));
            }
        }
    }
    out
}

/// The failures' groups (`ferry_store::failures::group`, per workspace) of at least
/// `threshold` failures.
fn failure_groups<'a>(rule: usize, rows: impl Iterator<Item = &'a Occurrence>, threshold: u64) -> Vec<Candidate> {
    let mut by_workspace: BTreeMap<&str, Vec<ferry_store::FailureRow>> = BTreeMap::new();
    for o in rows {
        by_workspace.entry(o.workspace.as_str()).or_default().push(o.row.clone());
    }
    let mut out = Vec::new();
    for (workspace, rows) in by_workspace {
        for g in ferry_store::failures::group(rows).into_iter().filter(|g| g.count >= threshold) {
            let group = fields(json!({
                "workspace": workspace, "type": g.error_type, "queue": g.queue, "kind": g.kind,
                "target": g.target, "message": g.message,
            }));
            out.push(Candidate {
                rule,
                group,
                count: g.count,
                first_seen: g.first_seen,
                last_seen: g.last_seen,
                severity: g.severity,
                sample_job_id: Some(g.sample_job_id),
            });
        }
    }
    out
}

/// Dead jobs by (workspace, queue).
fn dead_groups<'a>(rule: usize, rows: impl Iterator<Item = &'a Occurrence>) -> Vec<Candidate> {
    let mut groups: BTreeMap<(&str, &str), Candidate> = BTreeMap::new();
    for o in rows {
        let r = &o.row;
        let c = groups.entry((o.workspace.as_str(), r.queue.as_str())).or_insert_with(|| Candidate {
            rule,
            group: fields(json!({"workspace": o.workspace, "queue": r.queue})),
            count: 0,
            first_seen: r.at,
            last_seen: r.at,
            severity: None,
            sample_job_id: Some(r.job_id),
        });
        c.count += 1;
        c.first_seen = c.first_seen.min(r.at);
        if (r.at, Some(r.job_id)) > (c.last_seen, c.sample_job_id) {
            c.last_seen = r.at;
            c.sample_job_id = Some(r.job_id);
        }
        c.severity = c.severity.max(r.error.severity);
    }
    groups.into_values().collect()
}

fn breaker(rule: usize, b: &BreakerRecord) -> Candidate {
    Candidate {
        rule,
        group: fields(json!({"breaker": b.key})),
        count: b.breaker.trips,
        first_seen: b.changed_at,
        last_seen: b.changed_at,
        severity: None,
        sample_job_id: None,
    }
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::escalation::RuleConfig;
    use ferry_core::{ErrorType, JobError, JobId};
    use ferry_store::FailureRow;

    fn rule(when: &str) -> Rule {
        Rule::parse(&RuleConfig { name: "r".into(), when: when.into(), notify: "ops".into(), window: None }).unwrap()
    }

    fn occ(ws: &str, at: Micros, queue: &str, message: &str, severity: Severity) -> Occurrence {
        Occurrence {
            workspace: ws.into(),
            row: FailureRow {
                job_id: JobId::from_u128(at as u128),
                at,
                queue: queue.into(),
                kind: "fail".into(),
                target: None,
                error: JobError { severity: Some(severity), ..JobError::new(ErrorType::Network, message) },
            },
        }
    }

    const S: Micros = 1_000_000;

    #[test]
    fn a_count_fires_at_its_threshold_per_group_and_workspace_within_its_window() {
        let now = 100 * S;
        let mut failures: Vec<Occurrence> =
            (0..3).map(|i| occ("a", now - i * S, "q", &format!("order {i} failed"), Severity::High)).collect();
        // Another workspace's failures alike are another group.
        failures.push(occ("b", now, "q", "order 7 failed", Severity::High));
        failures.push(occ("b", now, "q", "order 8 failed", Severity::High));
        // Too old, too mild: not counted.
        failures.push(occ("a", now - 11 * S, "q", "order 9 failed", Severity::High));
        failures.push(occ("a", now, "q", "order 9 failed", Severity::Low));
        let signals = Signals { now, failures, ..Signals::default() };
        let none = BTreeSet::new();
        let at = |n: u64| evaluate(&[rule(&format!("severity >= high and count >= {n} in 10s"))], &signals, &none);
        let fired = at(3);
        assert_eq!(fired.len(), 1, "{fired:?}");
        let c = &fired[0];
        assert_eq!((c.count, c.first_seen, c.last_seen), (3, now - 2 * S, now));
        assert_eq!(c.group["workspace"], "a");
        assert_eq!(c.group["message"], "order <n> failed");
        assert_eq!(c.sample_job_id, Some(JobId::from_u128(now as u128)));
        assert!(at(4).is_empty(), "one below the threshold does not fire");
        assert_eq!(at(2).len(), 2, "b's two are a group of their own");
        assert_ne!(at(2)[0].key(), at(2)[1].key());
        let filtered = evaluate(&[rule("count >= 1 in 10s and queue = other")], &signals, &none);
        assert!(filtered.is_empty());
    }

    #[test]
    fn dead_jobs_group_by_workspace_and_queue_and_breakers_by_key() {
        let now = 100 * S;
        let dead = vec![
            occ("a", now, "x", "boom", Severity::High),
            occ("a", now - S, "x", "bang", Severity::Critical),
            occ("a", now, "y", "boom", Severity::High),
        ];
        let mut opened = ferry_store::BreakerRecord {
            key: "https://a:443".into(),
            breaker: Default::default(),
            settings: None,
            changed_at: now - S,
            updated_at: now,
        };
        opened.breaker.trips = 2;
        let own = ferry_store::BreakerRecord { key: "https://hooks:443/x".into(), ..opened.clone() };
        let signals = Signals { now, dead, opened: vec![opened, own], ..Signals::default() };
        let skip = BTreeSet::from(["https://hooks:443/x".to_string()]);
        let fired = evaluate(&[rule("dead on queue x")], &signals, &skip);
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].count, fired[0].severity), (2, Some(Severity::Critical)));
        assert_eq!(evaluate(&[rule("dead")], &signals, &skip).len(), 2);
        let fired = evaluate(&[rule("breaker opens")], &signals, &skip);
        assert_eq!(fired.len(), 1, "the endpoint's own breaker is skipped");
        assert_eq!((fired[0].group["breaker"].as_str(), fired[0].count), (Some("https://a:443"), 2));
        assert!(evaluate(&[rule("breaker opens on https://b:443")], &signals, &skip).is_empty());
    }
}
