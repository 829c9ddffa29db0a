//! Pins the storage promises every backend keeps, by running each test against SQLite and
//! PostgreSQL: racing claimers never get the same job; claims honour priority; the fence
//! refuses a stale worker; a refused batch writes nothing; idempotency holds under
//! concurrent submits; heartbeats, the reaper's view, workers and pruning behave alike.
//!
//! PostgreSQL tests use their own schema on `FERRY_TEST_DATABASE_URL` (default: the local
//! server's `test` database). Without PostgreSQL they are skipped loudly, except under
//! `CI=true`, where they must run.

use ferry_core::time;
use ferry_core::{AttemptOutcome, ErrorType, JobError, JobId, JobSpec, JobState, Limits, NewJob};
use ferry_store::postgres::{PgOptions, PgStore};
use ferry_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use ferry_store::{
    CancelOutcome, ClaimRequest, DeleteOutcome, Finish, FinishResult, JobFilter, LabelRate, QueueSettings,
    ReplayOutcome, Store, StoreError, WorkerInfo, WorkerQueue,
};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

/// A store under test and what it needs to clean up.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

fn pg_url() -> String {
    std::env::var("FERRY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&SqliteOptions { data_dir: dir.path().to_path_buf(), durability: Durability::Process })
            .unwrap();
    Backend { store: Arc::new(store), _dir: Some(dir), schema: None }
}

/// A PostgreSQL store in a fresh schema, or `None` (skip) when there is no server and we
/// are not in CI.
async fn postgres() -> Option<Backend> {
    let schema = format!("t_{:016x}", fastrand::u64(..));
    let opts = PgOptions {
        url: pg_url(),
        schema: Some(schema.clone()),
        max_connections: 8,
        application_name: format!("ferry-test:{schema}"),
    };
    match PgStore::open(&opts).await {
        Ok(store) => Some(Backend { store: Arc::new(store), _dir: None, schema: Some(schema) }),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {} is required under CI: {e}", pg_url())
        }
        Err(e) => {
            eprintln!("skipping: PostgreSQL at {} unavailable: {e}", pg_url());
            None
        }
    }
}

impl Backend {
    async fn cleanup(self) {
        self.store.close().await;
        if let Some(schema) = self.schema
            && let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                .execute(&pool)
                .await;
            pool.close().await;
        }
    }
}

/// Generates one test per backend from `async fn name(store: Arc<dyn Store>)`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let b = super::sqlite().await;
                    super::$name(b.store.clone()).await;
                    b.cleanup().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(b) = super::postgres().await else { return };
                    super::$name(b.store.clone()).await;
                    b.cleanup().await;
                }
            )*
        }
    };
}

conformance!(
    racing_claimers_never_get_the_same_job,
    claims_follow_priority_and_the_fence_refuses_stale_workers,
    a_refused_batch_writes_nothing,
    concurrent_submits_with_one_key_make_one_job,
    retry_release_and_dead_record_their_attempts,
    cancel_and_replay,
    heartbeats_renew_only_held_leases_and_expired_ones_are_visible,
    workers_register_and_leave,
    pruning_deletes_old_finished_jobs_only,
    queue_counts_and_listing,
    only_finished_jobs_can_be_deleted,
    the_result_cache_finds_recent_successes_of_the_workspace,
    runs_start_advance_and_end_with_an_ordered_log,
    agent_nodes_keep_their_conversation_and_the_day_counts_tokens,
);

fn job(key: Option<&str>, priority: i32) -> NewJob {
    spec(JobSpec { idempotency_key: key.map(Into::into), priority: Some(priority), ..noop() })
}

fn noop() -> JobSpec {
    JobSpec { kind: "noop".into(), ..Default::default() }
}

fn spec(s: JobSpec) -> NewJob {
    s.validate("default", "test", time::now_micros(), &Limits::default()).unwrap()
}

fn claim_req(worker: &str, limit: usize) -> ClaimRequest {
    ClaimRequest { queue: "default".into(), limit, worker: worker.into(), lease_ms: 60_000 }
}

fn succeed(id: JobId, attempt: u32) -> Finish {
    Finish { id, attempt, queue: "default".into(), result: FinishResult::Succeeded { output: json!({"ok": true}) } }
}

fn end(id: JobId, attempt: u32, result: FinishResult) -> Finish {
    Finish { id, attempt, queue: "default".into(), result }
}

