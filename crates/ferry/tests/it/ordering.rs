//! Promise: jobs of a workspace with one `ordering_key` run one at a time, in the order
//! they were submitted, whatever their priorities and the queue's concurrency; a job that
//! dies or is cancelled lets the next one go at once; a bad key is refused naming the
//! field.
//!
//! Order is read from the server's own timestamps: each job of the key sleeps 30 ms, so a
//! job that waited for the one before it ended at least 30 ms after it.

use crate::harness::{Backend, TestServer, assert_error, both, poll, ts};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    ordered_jobs_run_one_at_a_time_in_submission_order,
    a_dead_job_lets_the_next_go,
    a_cancelled_head_lets_the_waiting_job_go_at_once,
    a_bad_ordering_key_is_refused,
);

async fn ordered_jobs_run_one_at_a_time_in_submission_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    // Later jobs have higher priorities: order by key beats priority. An unordered job
    // beside them is not held back.
    let specs: Vec<Value> = (0..5)
        .map(|i| json!({"kind": "sleep", "input": {"ms": 30}, "ordering_key": "invoices:42", "priority": i}))
        .chain([json!({"kind": "noop"})])
        .collect();
    let ids = s.submit_batch(specs).await;
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(s.wait_state(id, &["succeeded"]).await);
    }
    assert_eq!(jobs[0]["ordering_key"], "invoices:42", "a job shows its key");
    assert!(jobs[5].get("ordering_key").is_none());
    for pair in jobs[..5].windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        // Not the attempt's `started_at`: that is its claim, which may come before the
        // job ahead ends when one claim took both (the order is checked after the claim).
        // A job that waited for the one ahead slept its 30 ms after that one's end.
        let gap = ts(&after["finished_at"]) - ts(&before["finished_at"]);
        assert!(gap >= chrono::Duration::milliseconds(30), "{} ran beside {}: {gap}", after["id"], before["id"]);
        assert_eq!(after["attempts_used"], 1, "waiting spent no attempt: {after}");
    }
}

async fn a_dead_job_lets_the_next_go(backend: Backend) {
    let s = TestServer::start(backend).await;
    let first = json!({"kind": "fail", "input": {"type": "validation"}, "max_attempts": 1, "ordering_key": "k"});
    let ids = s.submit_batch(vec![first, json!({"kind": "noop", "ordering_key": "k"})]).await;
    let dead = s.wait_state(&ids[0], &["dead"]).await;
    let next = s.wait_state(&ids[1], &["succeeded"]).await;
    // Not its attempt's `started_at`: that is its claim, which may come before the dead
    // job's end when one claim took both (the order is checked after the claim, and let
    // it run once the dead job's end was committed).
    assert!(ts(&next["finished_at"]) >= ts(&dead["finished_at"]));
    assert_eq!(next["attempts_used"], 1, "waiting spent no attempt: {next}");
}

async fn a_cancelled_head_lets_the_waiting_job_go_at_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    // The head waits for its time; the job behind it is claimed, finds it ahead and waits.
    let head = s.submit(json!({"kind": "noop", "ordering_key": "k", "delay_ms": 3_600_000})).await;
    let behind = s.submit(json!({"kind": "noop", "ordering_key": "k"})).await;
    let wait = poll("the job behind to wait for the head", async || {
        s.events(&behind).await.into_iter().find(|e| e["type"] == "order_wait")
    })
    .await;
    assert_eq!(wait["data"]["after"], head.as_str());
    assert_eq!(s.job(&behind).await["state"], "scheduled");
    let (status, _) = s.post(&format!("/v1/jobs/{head}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let done = s.wait_state(&behind, &["succeeded"]).await;
    // Let go by the cancel, not by its wait's own end.
    assert!(ts(&done["finished_at"]) < ts(&wait["data"]["run_at"]), "{done}");
}

async fn a_bad_ordering_key_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    for key in [json!(""), json!("a b"), json!("x".repeat(256)), json!(7)] {
        let got = s.post("/v1/jobs", json!({"kind": "noop", "ordering_key": key})).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{key}: {got:?}");
        assert_eq!(got.1["error"]["field"], "ordering_key", "{key}: {got:?}");
    }
    let got = s
        .post(
            "/v1/jobs",
            json!({"kind": "webhook", "input": {"url": "http://127.0.0.1:9/h", "payload": 1, "ordered": "yes"}}),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.ordered"));
    assert_eq!(s.count_jobs().await, 0, "nothing was stored");
    let longest = s.submit(json!({"kind": "noop", "ordering_key": "x".repeat(255)})).await;
    s.wait_state(&longest, &["succeeded"]).await;
}
