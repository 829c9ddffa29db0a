//! Escalation: the evaluator of the operator's rules (`ferry_core::escalation`), a
//! background task of every `ferry server` node.
//!
//! Every `tick_ms` (jittered by [`crate::engine::spread`], so nodes never tick together)
//! it reads, in one call and by the store's clock, what its rules need
//! ([`Store::escalation_signals`]: every workspace's failures, dead jobs and opened
//! breakers within the longest window, except the escalation workspace's), finds the
//! groups over their thresholds ([`evaluate`]), and asks the store to fire each
//! ([`Store::escalate`]). The store fires a group at most once per window, whatever the
//! number of nodes or evaluations, and stores the `webhook` job to the rule's endpoint in
//! the same transaction; this task only proposes. So a node that dies mid-tick loses
//! nothing (the next tick, here or elsewhere, proposes again) and two nodes never fire
//! twice.
//!
//! Where it runs: on `ferry server` nodes (with or without embedded workers), not in
//! `ferry worker` processes. The rules are the server's configuration, every deployment
//! has at least one server node, and worker processes are scaled for throughput: they
//! would multiply the reads without adding anything.
//!
//! The jobs belong to the escalation workspace (`escalation.workspace`, by default
//! `escalation`), user `escalation`, queue `webhook`: an operator sees them with a token of
//! that workspace (`GET /v1/jobs?kind=webhook`); tenants never see the endpoints' URLs.
//! Rules never read that workspace, and a `breaker opens` rule skips the endpoints' own
//! breakers, so a failing escalation never escalates about itself.

mod evaluate;
mod payload;

pub use evaluate::{Candidate, evaluate};
pub use payload::{EVENT_TYPE, payload, summary, window};

use crate::Registry;
use ferry_core::escalation::{Condition, EndpointConfig, EscalationConfig, MAX_COUNT, Rule};
use ferry_core::{JobSpec, Limits, time};
use ferry_store::{Firing, SignalRead, Store, StoreError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The user escalation jobs are submitted as.
pub const USER: &str = "escalation";

/// The rules ready to run: parsed, their endpoints checked as `webhook` inputs.
#[derive(Clone)]
pub struct Plan {
    rules: Vec<Rule>,
    endpoints: BTreeMap<String, EndpointConfig>,
    workspace: String,
    tick: Duration,
    limits: Limits,
    /// The endpoints' own breakers, which no rule reports.
    own_breakers: BTreeSet<String>,
}

impl Plan {
    /// Checks `cfg` against the kinds of `registry` (the `webhook` kind must take each
    /// endpoint's delivery: its URL and secret) and the job limits. `None` when there are
    /// no rules. An error names what is wrong.
    pub fn new(cfg: &EscalationConfig, registry: &Registry, limits: Limits) -> Result<Option<Plan>, String> {
        let rules = cfg.rules(|_| true)?;
        if rules.is_empty() {
            return Ok(None);
        }
        let webhook = registry.get("webhook").ok_or("escalation rules need the `webhook` kind")?;
        let mut own_breakers = BTreeSet::new();
        for (name, e) in &cfg.endpoints {
            let input = input(e, json!({"text": "check"}));
            webhook.validate(&input).map_err(|err| format!("escalation.endpoints.{name}: {err}"))?;
            own_breakers.extend(webhook.breaker_key(&input));
        }
        Ok(Some(Plan {
            rules,
            endpoints: cfg.endpoints.clone(),
            workspace: cfg.workspace.clone(),
            tick: Duration::from_millis(cfg.tick_ms),
            limits,
            own_breakers,
        }))
    }

    /// What one evaluation reads: as far back as the longest window, only what the rules
    /// need.
    fn read(&self) -> SignalRead {
        let has = |f: fn(&Condition) -> bool| self.rules.iter().any(|r| f(&r.condition));
        SignalRead {
            look_back_ms: self.rules.iter().map(|r| r.window_ms).max().unwrap_or(0),
            exclude_workspace: self.workspace.clone(),
            cap: MAX_COUNT as usize,
            failures: has(|c| matches!(c, Condition::Failures { .. })),
            dead: has(|c| matches!(c, Condition::Dead { .. })),
            breakers: has(|c| matches!(c, Condition::BreakerOpens { .. })),
        }
    }

    /// The `webhook` job that tells `c`'s rule's endpoint.
    fn job(&self, rule: &Rule, c: &Candidate, at: time::Micros) -> Result<ferry_core::NewJob, String> {
        let endpoint = &self.endpoints[&rule.notify];
        let spec = JobSpec {
            kind: "webhook".into(),
            input: Some(input(endpoint, payload(endpoint.format, rule, c, at))),
            queue: Some(crate::kinds::Webhook::QUEUE.into()),
            labels: Some(BTreeMap::from([("escalation".to_string(), rule.name.clone())])),
            ..JobSpec::default()
        };
        spec.validate(&self.workspace, USER, time::now_micros(), &self.limits).map_err(|e| e.to_string())
    }
}

/// A `webhook` input to `e` carrying `payload`.
fn input(e: &EndpointConfig, payload: Value) -> Value {
    let mut input = json!({"url": e.url, "payload": payload, "event_type": EVENT_TYPE});
    if let Some(secret) = &e.secret {
        input["secret"] = json!(secret);
    }
    input
}

/// One evaluation: read, find the groups over their thresholds, propose each. Returns
/// how many fired here.
pub async fn tick(store: &dyn Store, plan: &Plan) -> Result<usize, StoreError> {
    let signals = store.escalation_signals(plan.read()).await?;
    let mut fired = 0;
    for c in evaluate(&plan.rules, &signals, &plan.own_breakers) {
        let rule = &plan.rules[c.rule];
        let job = match plan.job(rule, &c, signals.now) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(rule = %rule.name, error = %e, "cannot make the escalation's webhook job");
                continue;
            }
        };
        let firing =
            Firing { rule: rule.name.clone(), group: c.key(), window_ms: rule.window_ms, at: signals.now, job };
        if let Some(f) = store.escalate(firing).await? {
            fired += 1;
            metrics::counter!("ferry_escalations_total", "rule" => rule.name.clone()).increment(1);
            tracing::info!(
                rule = %rule.name, group = %c.key(), job = %f.job, count = c.count, endpoint = %rule.notify,
                "escalation fired: {}", summary(rule, &c)
            );
        }
    }
    Ok(fired)
}

/// The evaluator running in this process.
pub struct Escalation {
    ticks: watch::Receiver<u64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Escalation {
    /// Starts evaluating `plan` every `tick_ms` (jittered) until [`Escalation::stop`].
    pub fn start(store: Arc<dyn Store>, plan: Plan) -> Escalation {
        let (tx, ticks) = watch::channel(0);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = tick(store.as_ref(), &plan).await {
                    tracing::warn!(error = %e, "escalation evaluation failed; will retry");
                }
                tx.send_modify(|n| *n += 1);
                tokio::select! {
                    _ = tokio::time::sleep(crate::engine::spread(plan.tick)) => {}
                    _ = stopped.cancelled() => return,
                }
            }
        });
        Escalation { ticks, stop, task }
    }

    /// The evaluations finished so far, as they finish: what tests wait on.
    pub fn ticks(&self) -> watch::Receiver<u64> {
        self.ticks.clone()
    }

    /// Stops evaluating (an evaluation under way finishes first).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