async fn racing_claimers_never_get_the_same_job(store: Arc<dyn Store>) {
    let total = 2000;
    for _ in 0..(total / 500) {
        store.submit((0..500).map(|_| job(None, 0)).collect()).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(claim_req(&format!("w{w}"), 7)).await.unwrap().jobs;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "job {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), total);
}

async fn claims_follow_priority_and_the_fence_refuses_stale_workers(store: Arc<dyn Store>) {
    let low = job(None, 1);
    let high = job(None, 9);
    let mid = job(None, 5);
    store.submit(vec![low.clone(), high.clone(), mid.clone()]).await.unwrap();
    let first = store.claim(claim_req("a", 2)).await.unwrap().jobs;
    assert_eq!(first.iter().map(|j| j.id).collect::<Vec<_>>(), vec![high.id, mid.id], "higher priority first");
    let claimed = &first[0];
    assert_eq!(claimed.attempt, 1);
    assert!(!store.finish(succeed(claimed.id, claimed.attempt + 1)).await.unwrap(), "a wrong attempt is refused");
    assert!(store.finish(succeed(claimed.id, claimed.attempt)).await.unwrap());
    assert!(!store.finish(succeed(claimed.id, claimed.attempt)).await.unwrap(), "a job finishes once");
    let rec = store.get_job("default", high.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.output, Some(json!({"ok": true})));
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(rec.attempts[0].worker, "a");
    // Batched finishes are fenced one by one.
    let second = &first[1];
    let applied = store.finish_many(vec![succeed(second.id, 99), succeed(second.id, second.attempt)]).await.unwrap();
    assert_eq!(applied, vec![false, true]);
    assert!(store.get_job("other-workspace", high.id).await.unwrap().is_none(), "workspaces are separate");
}

async fn a_refused_batch_writes_nothing(store: Arc<dyn Store>) {
    store.submit(vec![job(Some("k"), 0)]).await.unwrap();
    let batch = vec![job(None, 0), job(Some("fresh"), 0), job(Some("k"), 5)];
    match store.submit(batch).await {
        Err(StoreError::IdempotencyConflict { index, .. }) => assert_eq!(index, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let batch = vec![job(Some("twice"), 0), job(Some("twice"), 1)];
    assert!(matches!(store.submit(batch).await, Err(StoreError::IdempotencyConflict { index: 1, .. })));
    let page = store.list_jobs("default", JobFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 1, "only the first job exists");
    let a = job(Some("same"), 0);
    let mut b = a.clone();
    b.id = JobId::now_v7();
    let out = store.submit(vec![a, b]).await.unwrap();
    assert_eq!(out[0].id, out[1].id);
    assert!(out[0].created && !out[1].created);
}

async fn concurrent_submits_with_one_key_make_one_job(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.submit(vec![job(Some("once"), 0)]).await.unwrap() }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let s = t.await.unwrap().pop().unwrap();
        ids.insert(s.id);
        created += s.created as usize;
    }
    assert_eq!(ids.len(), 1, "every submit answered with the same job");
    assert_eq!(created, 1, "exactly one submit created it");
}

async fn retry_release_and_dead_record_their_attempts(store: Arc<dyn Store>) {
    let j = job(None, 0);
    store.submit(vec![j.clone()]).await.unwrap();
    let net = JobError::new(ErrorType::Network, "down");
    let c = store.claim(claim_req("a", 1)).await.unwrap().jobs.remove(0);
    let retry = FinishResult::Retry { retry_in: 0, error: net.clone(), output: Some(json!("partial")) };
    assert!(store.finish(end(j.id, c.attempt, retry)).await.unwrap());
    let rec = store.get_job("default", j.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Retrying);
    assert_eq!(rec.error.as_ref(), Some(&net));
    assert_eq!(rec.output, Some(json!("partial")), "a failed attempt's output is kept");
    // Due at once: the next claim promotes and takes it.
    let c = store.claim(claim_req("b", 1)).await.unwrap().jobs.remove(0);
    assert_eq!((c.attempt, c.attempts_counted), (2, 2));
    assert!(store.finish(end(j.id, c.attempt, FinishResult::Released)).await.unwrap());
    let c = store.claim(claim_req("c", 1)).await.unwrap().jobs.remove(0);
    assert_eq!((c.attempt, c.attempts_counted), (3, 2), "a released attempt does not count");
    let budget = JobError::new(ErrorType::BudgetExhausted, "budget");
    let dead = FinishResult::Dead { error: budget.clone(), attempt_error: net.clone(), output: None };
    assert!(store.finish(end(j.id, c.attempt, dead)).await.unwrap());
    let rec = store.get_job("default", j.id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Dead);
    assert_eq!(rec.error, Some(budget));
    let outcomes: Vec<_> = rec.attempts.iter().map(|a| (a.attempt, a.worker.as_str(), a.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, "a", Some(AttemptOutcome::Failed)),
            (2, "b", Some(AttemptOutcome::Released)),
            (3, "c", Some(AttemptOutcome::Failed))
        ]
    );
    assert_eq!(rec.attempts[2].error, Some(net), "the attempt keeps its own error");
    let events = store.job_events("default", j.id).await.unwrap().unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "queued",
            "started",
            "attempt_failed",
            "retry_scheduled",
            "started",
            "released",
            "started",
            "attempt_failed",
            "dead"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "event ids increase");
}

