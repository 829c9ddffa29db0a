//! Promise: every job keeps an ordered event log of its transitions, with ids that only
//! grow.

use crate::harness::{Backend, TestServer, both, ts};
use serde_json::json;

both!(succeeded_noop_logs_queued_started_succeeded);

async fn succeeded_noop_logs_queued_started_succeeded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let id = server.submit(json!({"kind": "noop"})).await;
    server.wait_state(&id, &["succeeded"]).await;
    let events = server.events(&id).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["queued", "started", "succeeded"], "{events:#?}");
    for e in &events {
        assert_eq!(e["job_id"], json!(id), "{e}");
        assert!(e["id"].is_i64(), "{e}");
        ts(&e["at"]);
    }
    assert!(events.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()), "ids increase: {events:#?}");
    assert!(events.windows(2).all(|w| ts(&w[0]["at"]) <= ts(&w[1]["at"])), "times do not go back: {events:#?}");
    assert_eq!(events[0]["data"]["queue"], "default");
    assert_eq!(events[1]["data"]["attempt"], 1);
    assert!(events[1]["data"]["worker"].is_string());
    assert_eq!(events[2]["data"]["attempt"], 1);

    // Ids grow across jobs too: a later job's events come after.
    let later = server.submit(json!({"kind": "noop"})).await;
    server.wait_state(&later, &["succeeded"]).await;
    let later_events = server.events(&later).await;
    assert!(later_events[0]["id"].as_i64() > events.last().unwrap()["id"].as_i64());
    server.stop().await;
}
