//! Pins the circuit breakers' promises on both backends: one breaker per key whatever
//! the number of callers (concurrent reports are all counted, a trip happens once), a
//! trip holds jobs back as `scheduled` without spending their attempt, a close lets them
//! go at once, probes after the cool-down, disable and reset, and an operator's settings
//! over the configured ones.

use super::*;
use ferry_core::breaker::{Admit, BreakerSettings, BreakerState, Outcome};
use ferry_store::{BreakerAction, BreakerOp, BreakerReport, Wait};

conformance!(
    concurrent_reports_all_count_and_a_trip_happens_once,
    a_tripped_breaker_holds_jobs_back_and_its_close_lets_them_go,
    probes_close_or_reopen_and_a_disabled_breaker_refuses_until_reset,
);

fn failures(n: u32) -> BreakerSettings {
    BreakerSettings { failures: n, ratio: 0.0, cool_down_ms: 3_600_000, ..BreakerSettings::default() }
}

fn report(outcome: Outcome, probe: bool, job: Option<JobId>) -> BreakerReport {
    BreakerReport { successes: 0, outcome, probe, disable: false, job }
}

fn fail(settings: &BreakerSettings, job: Option<JobId>) -> BreakerOp {
    BreakerOp::Report { settings: settings.clone(), report: report(Outcome::Failure, false, job) }
}

