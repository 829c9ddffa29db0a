//! Pins what the store keeps for remote kinds on both backends: registered kinds are
//! listed by name, a kind registered again moves to its new queue; a remote attempt's
//! events are written in order while the attempt is the job's current one, and not at all
//! (none of the batch) once it is not.

use super::*;
use ferry_store::RemoteKind;

conformance!(remote_kinds_are_kept_by_name_and_move_queues, a_remote_attempts_events_are_fenced_by_the_attempt);

fn kind(kind: &str, queue: &str) -> RemoteKind {
    RemoteKind { kind: kind.into(), queue: queue.into() }
}

async fn remote_kinds_are_kept_by_name_and_move_queues(store: Arc<dyn Store>) {
    assert_eq!(store.remote_kinds().await.unwrap(), vec![]);
    store.put_remote_kinds(&[kind("resize", "images"), kind("crop", "images")]).await.unwrap();
    store.put_remote_kinds(&[kind("resize", "thumbs")]).await.unwrap();
    assert_eq!(store.remote_kinds().await.unwrap(), vec![kind("crop", "images"), kind("resize", "thumbs")]);
}

async fn a_remote_attempts_events_are_fenced_by_the_attempt(store: Arc<dyn Store>) {
    let j = job(None, 0);
    store.submit(vec![j.clone()]).await.unwrap();
    let claimed = store.claim(claim_req("w", 1)).await.unwrap().jobs;
    let attempt = claimed[0].attempt;
    let events = vec![("progress".to_string(), json!({"done": 1})), ("log".to_string(), json!({"line": "one"}))];
    assert!(!store.write_job_events(j.id, attempt + 1, events.clone()).await.unwrap(), "not its attempt");
    assert!(store.write_job_events(j.id, attempt, events.clone()).await.unwrap());
    assert!(store.finish(succeed(j.id, attempt)).await.unwrap());
    assert!(!store.write_job_events(j.id, attempt, events).await.unwrap(), "the attempt ended");
    let log = store.job_events("default", j.id).await.unwrap().unwrap();
    let written: Vec<(&str, &serde_json::Value)> = log
        .iter()
        .filter(|e| ["progress", "log"].contains(&e.event_type.as_str()))
        .map(|e| (e.event_type.as_str(), &e.data))
        .collect();
    assert_eq!(written, vec![("progress", &json!({"done": 1})), ("log", &json!({"line": "one"}))], "once, in order");
    let at = log.iter().position(|e| e.event_type == "progress").unwrap();
    assert!(log[at + 2..].iter().any(|e| e.event_type == "succeeded"), "before the end: {log:?}");
}
