//! Pins, on both backends, what the logs say of a job that waits for a slot or comes
//! back: jobs held by `on_limit: "queue"` log `held` (in batch order, like any
//! submission's first events) and, once released, `queued` (or `scheduled`) oldest first;
//! a replay logs `replayed`, then `queued`.

use super::*;
use ferry_store::{Admission, WorkspaceLimits};

conformance!(held_and_replayed_jobs_log_their_transitions);

fn types_and_data(events: &[ferry_store::Event]) -> Vec<(&str, &serde_json::Value)> {
    events.iter().map(|e| (e.event_type.as_str(), &e.data)).collect()
}

async fn held_and_replayed_jobs_log_their_transitions(store: Arc<dyn Store>) {
    let hold = Admission { per_user: Some(0), queue_on_limit: true, ..Admission::default() };
    let mut batch: Vec<NewJob> = (0..20).map(|_| job(None, 0)).collect();
    let later = spec(JobSpec { delay_ms: Some(60_000), ..noop() });
    batch.push(later.clone());
    let out = store.submit_admitted(batch.clone(), hold).await.unwrap();
    assert!(out.iter().all(|s| s.state == JobState::Held && s.created), "{out:?}");
    let held = json!({"queue": "default", "reason": "user concurrent job limit reached (0)"});
    let mut firsts = Vec::new();
    for j in &batch {
        let events = store.job_events("default", j.id).await.unwrap().unwrap();
        assert_eq!(types_and_data(&events), vec![("held", &held)]);
        firsts.push(events[0].id);
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "held events are logged in batch order: {firsts:?}");

    // Released (the defaults given limit no job): queued, or scheduled with its time.
    assert_eq!(store.release_held_jobs(WorkspaceLimits::default()).await.unwrap(), 21);
    let mut seconds = Vec::new();
    for j in &batch[..20] {
        let events = store.job_events("default", j.id).await.unwrap().unwrap();
        assert_eq!(types_and_data(&events), vec![("held", &held), ("queued", &json!({"queue": "default"}))]);
        seconds.push(events[1].id);
    }
    assert!(seconds.windows(2).all(|w| w[0] < w[1]), "released oldest first: {seconds:?}");
    let rec = store.get_job("default", later.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled);
    let events = store.job_events("default", later.id).await.unwrap().unwrap();
    let due = json!({"queue": "default", "run_at": time::to_datetime(rec.run_at)});
    assert_eq!(types_and_data(&events), vec![("held", &held), ("scheduled", &due)]);

    // A replay: `replayed` with what the job was, then `queued`.
    let c = store.claim(claim_req("w", 1)).await.unwrap().jobs.remove(0);
    let no = JobError::new(ErrorType::Validation, "no");
    let dead = FinishResult::Dead { error: no.clone(), attempt_error: no, output: None };
    assert!(store.finish(end(c.id, c.attempt, dead)).await.unwrap());
    assert_eq!(store.replay("default", c.id).await.unwrap(), ReplayOutcome::Replayed);
    let cancelled = &batch[19];
    store.cancel("default", cancelled.id).await.unwrap();
    assert_eq!(store.replay("default", cancelled.id).await.unwrap(), ReplayOutcome::Replayed);
    for (id, was) in [(c.id, "dead"), (cancelled.id, "cancelled")] {
        let events = store.job_events("default", id).await.unwrap().unwrap();
        let tail = types_and_data(&events[events.len() - 2..]);
        assert_eq!(tail, vec![("replayed", &json!({"was": was})), ("queued", &json!({"queue": "default"}))]);
    }
    assert_eq!(store.get_job("default", c.id).await.unwrap().unwrap().state, JobState::Queued);
}
