//! Pins the escalation promises on both backends: the signals are every workspace's
//! failures, dead jobs and opened breakers of the look-back, never the escalation
//! workspace's; a group fires at most once per window (of racing proposals exactly one
//! wins), its job stored with it under its idempotency key, and again a window later.

use super::failures::fail_one;
use super::*;
use ferry_core::breaker::BreakerSettings;
use ferry_store::{BreakerAction, BreakerOp, Firing, SignalRead};

conformance!(signals_span_workspaces_but_the_escalations_and_a_group_fires_once_per_window);

const WINDOW_MS: u64 = 60_000;

/// A proposal of rule `r`'s group `group`, evaluated at `at`.
fn firing(group: &str, at: i64) -> Firing {
    let job = JobSpec { kind: "noop".into(), queue: Some("webhook".into()), ..JobSpec::default() }
        .validate("escalation", "escalation", time::now_micros(), &Limits::default())
        .unwrap();
    Firing { rule: "r".into(), group: group.into(), window_ms: WINDOW_MS, at, job }
}

async fn signals_span_workspaces_but_the_escalations_and_a_group_fires_once_per_window(store: Arc<dyn Store>) {
    let retried = fail_one(&store, "a", "default", None, "order 1 failed", false).await;
    let dead = fail_one(&store, "b", "other", None, "lost", true).await;
    fail_one(&store, "escalation", "webhook", None, "an escalation's own failure", true).await;
    let open = BreakerOp::Set { settings: BreakerSettings::default(), action: BreakerAction::Open };
    store.breaker("https://x.test:443", open).await.unwrap();
    let read = SignalRead {
        look_back_ms: WINDOW_MS,
        exclude_workspace: "escalation".into(),
        cap: 100,
        failures: true,
        dead: true,
        breakers: true,
    };
    let s = store.escalation_signals(read.clone()).await.unwrap();
    let mut failed: Vec<(&str, JobId)> = s.failures.iter().map(|o| (o.workspace.as_str(), o.row.job_id)).collect();
    failed.sort();
    assert_eq!(failed, [("a", retried), ("b", dead)], "every workspace's but the escalation workspace's");
    let died: Vec<(&str, &str, JobId)> =
        s.dead.iter().map(|o| (o.workspace.as_str(), o.row.queue.as_str(), o.row.job_id)).collect();
    assert_eq!(died, [("b", "other", dead)]);
    assert_eq!(s.dead[0].row.error.message, "lost");
    let opened: Vec<&str> = s.opened.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(opened, ["https://x.test:443"]);
    let none = SignalRead { failures: false, dead: false, breakers: false, ..read };
    let s2 = store.escalation_signals(none).await.unwrap();
    assert!(s2.failures.is_empty() && s2.dead.is_empty() && s2.opened.is_empty() && s2.now >= s.now);

    // The first proposal fires, with its job; another within the window does not.
    let first = firing("g", s.now);
    let fired = store.escalate(first.clone()).await.unwrap().expect("a first firing");
    assert_eq!((fired.at, fired.job), (s.now, first.job.id));
    let job = store.get_job("escalation", first.job.id).await.unwrap().expect("the firing's job");
    assert_eq!(job.idempotency_key, Some(format!("escalation:r:g:{}", s.now)));
    assert_eq!(job.state, JobState::Queued);
    let window = time::ms(WINDOW_MS);
    let within = firing("g", s.now + window - 1);
    assert_eq!(store.escalate(within.clone()).await.unwrap(), None);
    assert!(store.get_job("escalation", within.job.id).await.unwrap().is_none(), "no job without its firing");
    // A window later it fires again.
    assert!(store.escalate(firing("g", s.now + window)).await.unwrap().is_some());

    // Racing proposals of one group: exactly one fires.
    let racers = (0..8).map(|_| {
        let store = store.clone();
        let f = firing("race", s.now);
        tokio::spawn(async move { store.escalate(f).await.unwrap() })
    });
    let mut won = 0;
    for r in racers.collect::<Vec<_>>() {
        won += usize::from(r.await.unwrap().is_some());
    }
    assert_eq!(won, 1, "one of the racing proposals fires");
    let filter = JobFilter { limit: 100, ..JobFilter::default() };
    let jobs = store.list_jobs("escalation", filter).await.unwrap().items;
    let fired = jobs.iter().filter(|j| j.idempotency_key.as_deref().is_some_and(|k| k.starts_with("escalation:r:")));
    assert_eq!(fired.count(), 3, "one job per firing: {jobs:#?}");
}
