//! Promise: a schedule starts exactly one job or run per tick, across any number of nodes
//! (keyed `schedule:<id>:<tick>`), as its overlap policy says (`skip`, `queue`, `allow`)
//! and, after a downtime or a clock jump, as its catch-up policy says (`none`, `latest`,
//! `all` up to N); a paused schedule starts nothing until resumed, a deleted one nothing
//! again; a start the workspace's limits refuse is counted and the schedule moves on; bad
//! input is refused naming its field, and another workspace's schedule is not found.
//!
//! Nothing here sleeps: tests poll the API until a condition holds, or wait for the
//! scheduler's passes.

use crate::harness::{Backend, TestServer, assert_error, both, poll, ts};
use ferry_core::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    skip_starts_nothing_while_the_previous_job_runs,
    queue_waits_for_the_previous_job_then_starts,
    allow_starts_on_every_tick_regardless,
    each_catch_up_policy_after_a_downtime,
    pause_resume_and_delete,
    a_schedule_starts_workflow_runs,
    a_start_over_the_limits_is_refused_and_counted,
    bad_input_is_refused_naming_its_field,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_start_exactly_one_job_per_tick_on_postgres() {
    if crate::harness::postgres_available().await {
        two_nodes_start_exactly_one_job_per_tick(Backend::Postgres).await;
    }
}

