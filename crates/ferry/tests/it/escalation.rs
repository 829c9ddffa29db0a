//! Promise: an escalation rule fires a `webhook` job to its endpoint exactly once per
//! window per group: a failure count at its threshold (not one below), again only a window
//! later; a breaker that opens; a job gone dead on the rule's queue (not another's); as
//! many nodes as evaluate it. The delivery is Slack-compatible or JSON, signed when the
//! endpoint names a secret, and an operator sees the job in the escalation workspace.
//!
//! Nothing here sleeps: a test waits for deliveries at the receiver (the webhook tests'
//! own), for jobs to change, or for evaluations to finish (the evaluator's tick count).

use crate::harness::{Backend, TestServer, both, poll};
use crate::webhooks::{Receiver, SECRET, with_secrets};
use ferry::config::{Config, QueueSettings};
use ferry_core::escalation::{EndpointConfig, Format, RuleConfig};
use ferry_store::{JobFilter, JobRecord};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    a_count_fires_once_per_window_and_again_a_window_later,
    one_below_the_threshold_does_not_fire_and_the_threshold_does,
    a_breaker_that_opens_fires_once_per_window,
    a_dead_job_on_the_rules_queue_fires_and_on_another_does_not,
    slack_deliveries_are_signed_and_the_operator_sees_the_jobs,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fire_each_group_once_on_postgres() {
    if crate::harness::postgres_available().await {
        two_nodes_fire_each_group_once(Backend::Postgres).await;
    }
}

/// A configuration with the endpoint `ops` (at the receiver's `/ok`, in `format`, signed
/// with `partner` when `signed`), one rule `name` on it, and evaluations every 50 ms.
fn rule(
    rx: &Receiver,
    format: Format,
    signed: bool,
    name: &str,
    when: &str,
    window: Option<&str>,
) -> impl FnOnce(&mut Config) {
    let endpoint = EndpointConfig { url: rx.url("/ok"), format, secret: signed.then(|| "partner".to_string()) };
    let rule =
        RuleConfig { name: name.into(), when: when.into(), notify: "ops".into(), window: window.map(Into::into) };
    move |cfg: &mut Config| {
        with_secrets(cfg);
        cfg.escalation.tick_ms = 50;
        cfg.escalation.endpoints.insert("ops".into(), endpoint);
        cfg.escalation.rules.push(rule);
        for q in ["x", "y"] {
            cfg.queues.insert(q.into(), QueueSettings::default());
        }
    }
}

/// A job that fails once and is dead: a `high` failure of type `network`.
fn failing(queue: &str, message: &str) -> Value {
    json!({"kind": "fail", "queue": queue, "max_attempts": 1,
           "input": {"type": "network", "retryable": true, "message": message}})
}

/// Submits `n` failing jobs and waits until they are dead; returns their ids.
async fn fail(srv: &TestServer, n: usize, queue: &str, message: &str) -> Vec<String> {
    let ids = srv.submit_batch((0..n).map(|i| failing(queue, &format!("{message} {i}"))).collect()).await;
    for id in &ids {
        srv.wait_state(id, &["dead"]).await;
    }
    ids
}

/// Waits until the server has finished two more evaluations: the second began after
/// this call, so it read everything committed before it.
async fn two_evaluations(srv: &TestServer) {
    let mut ticks = srv.escalation_ticks();
    let start = *ticks.borrow_and_update();
    poll("two escalation evaluations", async || {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), ticks.changed()).await;
        (*ticks.borrow_and_update() >= start + 2).then_some(())
    })
    .await;
}

/// The escalation jobs, oldest first (straight from the store: open mode's caller is
/// workspace `default`).
async fn escalations(srv: &TestServer) -> Vec<JobRecord> {
    let filter = JobFilter { kind: Some("webhook".into()), limit: 1000, ..JobFilter::default() };
    let mut jobs = srv.store.list_jobs("escalation", filter).await.expect("the listing").items;
    jobs.reverse();
    jobs
}