async fn cancel_and_replay(store: Arc<dyn Store>) {
    let waiting = spec(JobSpec { delay_ms: Some(60_000), ..noop() });
    let running = job(None, 0);
    store.submit(vec![waiting.clone(), running.clone()]).await.unwrap();
    assert_eq!(store.get_job("default", waiting.id).await.unwrap().unwrap().state, JobState::Scheduled);
    let c = store.claim(claim_req("a", 5)).await.unwrap().jobs;
    assert_eq!(c.len(), 1, "a scheduled job is not claimed before its time");
    match store.cancel("default", waiting.id).await.unwrap() {
        CancelOutcome::Cancelled { was_running, .. } => assert!(!was_running),
        other => panic!("{other:?}"),
    }
    match store.cancel("default", running.id).await.unwrap() {
        CancelOutcome::Cancelled { was_running, queue, kind } => {
            assert!(was_running);
            assert_eq!((queue.as_str(), kind.as_str()), ("default", "noop"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.finish(succeed(running.id, 1)).await.unwrap(), "a cancelled job's late result is refused");
    assert_eq!(store.cancel("default", running.id).await.unwrap(), CancelOutcome::AlreadyFinal(JobState::Cancelled));
    assert_eq!(store.cancel("elsewhere", running.id).await.unwrap(), CancelOutcome::NotFound);
    let rec = store.get_job("default", running.id).await.unwrap().unwrap();
    assert_eq!(rec.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
    assert_eq!(store.replay("default", running.id).await.unwrap(), ReplayOutcome::Replayed);
    let again = store.claim(claim_req("b", 5)).await.unwrap().jobs;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempt, again[0].attempts_counted), (2, 1), "replay gives fresh attempts");
    assert!(store.finish(succeed(running.id, 2)).await.unwrap());
    assert_eq!(store.replay("default", running.id).await.unwrap(), ReplayOutcome::NotReplayable(JobState::Succeeded));
}

async fn heartbeats_renew_only_held_leases_and_expired_ones_are_visible(store: Arc<dyn Store>) {
    let a = job(None, 0);
    let b = job(None, 0);
    store.submit(vec![a.clone(), b.clone()]).await.unwrap();
    let short = ClaimRequest { queue: "default".into(), limit: 1, worker: "w1".into(), lease_ms: 1 };
    let mine = store.claim(short).await.unwrap().jobs.remove(0);
    let other = store.claim(claim_req("w2", 1)).await.unwrap().jobs.remove(0);
    // Wait for the 1 ms lease to run out, polling with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let expired = loop {
        let e = store.expired(10).await.unwrap();
        if !e.is_empty() || std::time::Instant::now() > deadline {
            break e;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(expired.iter().map(|j| j.id).collect::<Vec<_>>(), vec![mine.id]);
    assert_eq!((expired[0].worker.as_deref(), expired[0].user.as_str()), (Some("w1"), "test"));
    // w1 may not renew a lease it does not hold (w2's job), nor one it does not list.
    assert!(store.heartbeat("w1", 60_000, &[other.id]).await.unwrap().is_empty());
    assert!(store.heartbeat("w1", 60_000, &[]).await.unwrap().is_empty());
    assert_eq!(store.expired(10).await.unwrap().len(), 1, "an unlisted job's lease is not renewed");
    let held = store.heartbeat("w1", 60_000, &[mine.id, other.id]).await.unwrap();
    assert_eq!(held, vec![mine.id], "the heartbeat renews w1's own listed lease only");
    assert!(store.expired(10).await.unwrap().is_empty(), "renewed");
    store.cancel("default", mine.id).await.unwrap();
    assert!(store.heartbeat("w1", 60_000, &[mine.id]).await.unwrap().is_empty(), "a cancelled job is no longer held");
    assert_eq!(store.heartbeat("w2", 60_000, &[other.id]).await.unwrap(), vec![other.id]);
}

async fn workers_register_and_leave(store: Arc<dyn Store>) {
    let info = |id: &str| WorkerInfo {
        id: id.into(),
        node: "n1".into(),
        queues: vec![WorkerQueue { name: "default".into(), concurrency: 4 }],
        started_at: 0,
        last_heartbeat: 0,
        running: 0,
    };
    store.register_worker(info("w1")).await.unwrap();
    store.register_worker(info("w2")).await.unwrap();
    let three = [JobId::now_v7(), JobId::now_v7(), JobId::now_v7()];
    store.heartbeat("w1", 1000, &three).await.unwrap();
    let listed = store.workers(60_000).await.unwrap();
    assert_eq!(listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), vec!["w1", "w2"]);
    assert_eq!(listed[0].running, 3);
    assert_eq!(listed[0].queues, vec![WorkerQueue { name: "default".into(), concurrency: 4 }]);
    assert!(listed[0].last_heartbeat >= listed[0].started_at && listed[0].started_at > 0);
    store.unregister_worker("w2").await.unwrap();
    assert_eq!(store.workers(60_000).await.unwrap().len(), 1);
}

async fn pruning_deletes_old_finished_jobs_only(store: Arc<dyn Store>) {
    let jobs: Vec<NewJob> = (0..5).map(|_| job(None, 0)).collect();
    store.submit(jobs.clone()).await.unwrap();
    let claimed = store.claim(claim_req("a", 3)).await.unwrap().jobs;
    // Two succeed, one dies, two stay queued.
    store.finish(succeed(claimed[0].id, 1)).await.unwrap();
    store.finish(succeed(claimed[1].id, 1)).await.unwrap();
    let err = JobError::new(ErrorType::Validation, "no");
    let dead = FinishResult::Dead { error: err.clone(), attempt_error: err, output: None };
    store.finish(end(claimed[2].id, 1, dead)).await.unwrap();
    assert_eq!(store.prune(3_600_000, 100).await.unwrap(), 0, "nothing is an hour old yet");
    // Let the finished jobs age by a few milliseconds, then prune with a 1 ms retention,
    // one job per call to exercise batching.
    let start = time::now_micros();
    while time::now_micros() < start + 3_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.prune(1, 1).await.unwrap(), 1);
    assert_eq!(store.prune(1, 100).await.unwrap(), 1);
    assert_eq!(store.prune(1, 100).await.unwrap(), 0);
    assert!(store.get_job("default", claimed[0].id).await.unwrap().is_none());
    assert!(store.job_events("default", claimed[1].id).await.unwrap().is_none());
    assert_eq!(store.get_job("default", claimed[2].id).await.unwrap().unwrap().state, JobState::Dead, "dead jobs stay");
    let left = store.list_jobs("default", JobFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(left.items.len(), 3);
}

async fn queue_counts_and_listing(store: Arc<dyn Store>) {
    let mut jobs: Vec<NewJob> = (0..4).map(|_| job(None, 0)).collect();
    jobs.push(spec(JobSpec { delay_ms: Some(60_000), ..noop() }));
    jobs.push(spec(JobSpec { queue: Some("other".into()), ..noop() }));
    store.submit(jobs.clone()).await.unwrap();
    store.claim(claim_req("a", 1)).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    let default = stats.iter().find(|s| s.queue == "default").unwrap();
    assert_eq!((default.queued, default.running, default.scheduled, default.dead), (3, 1, 1, 0));
    assert_eq!(stats.iter().find(|s| s.queue == "other").unwrap().queued, 1);
    assert!(store.next_due("default").await.unwrap().is_some_and(|t| t > time::now_micros()));
    assert_eq!(store.next_due("other").await.unwrap(), None);
    // Newest first, in pages, with filters.
    let p1 = store.list_jobs("default", JobFilter { limit: 4, ..Default::default() }).await.unwrap();
    let page2 = JobFilter { limit: 4, cursor: p1.next_cursor, ..Default::default() };
    let p2 = store.list_jobs("default", page2).await.unwrap();
    let ids: Vec<JobId> = p1.items.iter().chain(&p2.items).map(|j| j.id).collect();
    let mut expected: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    expected.sort();
    expected.reverse();
    assert_eq!(ids, expected);
    assert!(p2.next_cursor.is_none());
    let queued =
        JobFilter { state: Some(JobState::Queued), queue: Some("default".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_jobs("default", queued).await.unwrap().items.len(), 3);
    let by_kind = JobFilter { kind: Some("sleep".into()), limit: 10, ..Default::default() };
    assert!(store.list_jobs("default", by_kind).await.unwrap().items.is_empty());
}

async fn only_finished_jobs_can_be_deleted(store: Arc<dyn Store>) {
    // Ids are time-ordered: the first made is the first claimed.
    let running = job(None, 0);
    let queued = job(None, 0);
    store.submit(vec![running.clone(), queued.clone()]).await.unwrap();
    let c = store.claim(claim_req("a", 1)).await.unwrap().jobs.remove(0);
    assert_eq!(c.id, running.id);
    assert_eq!(store.delete("default", queued.id).await.unwrap(), DeleteOutcome::NotFinished(JobState::Queued));
    assert_eq!(store.delete("default", running.id).await.unwrap(), DeleteOutcome::NotFinished(JobState::Running));
    let err = JobError::new(ErrorType::Validation, "no");
    let dead = FinishResult::Dead { error: err.clone(), attempt_error: err, output: None };
    store.finish(end(running.id, c.attempt, dead)).await.unwrap();
    assert_eq!(store.delete("elsewhere", running.id).await.unwrap(), DeleteOutcome::NotFound, "scoped by workspace");
    assert_eq!(store.delete("default", running.id).await.unwrap(), DeleteOutcome::Deleted);
    assert!(store.get_job("default", running.id).await.unwrap().is_none());
    assert!(store.job_events("default", running.id).await.unwrap().is_none());
    assert_eq!(store.delete("default", running.id).await.unwrap(), DeleteOutcome::NotFound);
    assert_eq!(store.queue_stats().await.unwrap()[0].dead, 0);
}

async fn the_result_cache_finds_recent_successes_of_the_workspace(store: Arc<dyn Store>) {
    let cached = |soft: Option<u64>| {
        let mut j = spec(JobSpec { soft_timeout_ms: soft, timeout_ms: Some(4000), ..noop() });
        j.cache_key = Some("key-1".into());
        j
    };
    let (ok, failing, running) = (cached(Some(1500)), cached(None), cached(None));
    let mut other_ws = cached(None);
    other_ws.workspace = "other".into();
    store.submit(vec![ok.clone(), failing.clone(), running.clone(), other_ws.clone()]).await.unwrap();
    let before = time::now_micros();
    assert!(store.cached_output("default", "key-1", 0).await.unwrap().is_none(), "nothing succeeded yet");
    let claimed = store.claim(claim_req("w", 4)).await.unwrap().jobs;
    let by_id = |id| claimed.iter().find(|j| j.id == id).unwrap();
    assert_eq!(by_id(ok.id).soft_timeout_ms, Some(1500), "the claim carries the soft timeout");
    assert_eq!((by_id(ok.id).cache_key.as_deref(), by_id(ok.id).workspace.as_str()), (Some("key-1"), "default"));
    assert_eq!(by_id(failing.id).soft_timeout_ms, None);
    store.finish(succeed(ok.id, 1)).await.unwrap();
    store.finish(succeed(other_ws.id, 1)).await.unwrap();
    let error = JobError::new(ErrorType::ExitStatus, "exit 1");
    let dead = FinishResult::Dead { error: error.clone(), attempt_error: error, output: Some(json!({"ok": false})) };
    store.finish(end(failing.id, 1, dead)).await.unwrap();

    let hit = store.cached_output("default", "key-1", before).await.unwrap();
    assert_eq!(hit, Some((ok.id, json!({"ok": true}))), "the success, not the failure nor the running job");
    assert!(store.cached_output("default", "key-2", 0).await.unwrap().is_none(), "another key");
    assert!(store.cached_output("nobody", "key-1", 0).await.unwrap().is_none(), "another workspace");
    let later = time::now_micros() + 1_000_000;
    assert!(store.cached_output("default", "key-1", later).await.unwrap().is_none(), "too old for the TTL");
    let rec = store.get_job("default", ok.id).await.unwrap().unwrap();
    assert_eq!(rec.soft_timeout_ms, Some(1500));
}

fn planner() -> ferry_store::Planner {
    Arc::new(|snap| ferry_core::run::plan(snap, &Limits::default(), &|_, _| Ok(())))
}

fn new_run(workflow: &str, version: Option<u32>, key: Option<&str>, input: serde_json::Value) -> ferry_store::NewRun {
    ferry_store::NewRun {
        id: JobId::now_v7(),
        workspace: "default".into(),
        user: "u".into(),
        workflow: workflow.into(),
        version,
        input,
        idempotency_key: key.map(Into::into),
        request_hash: key.map(|_| "h1".into()),
        admission: Default::default(),
        queue_on_limit: false,
        tokens_per_day: None,
        depth: 0,
    }
}

async fn runs_start_advance_and_end_with_an_ordered_log(store: Arc<dyn Store>) {
    use ferry_core::run::RunState;
    use ferry_store::CreateRunOutcome;
    let def = json!({"name": "w", "nodes": [
        {"id": "a", "kind": "noop", "input": "{{ input.x }}"},
        {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"from_a": "{{ nodes.a.output }}"}}
    ]});
    assert!(matches!(
        store.create_run(new_run("w", None, None, json!(null)), planner()).await.unwrap().0,
        CreateRunOutcome::NoWorkflow
    ));
    assert_eq!(store.put_workflow("default", "u", "w", def.clone()).await.unwrap(), 1);
    assert_eq!(store.put_workflow("default", "u", "w", def).await.unwrap(), 2);
    assert_eq!(store.workflow_versions("default", "w").await.unwrap().len(), 2);
    assert!(store.workflow_versions("other", "w").await.unwrap().is_empty(), "workspaces are separate");
    let (out, _) = store.create_run(new_run("w", Some(3), None, json!(null)), planner()).await.unwrap();
    assert_eq!(out, CreateRunOutcome::NoVersion { latest: 2 });

    let run = ferry_store::NewRun { depth: 2, ..new_run("w", Some(1), Some("k"), json!({"x": 41})) };
    let id = run.id;
    let (out, _) = store.create_run(run.clone(), planner()).await.unwrap();
    assert_eq!(out, CreateRunOutcome::Created { id, version: 1, state: RunState::Running });
    let mut again = new_run("w", Some(1), Some("k"), json!({"x": 41}));
    assert!(
        matches!(store.create_run(again.clone(), planner()).await.unwrap().0, CreateRunOutcome::Existing { id: i, .. } if i == id)
    );
    again.request_hash = Some("h2".into());
    assert!(matches!(store.create_run(again, planner()).await.unwrap().0, CreateRunOutcome::Conflict { .. }));

    // The first node's job exists, linked to the run.
    let claimed = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].run_id, claimed[0].user.as_str()), (Some(id), "u"), "the run's user");
    let done = |c: &ferry_store::ClaimedJob, out: serde_json::Value| Finish {
        id: c.id,
        attempt: c.attempt,
        queue: c.queue.clone(),
        result: FinishResult::Succeeded { output: out },
    };
    store.finish(done(&claimed[0], json!(41))).await.unwrap();
    store.advance_runs(vec![id], planner()).await.unwrap();
    let next = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!(next.len(), 1);
    let input: serde_json::Value = serde_json::from_str(&next[0].input).unwrap();
    assert_eq!(input, json!({"from_a": 41}), "the upstream output, resolved");
    store.finish(done(&next[0], json!("fin"))).await.unwrap();
    let advanced = store.advance_runs(vec![id], planner()).await.unwrap();
    assert_eq!(advanced.finished, vec![(id, RunState::Succeeded)]);

    let detail = store.get_run("default", id).await.unwrap().unwrap();
    assert_eq!(detail.run.state, RunState::Succeeded);
    assert_eq!(detail.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(detail.jobs.len(), 2);
    assert!(store.get_run("other", id).await.unwrap().is_none());
    assert_eq!(store.run_state("default", id).await.unwrap(), Some(RunState::Succeeded));
    assert_eq!(store.run_state("other", id).await.unwrap(), None);
    // The row alone, with the depth it was started at.
    let row = store.run("default", id).await.unwrap().unwrap();
    assert_eq!((row, store.run("other", id).await.unwrap()), (detail.run.clone(), None));
    assert_eq!(detail.run.depth, 2);
    let events = store.run_events("default", id, 0, 1000).await.unwrap().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        vec!["run_started", "queued", "started", "succeeded", "queued", "started", "succeeded", "run_finished"],
        "job events copied once each, in causal order"
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let tail = store.run_events("default", id, events[3].id, 1000).await.unwrap().unwrap();
    assert_eq!(tail.len(), 4);
    assert!(store.run_events("other", id, 0, 10).await.unwrap().is_none());

    // Cancel: a waiting run ends at once; an ended one says how it ended.
    let second = new_run("w", None, None, json!({"x": 1}));
    let sid = second.id;
    store.create_run(second, planner()).await.unwrap();
    let (state, _) = store.cancel_run("default", sid, planner()).await.unwrap();
    assert_eq!(state, Some(RunState::Cancelled));
    assert_eq!(store.cancel_run("default", id, planner()).await.unwrap().0, Some(RunState::Succeeded));
    assert_eq!(store.cancel_run("other", id, planner()).await.unwrap().0, None);
    let page = store
        .list_runs(
            "default",
            ferry_store::RunFilter { state: Some(RunState::Cancelled), limit: 10, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(page.items.iter().map(|r| r.id).collect::<Vec<_>>(), vec![sid]);
    assert!(store.runs_to_sweep(0, 10).await.unwrap().is_empty(), "no running runs left");

    // Retention: ended runs go with their nodes and logs; a running run keeps its jobs.
    let third = new_run("w", None, None, json!({"x": 7}));
    let tid = third.id;
    store.create_run(third, planner()).await.unwrap();
    let first = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    store.finish(done(&first[0], json!(7))).await.unwrap();
    store.advance_runs(vec![tid], planner()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    while store.prune(0, 100).await.unwrap() == 100 {}
    assert!(store.get_run("default", id).await.unwrap().is_none(), "the ended run is gone");
    assert!(store.run_events("default", id, 0, 10).await.unwrap().is_none());
    assert!(store.get_job("default", claimed[0].id).await.unwrap().is_none(), "and its finished jobs");
    let kept = store.get_run("default", tid).await.unwrap().expect("the running run stays");
    assert_eq!(kept.jobs.len(), 2, "with its finished node job, whose output it may still read");
}

/// An agent node's conversation is stored with its step's job and read back on the next
/// advance, which adds the step's tokens to the workspace's day; a run with agent nodes
/// is refused once the day's tokens are spent, at the limit and not one below.
async fn agent_nodes_keep_their_conversation_and_the_day_counts_tokens(store: Arc<dyn Store>) {
    use ferry_core::run::RunState;
    use ferry_store::CreateRunOutcome;
    let def = json!({"name": "ag", "agents": {"a": {"model": "m", "base_url": "http://llm.test/v1", "llm": {"queue": "default"}}},
                     "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "{{ input.q }}"}]});
    store.put_workflow("default", "u", "ag", def).await.unwrap();
    let run = new_run("ag", None, None, json!({"q": "hello?"}));
    let id = run.id;
    let (out, _) = store.create_run(run, planner()).await.unwrap();
    assert_eq!(out, CreateRunOutcome::Created { id, version: 1, state: RunState::Running });
    let step = store.claim(claim_req("w", 10)).await.unwrap().jobs;
    assert_eq!((step.len(), step[0].kind.as_str()), (1, "llm"));
    let input: serde_json::Value = serde_json::from_str(&step[0].input).unwrap();
    assert_eq!(input["messages"][0], json!({"role": "user", "content": "hello?"}));
    let detail = store.get_run("default", id).await.unwrap().unwrap();
    let state = detail.nodes[0].agent.clone().expect("the conversation is stored with its step");
    assert_eq!((state.steps, state.waiting_for()), (1, vec![step[0].id]));
    assert_eq!(store.tokens_today("default").await.unwrap(), 0);

    let output = json!({"content": "hi!", "tool_calls": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12}});
    let finish = Finish {
        id: step[0].id,
        attempt: step[0].attempt,
        queue: "default".into(),
        result: FinishResult::Succeeded { output },
    };
    store.finish(finish).await.unwrap();
    let advanced = store.advance_runs(vec![id], planner()).await.unwrap();
    assert_eq!(advanced.finished, vec![(id, RunState::Succeeded)]);
    assert_eq!(advanced.tokens, vec![("default".to_string(), 42)]);
    let detail = store.get_run("default", id).await.unwrap().unwrap();
    let node = &detail.nodes[0];
    assert_eq!(node.output.as_ref().unwrap()["answer"], "hi!");
    let state = node.agent.as_ref().unwrap();
    assert_eq!((state.messages.len(), state.usage.total_tokens), (2, 42));
    assert_eq!(store.tokens_today("default").await.unwrap(), 42);
    assert_eq!(store.tokens_today("other").await.unwrap(), 0, "workspaces count apart");

    let mut at_limit = new_run("ag", None, None, json!({"q": "again"}));
    at_limit.tokens_per_day = Some(42);
    let refused = store.create_run(at_limit, planner()).await.unwrap_err();
    assert!(matches!(refused, StoreError::TokenBudget { used: 42, limit: 42, .. }), "{refused:?}");
    let mut below = new_run("ag", None, None, json!({"q": "again"}));
    below.tokens_per_day = Some(43);
    assert!(matches!(store.create_run(below, planner()).await.unwrap().0, CreateRunOutcome::Created { .. }));
    // A workflow without agents is not held by the day's tokens.
    store
        .put_workflow("default", "u", "plain", json!({"name": "plain", "nodes": [{"id": "n", "kind": "noop"}]}))
        .await
        .unwrap();
    let mut plain = new_run("plain", None, None, json!(null));
    plain.tokens_per_day = Some(1);
    assert!(matches!(store.create_run(plain, planner()).await.unwrap().0, CreateRunOutcome::Created { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_are_warmed_without_writing() {
    let Some(b) = postgres().await else { return };
    let schema = b.schema.clone().unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}"))).execute(&mut conn).await.unwrap();
    ferry_store::postgres::warm(&mut conn, "ferry_wakeup_test").await.expect("the statements run");
    let prepared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements").fetch_one(&mut conn).await.unwrap();
    assert!(prepared >= 2, "the submission and the claim are prepared on the connection: {prepared}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs").fetch_one(&mut conn).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await.unwrap();
    assert_eq!((jobs, events), (0, 0), "warming writes nothing");
    // The store's own connections were warmed the same way: it works as before.
    b.store.submit(vec![job(None, 0)]).await.unwrap();
    assert_eq!(b.store.claim(claim_req("w", 5)).await.unwrap().jobs.len(), 1);
    <sqlx::PgConnection as sqlx::Connection>::close(conn).await.unwrap();
    b.cleanup().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claim_query_uses_the_ready_index() {
    let Some(b) = postgres().await else { return };
    // A table that looks like production: many finished jobs, a few ready ones.
    for _ in 0..10 {
        b.store.submit((0..500).map(|_| job(None, 0)).collect()).await.unwrap();
        let claimed = b.store.claim(claim_req("a", 500)).await.unwrap().jobs;
        b.store.finish_many(claimed.iter().map(|c| succeed(c.id, c.attempt)).collect()).await.unwrap();
    }
    b.store.submit((0..20).map(|_| job(None, 0)).collect()).await.unwrap();
    let schema = b.schema.clone().unwrap();
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path = {schema}"))).execute(&mut *conn).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&mut *conn).await.unwrap();
    let claim = include_str!("../sql/postgres/claim.sql");
    let body: Vec<&str> = claim.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
    let body = body.join("\n");
    // Over the whole queue, and from a deep queue's head (`postgres/head.rs`): an index
    // range of jobs_ready that starts at the head.
    let alone = ", set_config('synchronous_commit', 'off', true)";
    for (after, commit) in [("", ""), ("", alone), ("AND priority = $5 AND (run_at, id) > ($6, $7)", alone)] {
        let statement = body.replace("{after}", after).replace("{commit}", commit);
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {statement}")))
            .bind("default")
            .bind(10i64)
            .bind("w")
            .bind(30_000_000i64)
            .bind(0i32)
            .bind(0i64)
            .bind(JobId::nil())
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("jobs_ready"), "the claim ({after:?}) does not use jobs_ready:\n{plan}");
        if !after.is_empty() {
            assert!(plan.contains("ROW(run_at, id) >"), "the head is not in the index condition:\n{plan}");
        }
    }
    drop(conn);
    pool.close().await;
    b.cleanup().await;
}

// By area, in tests/conformance/ (each module's doc names the promises it pins).
#[path = "conformance/admission.rs"]
mod admission;
#[path = "conformance/batches.rs"]
mod batches;
#[path = "conformance/blobs.rs"]
mod blobs;
#[path = "conformance/breakers.rs"]
mod breakers;
#[path = "conformance/deep.rs"]
mod deep;
#[path = "conformance/escalations.rs"]
mod escalations;
#[path = "conformance/failures.rs"]
mod failures;
#[path = "conformance/ordering.rs"]
mod ordering;
#[path = "conformance/postgres.rs"]
mod postgres_only;
#[path = "conformance/release.rs"]
mod release;
#[path = "conformance/remote.rs"]
mod remote;
#[path = "conformance/schedules.rs"]
mod schedules;
#[path = "conformance/signals.rs"]
mod signals;
#[path = "conformance/submission.rs"]
mod submission;
#[path = "conformance/tenancy.rs"]
mod tenancy;
#[path = "conformance/tokens.rs"]
mod tokens;
