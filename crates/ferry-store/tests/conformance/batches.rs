//! Pins, on both backends, that a large batch is the sum of its jobs: a submission of
//! many jobs stores each one with its own columns, and a batch of finishes with mixed
//! results (stale attempts and one job twice among them) ends each job as its own finish
//! says, each log in order. The SQLite writer writes such batches in multi-row statements
//! of a few sizes (`sqlite/batch.rs`), so the counts here cross every size.

use super::*;
use ferry_store::Event;

conformance!(large_batches_keep_every_job_and_its_log);

fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

async fn large_batches_keep_every_job_and_its_log(store: Arc<dyn Store>) {
    // 64 + 16 + 16 + 4 + 1 + 1 + 1 jobs, each told apart by its priority and input.
    let n = 103;
    let jobs: Vec<NewJob> =
        (0..n).map(|i| spec(JobSpec { priority: Some(i as i32), input: Some(json!({ "i": i })), ..noop() })).collect();
    let submitted = store.submit(jobs.clone()).await.unwrap();
    assert_eq!(submitted.iter().map(|s| s.id).collect::<Vec<_>>(), jobs.iter().map(|j| j.id).collect::<Vec<_>>());
    for (i, j) in jobs.iter().enumerate() {
        let rec = store.get_job("default", j.id).await.unwrap().unwrap();
        assert_eq!((rec.priority, &rec.input, rec.state), (i as i32, &json!({ "i": i }), JobState::Queued), "job {i}");
    }
    let claimed = store.claim(claim_req("w", n)).await.unwrap().jobs;
    assert_eq!(claimed.len(), n);
    // A finish for each job by its index: every third retries, every seventh is stale,
    // and job 0 is finished twice (first stale, then for real).
    let net = JobError::new(ErrorType::Network, "down");
    let mut fins = vec![succeed(claimed[0].id, 99)];
    let mut expected = vec![false];
    for c in &claimed {
        let i = c.priority as usize;
        assert_eq!(serde_json::from_str::<serde_json::Value>(&c.input).unwrap(), json!({ "i": i }));
        let attempt = if i % 7 == 6 { c.attempt + 1 } else { c.attempt };
        let result = match i % 3 {
            0 => FinishResult::Succeeded { output: json!({ "out": i }) },
            _ => FinishResult::Retry { retry_in: 3_600_000_000, error: net.clone(), output: None },
        };
        fins.push(end(c.id, attempt, result));
        expected.push(i % 7 != 6);
    }
    assert_eq!(store.finish_many(fins).await.unwrap(), expected);
    let mut last_first_event = None;
    for (i, j) in jobs.iter().enumerate() {
        let rec = store.get_job("default", j.id).await.unwrap().unwrap();
        let events = store.job_events("default", j.id).await.unwrap().unwrap();
        let (state, log) = match (i % 7 == 6, i % 3 == 0) {
            (true, _) => (JobState::Running, vec!["queued", "started"]),
            (false, true) => (JobState::Succeeded, vec!["queued", "started", "succeeded"]),
            (false, false) => (JobState::Retrying, vec!["queued", "started", "attempt_failed", "retry_scheduled"]),
        };
        assert_eq!(rec.state, state, "job {i}");
        assert_eq!(types(&events), log, "job {i}");
        assert!(events.windows(2).all(|w| w[0].id < w[1].id), "job {i}'s log is in order");
        if state == JobState::Succeeded {
            assert_eq!(rec.output, Some(json!({ "out": i })), "job {i}");
        }
        if state == JobState::Retrying {
            assert_eq!(rec.error.as_ref(), Some(&net), "job {i}");
            assert!(rec.run_at > rec.created_at, "job {i} waits for its retry");
        }
        // The jobs' first events follow the batch's order.
        assert!(last_first_event < Some(events[0].id), "job {i}'s first event follows the previous job's");
        last_first_event = Some(events[0].id);
    }
}