async fn a_count_fires_once_per_window_and_again_a_window_later(backend: Backend) {
    let mut rx = Receiver::start().await;
    let when = "severity >= high and count >= 3 in 2s";
    let srv = TestServer::start_with(backend, rule(&rx, Format::Json, false, "storm", when, None)).await;

    // Three failures alike but for a number: one group at its threshold.
    let first = fail(&srv, 3, "default", "order failed:").await;
    let d = rx.next().await;
    let p = d.payload();
    assert_eq!((p["rule"].as_str(), p["count"].as_u64()), (Some("storm"), Some(3)), "{p:#}");
    assert_eq!(p["group"]["message"], "order failed: <n> (attempt <n>)", "{p:#}");
    assert!(first.iter().any(|id| p["sample_job_id"] == id.as_str()), "{p:#}");
    // Three more in the same group: a new crossing, but within the window of the first
    // firing. It fires again once that window has passed, not before. They fail a second
    // into the window, so that they are still within the rule's window when the first
    // firing's has passed: failing at once, they could leave the window before the first
    // evaluation allowed to fire again (50 ms apart), and never fire.
    let first_at = crate::harness::ts(&p["at"]);
    poll("a second to pass since the first firing", async || {
        (chrono::Utc::now() >= first_at + chrono::TimeDelta::seconds(1)).then_some(())
    })
    .await;
    fail(&srv, 3, "default", "order failed:").await;
    let again = rx.next().await.payload();
    assert_eq!(again["count"], 3, "only the new failures are in the new window: {again:#}");
    let gap = crate::harness::ts(&again["at"]) - crate::harness::ts(&p["at"]);
    assert!(gap >= chrono::TimeDelta::seconds(2), "the second firing came {gap} after the first, within its window");
    two_evaluations(&srv).await;
    let jobs = escalations(&srv).await;
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    for job in &jobs {
        let job = srv.store.get_job("escalation", job.id).await.unwrap().expect("the job");
        assert_eq!(job.idempotency_key.as_deref().map(|k| k.starts_with("escalation:storm:")), Some(true));
    }
    assert_eq!(rx.pending(), 0, "one delivery per firing");
    let (_, metrics) = srv.get_text("/metrics").await;
    assert!(metrics.contains("ferry_escalations_total{rule=\"storm\"}"), "counted by rule");
    srv.stop().await;
}

async fn one_below_the_threshold_does_not_fire_and_the_threshold_does(backend: Backend) {
    let mut rx = Receiver::start().await;
    let when = "count >= 3 and queue = x and type = network";
    let srv = TestServer::start_with(backend, rule(&rx, Format::Json, false, "edge", when, Some("1m"))).await;
    fail(&srv, 2, "x", "lost order").await;
    // The same failures elsewhere are not the rule's.
    fail(&srv, 3, "y", "lost order").await;
    two_evaluations(&srv).await;
    assert!(escalations(&srv).await.is_empty(), "two failures of three do not fire");
    let third = fail(&srv, 1, "x", "lost order").await;
    let p = rx.next().await.payload();
    assert_eq!((p["count"].as_u64(), p["window_ms"].as_u64()), (Some(3), Some(60_000)), "{p:#}");
    assert_eq!(p["group"]["queue"], "x");
    assert_eq!(p["sample_job_id"], third[0].as_str(), "the newest failure's job");
    two_evaluations(&srv).await;
    assert_eq!(escalations(&srv).await.len(), 1);
    srv.stop().await;
}

/// A breaker key as a path segment.
fn breaker_path(key: &str) -> String {
    format!("/v1/breakers/{}", key.replace(':', "%3A").replace('/', "%2F"))
}