/// Creates a schedule; returns its view.
async fn create(srv: &TestServer, spec: Value) -> Value {
    let (status, body) = srv.post("/v1/schedules", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn schedule(srv: &TestServer, id: &str) -> Value {
    let (status, body) = srv.get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the schedule until `done` holds (a failure shows the schedule as last read).
async fn wait(srv: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let s = schedule(srv, id).await;
        if done(&s) {
            return s;
        }
        assert!(started.elapsed() < crate::harness::DEADLINE, "gave up waiting for {what}; the schedule: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The jobs the schedule `name` started, oldest first.
async fn jobs_of(srv: &TestServer, name: &str) -> Vec<Value> {
    let mut jobs: Vec<Value> =
        srv.all_jobs().await.into_iter().filter(|j| j["labels"]["schedule"] == json!(name)).collect();
    jobs.sort_by_key(|j| ts(&j["created_at"]));
    jobs
}

/// The tick (µs) of a job's idempotency key `schedule:<id>:<tick>`.
fn tick(job: &Value) -> i64 {
    let key = job["idempotency_key"].as_str().unwrap_or_else(|| panic!("no key: {job}"));
    key.rsplit(':').next().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("bad key {key}"))
}

fn micros(v: &Value) -> i64 {
    ts(v).timestamp_micros()
}

async fn delete(srv: &TestServer, path: &str) -> StatusCode {
    srv.client().delete(format!("{}{path}", srv.url())).send().await.expect("an answer").status()
}

/// Waits until the scheduler finished `n` more passes than now: every pass after the
/// first began after this call.
async fn passes(srv: &TestServer, n: u64) {
    let mut rx = srv.scheduler_passes();
    let from = *rx.borrow_and_update();
    poll("scheduler passes", async || {
        tokio::time::timeout(std::time::Duration::from_millis(50), rx.changed()).await.ok();
        (*rx.borrow() >= from + n).then_some(())
    })
    .await;
}

async fn skip_starts_nothing_while_the_previous_job_runs(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = create(
        &srv,
        json!({"name": "slow", "every_ms": 1000, "overlap": "skip",
                                "job": {"kind": "sleep", "input": {"ms": 2500}}}),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    wait(&srv, id, "two starts and skipped ticks", |s| {
        s["started"].as_u64() >= Some(2) && s["skipped"].as_u64() >= Some(2)
    })
    .await;
    let jobs = jobs_of(&srv, "slow").await;
    // Each job started only once the one before had ended.
    for pair in jobs.windows(2) {
        let ended = pair[0]["finished_at"].as_str().map(|_| micros(&pair[0]["finished_at"]));
        assert!(ended.is_some_and(|e| micros(&pair[1]["created_at"]) >= e), "overlap: {pair:?}");
    }
    srv.stop().await;
}

async fn queue_waits_for_the_previous_job_then_starts(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = create(
        &srv,
        json!({"name": "queued", "every_ms": 1000, "overlap": "queue",
                                "job": {"kind": "sleep", "input": {"ms": 2500}}}),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    wait(&srv, id, "a tick waiting", |s| s["waiting_tick"].is_string()).await;
    wait(&srv, id, "two starts", |s| s["started"].as_u64() >= Some(2)).await;
    let jobs = jobs_of(&srv, "queued").await;
    let (first, second) = (&jobs[0], &jobs[1]);
    let first_end = micros(&first["finished_at"]);
    // The second job's tick fell while the first ran; it started once the first ended.
    assert!(tick(second) < first_end, "{second} did not wait");
    assert!(micros(&second["created_at"]) >= first_end, "{second} overlapped {first}");
    srv.stop().await;
}

async fn allow_starts_on_every_tick_regardless(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = create(
        &srv,
        json!({"name": "many", "every_ms": 1000, "overlap": "allow",
                                "job": {"kind": "sleep", "input": {"ms": 4000}}}),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    poll("two jobs of the schedule at once", async || {
        let live = jobs_of(&srv, "many").await.iter().filter(|j| j["finished_at"].is_null()).count();
        (live >= 2).then_some(())
    })
    .await;
    assert_eq!(schedule(&srv, id).await["skipped"], json!(0));
    srv.stop().await;
}

async fn each_catch_up_policy_after_a_downtime(backend: Backend) {
    let srv = TestServer::start(backend).await;
    // Hourly, at a minute half an hour from now: the latest tick before now is about
    // half an hour old, far past the minute `none` allows.
    let minute = (chrono::Utc::now().timestamp() / 60 + 30) % 60;
    let policies = [
        ("none", json!({"policy": "none"}), 0, 3),
        ("latest", json!({"policy": "latest"}), 1, 2),
        ("all2", json!({"policy": "all", "max": 2}), 2, 1),
        ("all", json!({"policy": "all"}), 3, 0),
    ];
    let mut ids = Vec::new();
    for (name, catch_up, ..) in &policies {
        let s = create(
            &srv,
            json!({"name": name, "cron": format!("{minute} * * * *"), "overlap": "allow",
                                    "catch_up": catch_up, "job": {"kind": "noop"}}),
        )
        .await;
        let id: uuid::Uuid = s["id"].as_str().unwrap().parse().unwrap();
        // Paused for the downtime: nothing fires meanwhile.
        srv.store.pause_schedule("default", id, true, None).await.expect("paused");
        ids.push(id);
    }
    let srv = srv.restart_with(|_| {}).await;
    // Back three hours later, as it were (a downtime, or the clock jumping ahead): the
    // schedules were due three hours ago, so three of their ticks fell meanwhile.
    let three_hours_ago = ferry_core::time::now_micros() - 3 * 3600 * 1_000_000;
    for id in &ids {
        srv.store.pause_schedule("default", *id, false, Some(three_hours_ago)).await.expect("resumed");
    }
    for ((name, _, started, missed), id) in policies.iter().zip(&ids) {
        let s = wait(&srv, &id.to_string(), "the catch-up", |s| ts(&s["next_fire_at"]) > chrono::Utc::now()).await;
        assert_eq!((s["started"].as_u64(), s["missed"].as_u64()), (Some(*started), Some(*missed)), "{name}: {s}");
        let jobs = jobs_of(&srv, name).await;
        assert_eq!(jobs.len() as u64, *started, "{name}");
        // The latest ticks, one job each.
        let mut ticks: Vec<i64> = jobs.iter().map(tick).collect();
        ticks.dedup();
        assert_eq!(ticks.len(), jobs.len(), "{name}");
    }
    srv.stop().await;
}

async fn pause_resume_and_delete(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let s = create(&srv, json!({"name": "tick", "every_ms": 1000, "job": {"kind": "noop"}})).await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["next_fire_times"].as_array().map(Vec::len), Some(5), "{s}");
    wait(&srv, &id, "a start", |s| s["started"].as_u64() >= Some(1)).await;
    let (status, paused) = srv.post(&format!("/v1/schedules/{id}/pause"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!((paused["paused"].clone(), paused["next_fire_times"].clone()), (json!(true), json!([])));
    // Two passes that began after the pause: nothing more starts.
    passes(&srv, 2).await;
    let before = schedule(&srv, &id).await["started"].as_u64().unwrap();
    passes(&srv, 2).await;
    let s = schedule(&srv, &id).await;
    assert_eq!(s["started"].as_u64(), Some(before), "{s}");
    assert_eq!(jobs_of(&srv, "tick").await.len() as u64, before);
    let (status, resumed) = srv.post(&format!("/v1/schedules/{id}/resume"), json!({})).await;
    assert_eq!((status, resumed["paused"].clone()), (StatusCode::OK, json!(false)), "{resumed}");
    wait(&srv, &id, "a start after the resume", |s| s["started"].as_u64() > Some(before)).await;
    let (_, list) = srv.get("/v1/schedules").await;
    assert_eq!(list["schedules"][0]["name"], json!("tick"), "{list}");
    assert!(list["schedules"][0]["next_fire_at"].is_string(), "{list}");
    assert_eq!(delete(&srv, &format!("/v1/schedules/{id}")).await, StatusCode::NO_CONTENT);
    assert_eq!(srv.get(&format!("/v1/schedules/{id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(delete(&srv, &format!("/v1/schedules/{id}")).await, StatusCode::NOT_FOUND);
    // Deleted: nothing more starts, and what it started stays.
    let started = jobs_of(&srv, "tick").await.len();
    passes(&srv, 2).await;
    assert_eq!(jobs_of(&srv, "tick").await.len(), started);
    srv.stop().await;
}

async fn a_schedule_starts_workflow_runs(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = srv.post("/v1/workflows", json!({"name": "wf", "nodes": [{"id": "n", "kind": "noop"}]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let s = create(&srv, json!({"name": "runs", "cron": "* * * * * *", "run": {"workflow": "wf", "input": {"a": 1}}}))
        .await;
    let id = s["id"].as_str().unwrap();
    let s = wait(&srv, id, "a run started", |s| s["started"].as_u64() >= Some(1)).await;
    assert_eq!(s["last_start"]["kind"], json!("run"), "{s}");
    let run = s["last_start"]["id"].as_str().unwrap();
    let (status, r) = srv.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert!(r["idempotency_key"].as_str().is_some_and(|k| k.starts_with(&format!("schedule:{id}:"))), "{r}");
    srv.stop().await;
}

async fn a_start_over_the_limits_is_refused_and_counted(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let (status, body) = srv.put("/v1/limits", json!({"per_workspace": {"jobs": 1}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    srv.submit(json!({"kind": "sleep", "input": {"ms": 60_000}})).await;
    let s = create(&srv, json!({"name": "full", "every_ms": 1000, "job": {"kind": "noop"}})).await;
    let id = s["id"].as_str().unwrap();
    let s = wait(&srv, id, "a refusal", |s| s["refused"].as_u64() >= Some(2)).await;
    assert!(s["last_error"].as_str().is_some_and(|e| e.contains("limit")), "{s}");
    assert_eq!(s["started"], json!(0), "{s}");
    assert!(ts(&s["next_fire_at"]) > ts(&s["last_tick"]), "it moved on: {s}");
    srv.stop().await;
}

async fn bad_input_is_refused_naming_its_field(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let job = json!({"kind": "noop"});
    let bad = [
        (json!({"name": "a", "cron": "* * * *", "job": job}), "cron"),
        (json!({"name": "a", "cron": "99 * * * *", "job": job}), "cron"),
        (json!({"name": "a", "every_ms": 999, "job": job}), "every_ms"),
        (json!({"name": "a", "cron": "* * * * *", "timezone": "Nowhere/Else", "job": job}), "timezone"),
        (json!({"name": "a", "every_ms": 1000}), "job"),
        (json!({"name": "a", "every_ms": 1000, "job": job, "run": {"workflow": "w"}}), "run"),
        (json!({"name": "a", "every_ms": 1000, "job": {"kind": "nope"}}), "job.kind"),
        (json!({"name": "a", "every_ms": 1000, "job": {"kind": "noop", "queue": "nope"}}), "job.queue"),
        (json!({"name": "a", "every_ms": 1000, "run": {"workflow": "missing"}}), "run.workflow"),
        (json!({"name": "a", "every_ms": 1000, "job": job, "catch_up": {"policy": "all", "max": 101}}), "catch_up.max"),
        (json!({"name": "a b", "every_ms": 1000, "job": job}), "name"),
    ];
    for (spec, field) in bad {
        let got = srv.post("/v1/schedules", spec.clone()).await;
        assert_eq!(got.1["error"]["field"], json!(field), "{spec}: {}", got.1);
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{spec}: {}", got.1);
    }
    // At the edges: the shortest interval and the largest catch-up are fine.
    let ok = create(
        &srv,
        json!({"name": "a", "every_ms": 1000, "job": job, "paused": true,
                                 "catch_up": {"policy": "all", "max": 100}}),
    )
    .await;
    let dup = srv.post("/v1/schedules", json!({"name": "a", "every_ms": 5000, "job": job})).await;
    assert_error(&dup, StatusCode::CONFLICT, "name_taken", Some("name"));
    let unknown = uuid::Uuid::now_v7();
    assert_error(&srv.get(&format!("/v1/schedules/{unknown}")).await, StatusCode::NOT_FOUND, "not_found", None);
    assert_error(
        &srv.post(&format!("/v1/schedules/{unknown}/pause"), json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(&srv.get("/v1/schedules/nope").await, StatusCode::BAD_REQUEST, "invalid_field", Some("id"));
    // Another workspace sees none of it.
    let (_, other) = srv.token("other", "bob", Role::Admin).await;
    let id = ok["id"].as_str().unwrap();
    let got = srv.call_as(&other, Method::GET, &format!("/v1/schedules/{id}"), None).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);
    let got = srv.call_as(&other, Method::GET, "/v1/schedules", None).await;
    assert_eq!(got.1["schedules"], json!([]), "{}", got.1);
    srv.stop().await;
}

async fn two_nodes_start_exactly_one_job_per_tick(backend: Backend) {
    let a = TestServer::start(backend).await;
    let b = a.peer(|_| {}).await;
    // Both nodes race for every tick: a seconds cron, on two schedulers over one schema.
    let s =
        create(&a, json!({"name": "race", "cron": "* * * * * *", "overlap": "allow", "job": {"kind": "noop"}})).await;
    let id = s["id"].as_str().unwrap();
    // Node b has seen it (its passes read the schema); then enough ticks for a race.
    passes(&b, 2).await;
    wait(&a, id, "eight starts", |s| s["started"].as_u64() >= Some(8)).await;
    let (status, _) = a.post(&format!("/v1/schedules/{id}/pause"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    passes(&a, 2).await;
    passes(&b, 2).await;
    let s = schedule(&a, id).await;
    let jobs = jobs_of(&a, "race").await;
    let mut ticks: Vec<i64> = jobs.iter().map(tick).collect();
    ticks.sort();
    let all = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), all, "a tick started twice: {jobs:?}");
    assert_eq!(s["started"].as_u64(), Some(all as u64), "{s}");
    // Each job is a tick of its own, a second of the cron.
    assert!(ticks.windows(2).all(|w| w[1] - w[0] >= 1_000_000), "{ticks:?}");
    b.stop().await;
    a.stop().await;
}