async fn concurrent_reports_all_count_and_a_trip_happens_once(store: Arc<dyn Store>) {
    let answer = store.breaker_admit("k", &failures(5)).await.unwrap();
    assert_eq!((answer.admit, answer.quiet), (Admit::Go, true), "a key never seen is closed, and quiet");
    assert!(store.breakers(None).await.unwrap().is_empty(), "and admitting it writes nothing");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.breaker("counted", fail(&failures(1000), None)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let b = store.breakers(Some("counted")).await.unwrap().remove(0);
    assert_eq!(b.breaker.consecutive, 40, "no report is lost to another");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.breaker("tripped", fail(&failures(5), None)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let b = store.breakers(Some("tripped")).await.unwrap().remove(0);
    assert_eq!((b.breaker.state, b.breaker.trips), (BreakerState::Open, 1), "one trip, later failures ignored");
    let keys: Vec<String> = store.breakers(None).await.unwrap().into_iter().map(|b| b.key).collect();
    assert_eq!(keys, ["counted", "tripped"]);
}

async fn a_tripped_breaker_holds_jobs_back_and_its_close_lets_them_go(store: Arc<dyn Store>) {
    let s = failures(2);
    let keyed = |key: &str| spec(JobSpec { breaker: Some(key.into()), ..noop() });
    let (a, b, other) = (keyed("api"), keyed("api"), keyed("elsewhere"));
    store.submit(vec![a.clone(), b.clone(), other.clone()]).await.unwrap();
    let claimed = store.claim(claim_req("w", 3)).await.unwrap().jobs;
    assert!(claimed.iter().all(|j| j.breaker.is_some()), "a claim carries the job's breaker");
    store.breaker("api", fail(&s, Some(a.id))).await.unwrap();
    let out = store.breaker("api", fail(&s, Some(a.id))).await.unwrap();
    assert_eq!(out.record.breaker.state, BreakerState::Open, "the second failure in a row trips");
    let events = store.job_events("default", a.id).await.unwrap().unwrap();
    let changed = events.iter().find(|e| e.event_type == "breaker_changed").expect("the trip is on the job's log");
    assert_eq!((changed.data["breaker"].as_str(), changed.data["state"].as_str()), (Some("api"), Some("open")));

    let ferry_store::BreakerAnswer { admit, now, quiet } = store.breaker_admit("api", &s).await.unwrap();
    assert!(!quiet);
    let Admit::Wait { until } = admit else { panic!("an open breaker holds attempts back, got {admit:?}") };
    assert!(until > now + 3_000_000_000, "for its cool-down");
    // The engine turns that into a deferral: scheduled again, the attempt not counted.
    for j in claimed.iter().filter(|j| j.id != other.id) {
        let deferred = FinishResult::Deferred { retry_in: until - now, wait: Wait::Breaker("api".into()) };
        assert!(store.finish(end(j.id, j.attempt, deferred)).await.unwrap());
    }
    let rec = store.get_job("default", b.id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.breaker.as_deref()), (JobState::Scheduled, Some("api")));
    assert_eq!(rec.attempts[0].outcome, Some(AttemptOutcome::Released), "the held-back attempt does not count");
    let events = store.job_events("default", b.id).await.unwrap().unwrap();
    let wait = events.iter().find(|e| e.event_type == "breaker_wait").expect("the wait is on the job's log");
    assert_eq!(wait.data["breaker"], "api");
    assert!(wait.data["run_at"].is_string() && wait.data["delay_ms"].as_i64() > Some(3_000_000), "{}", wait.data);
    assert!(store.claim(claim_req("w", 3)).await.unwrap().jobs.is_empty(), "held back until the breaker closes");

    let closed = BreakerOp::Set { settings: s.clone(), action: BreakerAction::Close };
    assert_eq!(store.breaker("api", closed).await.unwrap().record.breaker.state, BreakerState::Closed);
    let again = store.claim(claim_req("w", 3)).await.unwrap().jobs;
    let mut ids: Vec<JobId> = again.iter().map(|j| j.id).collect();
    ids.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(ids, want, "a close lets the held-back jobs go at once");
    assert!(again.iter().all(|j| j.attempts_counted == 1 && j.attempt == 2), "a fresh attempt, the first counted");

    // A wait decided before the close but recorded after it would miss the close's let-go:
    // it is ready at once instead.
    let late = &again[0];
    let deferred = FinishResult::Deferred { retry_in: 3_600_000_000, wait: Wait::Breaker("api".into()) };
    assert!(store.finish(end(late.id, late.attempt, deferred)).await.unwrap());
    assert_eq!(store.get_job("default", late.id).await.unwrap().unwrap().state, JobState::Queued);
    assert_eq!(store.claim(claim_req("w", 3)).await.unwrap().jobs[0].id, late.id, "and claimed at once");
}

async fn probes_close_or_reopen_and_a_disabled_breaker_refuses_until_reset(store: Arc<dyn Store>) {
    let s = BreakerSettings { failures: 1, ratio: 0.0, cool_down_ms: 1, max_cool_down_ms: 4, ..Default::default() };
    store.breaker("p", fail(&s, None)).await.unwrap();
    // Wait out the cool-down of 1 ms: the store's clock decides.
    let probe = loop {
        match store.breaker_admit("p", &s).await.unwrap().admit {
            Admit::Wait { .. } => tokio::task::yield_now().await,
            other => break other,
        }
    };
    assert_eq!(probe, Admit::Probe);
    assert!(matches!(store.breaker_admit("p", &s).await.unwrap().admit, Admit::Wait { .. }), "one probe at a time");
    let failed = BreakerOp::Report { settings: s.clone(), report: report(Outcome::Failure, true, None) };
    let b = store.breaker("p", failed).await.unwrap().record.breaker;
    assert_eq!((b.state, b.cool_down_ms, b.trips, b.probes), (BreakerState::Open, 2, 2, 1), "reopened, longer");
    loop {
        match store.breaker_admit("p", &s).await.unwrap().admit {
            Admit::Wait { .. } => tokio::task::yield_now().await,
            Admit::Probe => break,
            other => panic!("expected a probe, got {other:?}"),
        }
    }
    let ok = BreakerOp::Report { settings: s.clone(), report: report(Outcome::Success, true, None) };
    assert_eq!(store.breaker("p", ok).await.unwrap().record.breaker.state, BreakerState::Closed);

    // An operator's settings win over the configured ones: one failure trips now.
    let own = BreakerSettings { failures: 1, ..failures(1) };
    let set = BreakerOp::Set { settings: failures(50), action: BreakerAction::Settings(Some(own.clone())) };
    assert_eq!(store.breaker("q", set).await.unwrap().record.settings, Some(own));
    let tripped = store.breaker("q", fail(&failures(50), None)).await.unwrap().record.breaker.state;
    assert_eq!(tripped, BreakerState::Open);

    let gone = BreakerReport { disable: true, ..report(Outcome::Failure, false, None) };
    let op = BreakerOp::Report { settings: s.clone(), report: gone };
    assert_eq!(store.breaker("d", op).await.unwrap().record.breaker.state, BreakerState::Disabled);
    assert_eq!(store.breaker_admit("d", &s).await.unwrap().admit, Admit::Refuse);
    let reset = BreakerOp::Set { settings: s.clone(), action: BreakerAction::Close };
    assert_eq!(store.breaker("d", reset).await.unwrap().record.breaker.state, BreakerState::Closed);
    assert_eq!(store.breaker_admit("d", &s).await.unwrap().admit, Admit::Go);
}