async fn set_breaker(srv: &TestServer, key: &str, state: &str) {
    let url = format!("{}{}", srv.url(), breaker_path(key));
    let resp = srv.client().put(url).json(&json!({"state": state})).send().await.expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn a_breaker_that_opens_fires_once_per_window(backend: Backend) {
    let mut rx = Receiver::start().await;
    let srv = TestServer::start_with(backend, rule(&rx, Format::Json, false, "trips", "breaker opens", None)).await;
    let key = "https://partner.example:443";
    set_breaker(&srv, key, "open").await;
    let p = rx.next().await.payload();
    assert_eq!((p["rule"].as_str(), p["group"]["breaker"].as_str()), (Some("trips"), Some(key)), "{p:#}");
    assert_eq!(p["window_ms"], 300_000, "the default window");
    // It trips again within the window: no second escalation.
    set_breaker(&srv, key, "closed").await;
    set_breaker(&srv, key, "open").await;
    two_evaluations(&srv).await;
    assert_eq!(escalations(&srv).await.len(), 1);
    assert_eq!(rx.pending(), 0);
    srv.stop().await;
}

async fn a_dead_job_on_the_rules_queue_fires_and_on_another_does_not(backend: Backend) {
    let mut rx = Receiver::start().await;
    let srv = TestServer::start_with(backend, rule(&rx, Format::Json, false, "lost", "dead on queue x", None)).await;
    fail(&srv, 1, "y", "gone").await;
    two_evaluations(&srv).await;
    assert!(escalations(&srv).await.is_empty(), "a dead job on y is not the rule's");
    let dead = fail(&srv, 1, "x", "gone").await;
    let p = rx.next().await.payload();
    assert_eq!(p["group"], json!({"workspace": "default", "queue": "x"}), "{p:#}");
    assert_eq!((p["count"].as_u64(), p["severity"].as_str()), (Some(1), Some("high")));
    assert_eq!(p["sample_job_id"], dead[0].as_str());
    let summary = p["summary"].as_str().expect("a summary");
    assert!(summary.starts_with("Ferry escalation lost: 1 job went dead in 5m on queue x"), "{summary}");
    srv.stop().await;
}

async fn slack_deliveries_are_signed_and_the_operator_sees_the_jobs(backend: Backend) {
    let mut rx = Receiver::start().await;
    let srv = TestServer::start_with(backend, rule(&rx, Format::Slack, true, "pager", "dead", None)).await;
    fail(&srv, 1, "default", "<!channel> disk full").await;
    let d = rx.next_verified(SECRET).await;
    assert_eq!(d.header("ferry-event-type"), "ferry.escalation");
    let p = d.payload();
    let text = p["text"].as_str().expect("Slack's text");
    assert!(text.starts_with("Ferry escalation pager: 1 job went dead"), "{text}");
    assert_eq!(p["blocks"][0]["text"], json!({"type": "mrkdwn", "text": text}), "{p:#}");
    assert_eq!(p["blocks"][1]["type"], "context", "{p:#}");
    assert!(!p.to_string().contains("<!channel>"), "a tenant's text never mentions: {p}");

    // An operator's token of the escalation workspace lists the jobs; a tenant's does not.
    let (_, operator) = srv.token("escalation", "ops", ferry_core::auth::Role::Viewer).await;
    let job = poll("the delivery to be recorded", async || {
        let (status, page) = srv.call_as(&operator, Method::GET, "/v1/jobs?kind=webhook", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let job = page["items"].as_array().and_then(|a| a.first()).cloned()?;
        (job["state"] == "succeeded").then_some(job)
    })
    .await;
    assert_eq!((&job["queue"], &job["labels"]["escalation"]), (&json!("webhook"), &json!("pager")), "{job:#}");
    let (_, tenant) = srv.token("default", "ada", ferry_core::auth::Role::Admin).await;
    let (_, page) = srv.call_as(&tenant, Method::GET, "/v1/jobs?kind=webhook", None).await;
    assert_eq!(page["items"], json!([]), "{page}");
    srv.stop().await;
}

async fn two_nodes_fire_each_group_once(backend: Backend) {
    let mut rx = Receiver::start().await;
    let queues: Vec<String> = (0..4).map(|i| format!("q{i}")).collect();
    let setup = rule(&rx, Format::Json, false, "lost", "dead", None);
    let a = TestServer::start_with(backend, |cfg| {
        setup(cfg);
        for q in &queues {
            cfg.queues.insert(q.clone(), QueueSettings::default());
        }
        // Both nodes evaluate as often as they can, to race each other.
        cfg.escalation.tick_ms = 10;
    })
    .await;
    let b = a.peer(|_| {}).await;
    // A dead job on each of four queues: four groups, each proposed by both nodes.
    for (i, q) in queues.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        fail(node, 1, q, "gone").await;
    }
    let mut seen = Vec::new();
    for _ in &queues {
        seen.push(rx.next().await.payload()["group"]["queue"].as_str().expect("a queue").to_string());
    }
    seen.sort();
    assert_eq!(seen, queues);
    two_evaluations(&a).await;
    two_evaluations(&b).await;
    assert_eq!(escalations(&a).await.len(), queues.len(), "one firing per group, whichever node");
    assert_eq!(rx.pending(), 0);
    b.stop().await;
    a.stop().await;
}
