//! Promise: one read of a job is one consistent snapshot — its state, its attempt count
//! and its attempts' outcomes agree, even while the job moves.

use crate::harness::{Backend, TestServer, both};
use serde_json::{Value, json};

both!(a_job_read_is_a_consistent_snapshot);

/// What is wrong with a job view, if anything (no replay or release in these jobs).
fn inconsistency(job: &Value) -> Option<String> {
    let state = job["state"].as_str()?;
    let attempts = job["attempts"].as_array()?;
    let used = job["attempts_used"].as_u64()? as usize;
    let open = attempts.iter().filter(|a| a["outcome"].is_null()).count();
    let why = if used != attempts.len() {
        format!("attempts_used is {used} but {} attempts are listed", attempts.len())
    } else if state == "running" && (open != 1 || !attempts.last()?["outcome"].is_null()) {
        "the job is running but its last attempt has ended".to_string()
    } else if state != "running" && open != 0 {
        format!("the job is {state} but an attempt is still open")
    } else {
        return None;
    };
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap_or("(open)")).collect();
    Some(format!("{why} (state {state}, attempts_used {used}, outcomes {outcomes:?})"))
}

async fn a_job_read_is_a_consistent_snapshot(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Jobs that fail fast and retry at once: a hundred transitions each.
    let ids = server
        .submit_batch(
            (0..4)
                .map(|_| {
                    json!({
                        "kind": "fail",
                        "input": {"type": "network"},
                        "max_attempts": 100,
                        "backoff": {"initial_ms": 0, "max_ms": 0, "multiplier": 1.0, "jitter": "none"}
                    })
                })
                .collect(),
        )
        .await;
    let mut readers = tokio::task::JoinSet::new();
    for id in ids {
        let (client, url) = (server.client().clone(), format!("{}/v1/jobs/{id}", server.url()));
        readers.spawn(async move {
            let mut seen = Vec::new();
            let started = std::time::Instant::now();
            loop {
                let job: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                if let Some(why) = inconsistency(&job) {
                    seen.push(why);
                }
                if job["state"] == "dead" {
                    return seen;
                }
                assert!(started.elapsed() < crate::harness::DEADLINE, "the job never died: {job}");
            }
        });
    }
    let torn: Vec<String> = readers.join_all().await.concat();
    assert!(
        torn.is_empty(),
        "{} torn reads, e.g.:\n{}",
        torn.len(),
        torn.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
    server.stop().await;
}
