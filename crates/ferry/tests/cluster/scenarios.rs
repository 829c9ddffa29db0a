//! The cluster's promises (see the crate doc of `cluster.rs`), each a scenario over real
//! `ferry` processes on one PostgreSQL database.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_two_workers_survive_kill_dash_nine() {
    let Some(db) = database().await else { return };
    let http = client();
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let api1 = api_node(&db, &format!("{}-a1", db.schema), FAST_LEASES);
    let api2 = api_node(&db, &format!("{}-a2", db.schema), FAST_LEASES);
    let mut victim = worker(&db, &nodes[0], 20, FAST_LEASES);
    let survivor = worker(&db, &nodes[1], 20, FAST_LEASES);
    let apis = [api1.url.as_str(), api2.url.as_str()];

    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, apis[0]).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let workers = workers_by_node(&http, apis[0]).await;
    let victim_id = workers[&nodes[0]]["id"].as_str().unwrap().to_string();
    let survivor_id = workers[&nodes[1]]["id"].as_str().unwrap().to_string();

    // A job limit of exactly the 10,000 jobs: all of them fit only if no slot leaks.
    let limits = json!({"per_user": {"runs": 5, "jobs": 10_000}});
    let resp = http.put(format!("{}/v1/limits", apis[0])).json(&limits).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let spec = json!({"kind": "sleep", "input": {"ms": 5}, "max_attempts": 5});
    let acknowledged = submit(&http, &apis, spec, 10_000).await;
    assert_eq!(acknowledged.iter().collect::<HashSet<_>>().len(), 10_000, "ids are distinct");

    // Kill while work is in flight: some jobs done, some running, the victim holding some.
    poll("some jobs done and some running", async |last| {
        let q = queue_counts(&http, apis[0]).await;
        *last = q.to_string();
        assert!(open(&q) > 0, "every job finished before the kill: the test needs slower jobs ({q})");
        q["running"].as_u64().unwrap() > 0 && open(&q) < 9000
    })
    .await;
    // A worker claims and finishes in waves, so it may briefly hold nothing: kill it right
    // after the database shows it holding jobs.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let held: i64 =
            sqlx::query_scalar(db.sql("SELECT count(*) FROM {s}.jobs WHERE state = 'running' AND worker_id = $1"))
                .bind(&victim_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held a running job");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    victim.child.kill().expect("kill -9");
    victim.child.wait().unwrap();

    // Once the database has closed the victim's connections, nothing it sent can still
    // commit: the jobs it holds now are exactly the ones it lost.
    poll("the database to drop the victim's connections", async |last| {
        let n = db.backends(&nodes[0]).await;
        *last = format!("{n} connections");
        n == 0
    })
    .await;
    let orphans: Vec<uuid::Uuid> =
        sqlx::query_scalar(db.sql("SELECT id FROM {s}.jobs WHERE state = 'running' AND worker_id = $1"))
            .bind(&victim_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    if orphans.is_empty() {
        // Its last jobs finished between the check and the kill: nothing was lost.
        eprintln!("note: the killed worker held no running job when it died; no worker_lost to check");
    }

    wait_until_all_finished(&http, apis[0]).await;
    assert_all_succeeded(&http, apis[1], &acknowledged).await;

    let jobs = get_jobs(&http, &apis, &acknowledged).await;
    assert_eq!(jobs.len(), acknowledged.len());
    let mut lost_by = HashMap::<String, usize>::new();
    let mut succeeded_on = HashMap::<String, usize>::new();
    for job in &jobs {
        assert_one_success(job);
        for a in job["attempts"].as_array().unwrap() {
            let w = a["worker"].as_str().unwrap().to_string();
            assert!(w == victim_id || w == survivor_id, "attempt by an unknown worker: {job}");
            if a["outcome"] == "succeeded" {
                *succeeded_on.entry(w).or_default() += 1;
            } else {
                assert_eq!(a["outcome"], "failed", "{job}");
                assert_eq!(a["error"]["type"], "worker_lost", "the only failures are lost workers: {job}");
                *lost_by.entry(w).or_default() += 1;
            }
        }
    }
    let by_id: HashMap<&str, &Value> = jobs.iter().map(|j| (j["id"].as_str().unwrap(), j)).collect();
    for id in &orphans {
        let job = by_id[id.to_string().as_str()];
        let lost = job["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["worker"] == victim_id.as_str() && a["error"]["type"] == "worker_lost");
        assert!(lost, "a job the killed worker held has a worker_lost attempt from it: {job}");
    }
    eprintln!(
        "kill -9: {} jobs orphaned; lost attempts by worker {lost_by:?}; successes by worker {succeeded_on:?}",
        orphans.len()
    );
    assert!(lost_by.get(&victim_id).copied().unwrap_or(0) >= orphans.len());

    // Every slot came back, those of the killed worker's jobs too: 10,000 fit again.
    let again = submit(&http, &apis, json!({"kind": "noop"}), 10_000).await;
    assert_eq!(again.len(), 10_000);
    wait_until_all_finished(&http, apis[0]).await;

    // The victim no longer heartbeats: after one lease it is not listed any more.
    poll("the killed worker to drop out of /v1/workers", async |last| {
        let w = workers_by_node(&http, apis[0]).await;
        *last = format!("{:?}", w.keys());
        !w.contains_key(&nodes[0]) && w.contains_key(&nodes[1])
    })
    .await;

    stop(survivor).await;
    stop(api1).await;
    stop(api2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_the_database_cuts_their_connections() {
    let Some(db) = database().await else { return };
    let http = client();
    // One node name for both processes: one statement cuts all their connections.
    let node = db.schema.clone();
    let api = api_node(&db, &node, FAST_LEASES);
    let work = worker(&db, &node, 10, FAST_LEASES);

    let spec = json!({"kind": "sleep", "input": {"ms": 2}, "max_attempts": 5});
    let acknowledged = submit(&http, &[&api.url], spec, 2000).await;

    wait_for_running(&http, &api.url).await;
    let mut cut = 0;
    for _ in 0..3 {
        cut += db.terminate_backends(&node).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(cut > 0, "the processes' connections are named `ferry:{node}` and were cut");
    let q = queue_counts(&http, &api.url).await;
    eprintln!("cut {cut} connections; queue after the cuts: {q}");

    // Without any restart, everything acknowledged still runs to success.
    poll("every job to finish after the cuts", async |last| {
        let q = queue_counts(&http, &api.url).await;
        let stuck: Vec<(String, Option<String>)> = sqlx::query_as(db.sql(
            "SELECT id::text, worker_id FROM {s}.jobs WHERE state = 'running' \
             AND updated_at < {s}.ferry_now() - 10000000 LIMIT 5",
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default();
        *last = format!("{q}; running for over 10 s: {stuck:?}");
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;

    for p in [&api, &work] {
        let r = http.get(format!("{}/readyz", p.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{} is ready again: {}", p.url, r.text().await.unwrap_or_default());
    }
    let w = workers_by_node(&http, &api.url).await;
    assert!(w.contains_key(&node), "the worker still heartbeats: {w:?}");

    stop(work).await;
    stop(api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_only_node_and_worker_process_share_work() {
    let Some(db) = database().await else { return };
    let http = client();
    let api = api_node(&db, &format!("{}-api", db.schema), &[]);
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let w1 = worker(&db, &nodes[0], 5, &[]);
    let w2 = worker(&db, &nodes[1], 5, &[]);

    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, &api.url).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let workers = workers_by_node(&http, &api.url).await;
    assert_eq!(workers.len(), 2, "only the two worker processes are workers: {workers:?}");
    let mut ids = HashSet::new();
    for (node, p) in nodes.iter().zip([&w1, &w2]) {
        let w = &workers[node];
        assert_eq!(w["queues"], json!([{"name": "default", "concurrency": 5}]), "{w}");
        assert_eq!(w["concurrency"], 5, "{w}");
        let id = w["id"].as_str().unwrap();
        assert!(id.starts_with(&format!("{node}:{}:", p.child.id())), "worker id is node:pid:random: {id}");
        ids.insert(id.to_string());
    }

    let acknowledged = submit(&http, &[&api.url], json!({"kind": "noop", "input": {"x": 1}}), 200).await;
    wait_until_all_finished(&http, &api.url).await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;

    let jobs = get_jobs(&http, &[&api.url], &acknowledged).await;
    let mut by_worker = HashMap::<String, usize>::new();
    for job in &jobs {
        assert_one_success(job);
        assert_eq!(job["output"], json!({"x": 1}));
        for a in job["attempts"].as_array().unwrap() {
            *by_worker.entry(a["worker"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let seen: HashSet<String> = by_worker.keys().cloned().collect();
    assert_eq!(seen, ids, "both workers, and only they, ran attempts: {by_worker:?}");

    for p in [&api, &w1, &w2] {
        assert_eq!(http.get(format!("{}/readyz", p.url)).send().await.unwrap().status(), 200);
        assert_eq!(http.get(format!("{}/healthz", p.url)).send().await.unwrap().status(), 200);
    }
    stop(w1).await;
    stop(w2).await;
    stop(api).await;
}

/// A job whose result its worker could not record within a lease (the database was away)
/// must still finish: the worker gives up on it and leaves it to the reaper. The worker
/// must then let that job's lease run out. Here the reaper runs rarely, so that after the
/// outage the worker's heartbeat reaches the database before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_for_longer_than_its_lease_still_finishes_every_job() {
    let Some(db) = database().await else { return };
    let Some(proxy) = DbProxy::start(&db.url) else {
        eprintln!("skipping: cannot put a proxy in front of {}", ferry::config::redact_password(&db.url));
        return;
    };
    let http = client();
    let node = format!("{}-w", db.schema);
    let api = api_node(&db, &format!("{}-api", db.schema), FAST_LEASES);
    let env = [("FERRY_LEASE_MS", "3000"), ("FERRY_HEARTBEAT_MS", "500"), ("FERRY_REAP_MS", "10000")];
    let work = worker_via(&db, &proxy.url, &node, 20, &env);

    let spec = json!({"kind": "sleep", "input": {"ms": 300}, "max_attempts": 5});
    let acknowledged = submit(&http, &[&api.url], spec, 200).await;
    wait_for_running(&http, &api.url).await;

    // The worker loses the database for longer than a lease, while attempts finish. It
    // keeps running and says it is not ready.
    proxy.set_down(true);
    let outage = Instant::now();
    let worker_url = work.url.clone();
    poll_within(Duration::from_secs(5), "the cut-off worker to answer 503 on /readyz", async |last| {
        let r = http.get(format!("{worker_url}/readyz")).send().await.unwrap();
        *last = format!("{}", r.status());
        r.status() == 503
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(outage.elapsed())).await;
    proxy.set_down(false);

    // With a 3 s lease and a 10 s reaper, everything settles well within a minute; a job
    // still running after that is held by a lease nobody will let expire.
    poll_within(Duration::from_secs(90), "every job to finish after the outage", async |last| {
        let q = queue_counts(&http, &api.url).await;
        let stuck: Vec<(String, Option<String>, i64)> = sqlx::query_as(db.sql(
            "SELECT id::text, worker_id, ({s}.ferry_now() - updated_at) / 1000000 FROM {s}.jobs \
             WHERE state = 'running' AND updated_at < {s}.ferry_now() - 20000000 LIMIT 5",
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default();
        *last = format!("{q}; running for over 20 s (id, worker, seconds): {stuck:?}");
        assert_eq!(q["dead"], 0, "no job may die: {q}");
        open(&q) == 0
    })
    .await;
    assert_all_succeeded(&http, &api.url, &acknowledged).await;
    let r = http.get(format!("{}/readyz", work.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the worker is ready again");

    stop(work).await;
    stop(api).await;
}

/// Nodes started together on a fresh schema all start: one of them creates the schema and
/// applies the migrations, the others wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_fresh_schema_all_start() {
    let Some(db) = database().await else { return };
    let http = client();
    let launching: Vec<Launching> = (0..4)
        .map(|i| launch(&db, &db.url, &["server", "--workers", "0"], &format!("{}-n{i}", db.schema), &[]))
        .collect();
    let nodes: Vec<Proc> = launching.into_iter().map(Launching::ready).collect();
    for n in &nodes {
        assert_eq!(http.get(format!("{}/readyz", n.url)).send().await.unwrap().status(), 200);
    }
    for n in nodes {
        stop(n).await;
    }
}

/// A running job cancelled through an API node is stopped on the worker process at once,
/// by notification, not at the worker's next heartbeat: here heartbeats are a minute
/// apart, so a worker that waited for one would still be running the attempt when the
/// (generous, hang-only) deadline below runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_worker_process_at_once() {
    let Some(db) = database().await else { return };
    let http = client();
    let slow = [("FERRY_HEARTBEAT_MS", "60000"), ("FERRY_LEASE_MS", "180000")];
    let api = api_node(&db, &format!("{}-api", db.schema), &slow);
    let work = worker(&db, &format!("{}-w", db.schema), 2, &slow);
    let id = submit(&http, &[&api.url], json!({"kind": "sleep", "input": {"ms": 600_000}, "timeout_ms": 900_000}), 1)
        .await
        .remove(0);
    let running_on_worker = async || {
        let text = http.get(format!("{}/metrics", work.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ferry_worker_attempts_running "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    poll("the attempt to run on the worker process", async |last| {
        let n = running_on_worker().await;
        *last = format!("{n}");
        n == 1.0
    })
    .await;
    let resp = http.post(format!("{}/v1/jobs/{id}/cancel", api.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    poll_within(Duration::from_secs(30), "the worker to stop the cancelled attempt", async |last| {
        let n = running_on_worker().await;
        *last = format!("{n}");
        n == 0.0
    })
    .await;
    let job = get_json(&http, &format!("{}/v1/jobs/{id}", api.url)).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["attempts"][0]["outcome"], "cancelled", "{job}");
    stop(work).await;
    stop(api).await;
}

/// A queue's rate is one token bucket in the database, shared by every worker process:
/// two workers together start no more than the rate, where a bucket of their own each
/// would start twice as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_rate_holds_across_worker_processes() {
    let Some(db) = database().await else { return };
    let http = client();
    let api = api_node(&db, &format!("{}-api", db.schema), &[]);
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let w1 = worker(&db, &nodes[0], 20, &[]);
    let w2 = worker(&db, &nodes[1], 20, &[]);
    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, &api.url).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let resp =
        http.put(format!("{}/v1/queues/default", api.url)).json(&json!({"rate": 10})).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    // Worker processes re-read rates within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let acknowledged = submit(&http, &[&api.url], json!({"kind": "noop"}), 40).await;
    wait_until_all_finished(&http, &api.url).await;
    let jobs = get_jobs(&http, &[&api.url], &acknowledged).await;
    let mut starts = Vec::new();
    let mut workers = HashSet::new();
    for job in &jobs {
        assert_one_success(job);
        let attempt = &job["attempts"][0];
        workers.insert(attempt["worker"].as_str().unwrap().to_string());
        let at = chrono::DateTime::parse_from_rfc3339(attempt["started_at"].as_str().unwrap()).unwrap();
        starts.push(at.timestamp_micros());
    }
    starts.sort();
    assert_eq!(workers.len(), 2, "both workers took part: {workers:?}");
    // 10 per second with a burst of 10: at most 20 in any second (slack: 1); a bucket per
    // process would allow 40. And 40 starts take at least 3 s (slack: 0.5 s).
    let most = starts
        .iter()
        .enumerate()
        .map(|(i, t)| starts[i..].iter().take_while(|u| **u < t + 1_000_000).count())
        .max()
        .unwrap_or(0);
    assert!(most <= 21, "{most} starts within one second at a rate of 10/s over two workers");
    let span = (starts[starts.len() - 1] - starts[0]) as f64 / 1e6;
    assert!(span >= 2.5, "40 starts at 10/s took only {span} s");
    stop(w1).await;
    stop(w2).await;
    stop(api).await;
}

/// A target for `http` jobs on loopback that fails (503) or answers 200 on command, and
/// counts the requests it got.
struct Target {
    url: String,
    failing: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Target {
    async fn start() -> Target {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let failing = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let (f, h) = (failing.clone(), hits.clone());
        let app = axum::Router::new().fallback(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let status = if f.load(Ordering::SeqCst) { 503 } else { 200 };
            async move { axum::http::StatusCode::from_u16(status).unwrap() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Target { url, failing, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A circuit breaker is one row of the database, not one per process: jobs submitted
/// through two API nodes and run by two worker processes trip it once, every process
/// then holds its jobs back without a request or a counted attempt, and an operator's
/// close through the other API node lets them all go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_breaker_holds_across_api_nodes_and_worker_processes() {
    let Some(db) = database().await else { return };
    let http = client();
    let target = Target::start().await;
    let env = [("FERRY_BREAKERS__DEFAULTS__FAILURES", "3"), ("FERRY_BREAKERS__DEFAULTS__COOL_DOWN_MS", "600000")];
    let apis = [api_node(&db, &format!("{}-a1", db.schema), &env), api_node(&db, &format!("{}-a2", db.schema), &env)];
    let nodes = [format!("{}-w1", db.schema), format!("{}-w2", db.schema)];
    let w1 = worker(&db, &nodes[0], 5, &env);
    let w2 = worker(&db, &nodes[1], 5, &env);
    poll("both workers to register", async |last| {
        let w = workers_by_node(&http, &apis[0].url).await;
        *last = format!("{w:?}");
        nodes.iter().all(|n| w.contains_key(n))
    })
    .await;
    let quick = json!({"initial_ms": 10, "max_ms": 10, "multiplier": 1.0, "jitter": "none"});
    let spec = json!({"kind": "http", "input": {"url": target.url}, "max_attempts": 20, "backoff": quick});
    let urls = [apis[0].url.as_str(), apis[1].url.as_str()];
    let ids = submit(&http, &urls, spec, 20).await;

    // Every job ends up held back, on whichever worker claimed it.
    poll("every job to wait for the breaker", async |last| {
        let waiting = ids_in_state(&http, &apis[1].url, "scheduled").await;
        *last = format!("{} scheduled", waiting.len());
        waiting.len() == ids.len()
    })
    .await;
    let during = target.hits();
    let listed = get_json(&http, &format!("{}/v1/breakers", apis[1].url)).await;
    let breakers = listed["breakers"].as_array().expect("a list");
    assert_eq!(breakers.len(), 1, "one breaker for the target: {listed}");
    let b = &breakers[0];
    assert_eq!((&b["state"], &b["trips"]), (&json!("open"), &json!(1)), "tripped once: {b}");
    let jobs = get_jobs(&http, &urls, &ids).await;
    let used: u64 = jobs.iter().map(|j| j["attempts_used"].as_u64().unwrap()).sum();
    assert_eq!(used as usize, during, "each counted attempt is one request; the held ones made none");
    // The trip's 3, the rest of the 10 slots in flight then, and at most one more round
    // of a process that had not seen a failure yet (a quiet breaker is read every 250 ms).
    assert!(during <= 3 + 10 + 10, "{during} requests while 20 jobs had 20 attempts each");
    let workers: HashSet<&str> =
        jobs.iter().flat_map(|j| j["attempts"].as_array().unwrap()).filter_map(|a| a["worker"].as_str()).collect();
    assert_eq!(workers.len(), 2, "both worker processes met the breaker: {workers:?}");

    target.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let key = b["key"].as_str().unwrap().replace('/', "%2F");
    let resp =
        http.put(format!("{}/v1/breakers/{key}", apis[1].url)).json(&json!({"state": "closed"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_until_all_finished(&http, &apis[0].url).await;
    assert_all_succeeded(&http, &apis[0].url, &ids).await;
    assert_eq!(target.hits() - during, ids.len(), "after the close, one request per job");
    for p in [w1, w2] {
        stop(p).await;
    }
    for p in apis {
        stop(p).await;
    }
}

/// An agent run on an API node and a worker process: `kill -9` of the worker while the
/// agent's second step waits on the provider; another worker takes the step up after the
/// lease and the run ends as it would have, the tool call that had succeeded not made
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_resumes_on_another_worker_after_kill_dash_nine() {
    let Some(db) = database().await else { return };
    let http = client();
    let target = Target::start().await;
    target.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let llm = ferry::stand_in::StandInLlm::start(json!({"conversations": [{"match": "survive crashes", "turns": [
        {"tool_calls": [{"name": "lookup", "arguments": {}}]},
        [{"content": "never sent", "delay_ms": 600000}, {"content": "A-7 has shipped."}],
    ]}]}));
    let api = api_node(&db, &format!("{}-a", db.schema), FAST_LEASES);
    let queues = ["worker", "--queue", "default,llm", "--concurrency", "4"];
    let mut victim = spawn(&db, &db.url, &queues, &format!("{}-w1", db.schema), FAST_LEASES);
    let def = json!({"name": "survivor", "agents": {"desk": {
        "model": "stand-in", "base_url": llm.base_url(), "instructions": "You survive crashes.",
        "tools": [{"name": "lookup", "kind": "http", "input": {"url": target.url}}]}},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "desk", "input": "where is A-7?"}]});
    let resp = http.post(format!("{}/v1/workflows", api.url)).json(&def).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let started = get_json_after_post(&http, &format!("{}/v1/runs", api.url), json!({"workflow": "survivor"})).await;
    let id = started["id"].as_str().unwrap().to_string();
    poll("the second step under way", async |last| {
        *last = format!("{} calls", llm.calls());
        llm.calls() == 2
    })
    .await;
    assert_eq!(target.hits(), 1);
    victim.child.kill().expect("kill -9");
    victim.child.wait().unwrap();
    let survivor = spawn(&db, &db.url, &queues, &format!("{}-w2", db.schema), FAST_LEASES);
    let mut run = Value::Null;
    poll("the run's end on the other worker", async |last| {
        run = get_json(&http, &format!("{}/v1/runs/{id}", api.url)).await;
        *last = run["state"].to_string();
        run["state"] != "running"
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["nodes"][0]["output"]["answer"], "A-7 has shipped.");
    assert_eq!(target.hits(), 1, "the tool call was not made again");
    assert_eq!(llm.calls(), 3, "the first step once, the second twice (once before the kill)");
    stop(survivor).await;
    stop(api).await;
}

async fn get_json_after_post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let resp = http.post(url).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}
