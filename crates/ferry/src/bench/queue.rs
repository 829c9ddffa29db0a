//! `ferry bench queue` (and `ferry bench` alone): end-to-end throughput and pickup
//! latency, beside the store's raw limit.
//!
//! It starts a server in this process on a temporary store (a temporary data directory
//! for SQLite; a temporary schema, dropped afterwards, with `--database postgres://…`) and
//! drives it over real HTTP on loopback like any client:
//!
//! 1. **Throughput**: `--jobs` no-op jobs submitted through `POST /v1/jobs/batch` in
//!    batches of `--batch` by `--clients` concurrent clients; the clock stops when the
//!    queue reports nothing left unfinished.
//! 2. **Pickup latency when idle**: `--samples` jobs submitted one at a time, each after
//!    the previous one finished; the latency is the job's first attempt start (stamped by
//!    the store) minus the client's clock just before the request.
//! 3. **Worker processes** (PostgreSQL only): the same throughput run against an API-only
//!    server with 1, 2 and 4 `ferry worker` processes (`--processes`), each with
//!    `--concurrency` slots, then the idle pickup across processes (submitted to the API
//!    node, started by a worker process).
//! 4. **Raw limit**: the same statements without the engine: on SQLite the writer's own
//!    statements run directly on a fresh database
//!    ([`ferry_store::sqlite::bench::raw_baseline`]); on PostgreSQL the store's batch calls
//!    (insert, claim, finish) made in a loop, without HTTP, JSON, dispatchers or tasks.

use super::stats::percentile;
use super::target::{Target, TargetArgs};
use crate::app;
use crate::config::Config;
use anyhow::{Context, bail};
use clap::Args;
use ferry_store::sqlite::Durability;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `ferry bench queue`'s flags.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// No-op jobs in each throughput run
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per batch request
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent submitting clients
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Jobs in the idle pickup-latency run
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// `process` or `full` (SQLite)
    #[arg(long, default_value = "process")]
    pub durability: String,
    /// Worker-process counts to measure on PostgreSQL, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub processes: Vec<usize>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// Skip the raw store measurement
    #[arg(long)]
    pub skip_raw: bool,
    /// Admission control on: a standalone-job limit of this many per user and per
    /// workspace (high enough never to refuse), so every submission is counted and checked
    #[arg(long)]
    pub job_limit: Option<u64>,
}

/// Unfinished and dead jobs over every queue.
async fn outstanding(http: &reqwest::Client, base: &str) -> anyhow::Result<(u64, u64)> {
    // Counts as any client gets them: fresh once few jobs are left, so the end of a run is
    // seen at most a costly count's reuse late (`ferry_server::counts`), and polling every
    // few milliseconds does not take the server's time from the run as fresh counts would.
    let q: Value = http.get(format!("{base}/v1/queues")).send().await?.json().await?;
    let mut open = 0;
    let mut dead = 0;
    for queue in q["queues"].as_array().context("bad /v1/queues answer")? {
        for k in ["depth", "running", "scheduled", "retrying"] {
            open += queue[k].as_u64().unwrap_or(0);
        }
        dead += queue["dead"].as_u64().unwrap_or(0);
    }
    Ok((open, dead))
}

/// The store's transaction and request counters, read from `/metrics`.
async fn group_commit_counters(http: &reqwest::Client, base: &str) -> anyhow::Result<(f64, f64)> {
    let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
    let read = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0)
    };
    Ok((read("ferry_store_transactions_total"), read("ferry_store_requests_total")))
}

/// One throughput run: (jobs/s, total time, time to submit).
async fn throughput(http: &reqwest::Client, base: &str, args: &QueueArgs) -> anyhow::Result<(f64, Duration, Duration)> {
    let per_client = args.jobs.div_ceil(args.clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let http = http.clone();
        let base = base.to_string();
        let mine = per_client.min(args.jobs.saturating_sub(c * per_client));
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut left = mine;
            while left > 0 {
                let n = batch.min(left);
                let body = json!({ "jobs": vec![json!({"kind": "noop"}); n] });
                let resp = http.post(format!("{base}/v1/jobs/batch")).json(&body).send().await?;
                if !resp.status().is_success() {
                    bail!("batch refused: {} {}", resp.status(), resp.text().await.unwrap_or_default());
                }
                left -= n;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submitted_in = started.elapsed();
    loop {
        let (open, dead) = outstanding(http, base).await?;
        if dead > 0 {
            bail!("{dead} no-op jobs died during the benchmark");
        }
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    Ok((args.jobs as f64 / elapsed.as_secs_f64(), elapsed, submitted_in))
}

/// Submit-to-start of jobs submitted one at a time on an idle server, in ms, sorted: from
/// the client's clock just before the request to the first attempt's `started_at`, which
/// the store stamps from the same machine's clock. (From the job's `created_at` instead,
/// a job leased by its own submission, through a parked claim, would show 0.)
async fn pickup(http: &reqwest::Client, base: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut pickup_ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        let sent = chrono::Utc::now();
        let accepted: Value =
            http.post(format!("{base}/v1/jobs")).json(&json!({"kind": "noop"})).send().await?.json().await?;
        let id = accepted["id"].as_str().context("no id")?.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
            if job["state"] == "succeeded" {
                let start: chrono::DateTime<chrono::Utc> =
                    serde_json::from_value(job["attempts"][0]["started_at"].clone())?;
                pickup_ms.push((start - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} did not finish within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    pickup_ms.sort_by(f64::total_cmp);
    Ok(pickup_ms)
}

/// Starts `ferry worker` processes on the benchmark's schema.
fn spawn_workers(n: usize, url: &str, schema: &str, concurrency: usize) -> anyhow::Result<Vec<Child>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..n {
        let mut child = Command::new(&exe)
            .args(["worker", "--database", url, "--queue", "default", "--listen", "127.0.0.1:0"])
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .env("FERRY_DATABASE_SCHEMA", schema)
            .env("FERRY_NODE", format!("bench-{i}"))
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a worker process")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        if !line.contains("http://") {
            bail!("the worker process did not start: {line:?}");
        }
        children.push(child);
    }
    Ok(children)
}

/// The raw limit of PostgreSQL for the engine's statements: the store's batch calls in a
/// loop, without the engine around them.
async fn raw_postgres(cfg: &Config, jobs: usize) -> anyhow::Result<f64> {
    use ferry_core::{JobSpec, Limits};
    use ferry_store::{ClaimRequest, Finish, FinishResult};
    let store = app::open_store(cfg).await?;
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let n = 1000.min(jobs - done);
        let now = ferry_core::time::now_micros();
        let batch = (0..n)
            .map(|_| JobSpec { kind: "noop".into(), queue: Some("raw".into()), ..Default::default() })
            .map(|s| s.validate("default", "bench", now, &Limits::default()))
            .collect::<Result<Vec<_>, _>>()?;
        store.submit(batch).await?;
        let claimed =
            store.claim(ClaimRequest { queue: "raw".into(), limit: n, worker: "raw".into(), lease_ms: 30_000 }).await?;
        let fins = claimed
            .jobs
            .into_iter()
            .map(|c| Finish {
                id: c.id,
                attempt: c.attempt,
                queue: c.queue,
                result: FinishResult::Succeeded { output: Value::Null },
            })
            .collect();
        store.finish_many(fins).await?;
        done += n;
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

/// Runs the benchmark and prints the report.
pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let durability = match args.durability.as_str() {
        "process" => Durability::Process,
        "full" => Durability::Full,
        other => bail!("--durability must be `process` or `full`, not `{other}`"),
    };
    if args.batch == 0 || args.batch > 1000 || args.clients == 0 || args.jobs == 0 {
        bail!("--jobs and --clients must be positive and --batch between 1 and 1000");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut target = Target::new(&args.target)?;
    target.cfg.durability = durability;
    if target.schema.is_some() {
        target.cfg.database_max_connections = 32;
    }
    if let Some(n) = args.job_limit {
        target.cfg.default_limits.per_user.jobs = Some(n);
        target.cfg.default_limits.per_workspace.jobs = Some(n);
    }
    let result = measure(&args, &target).await;
    target.remove().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&args, &report);
    }
    Ok(())
}

async fn measure(args: &QueueArgs, target: &Target) -> anyhow::Result<Value> {
    let cfg = &target.cfg;
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.clients).build()?;
    let server = app::start(cfg).await?;
    let base = server.url();
    let (tx_before, req_before) = group_commit_counters(&http, &base).await?;
    let (rate, elapsed, submitted_in) = throughput(&http, &base, args).await?;
    let (tx_after, req_after) = group_commit_counters(&http, &base).await?;
    let transactions = tx_after - tx_before;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pickup_ms = pickup(&http, &base, args.samples).await?;
    server.stop().await?;

    let mut processes = Vec::new();
    if let (Some(url), Some(schema)) = (&cfg.database_url, &target.schema) {
        for &n in &args.processes {
            let api = app::start(&Config { workers: 0, ..cfg.clone() }).await?;
            let mut workers = spawn_workers(n, url, schema, args.target.concurrency)?;
            let run = throughput(&http, &api.url(), args).await;
            // Pickup across processes: submitted to the API node, started by a worker.
            let picked = match run {
                Ok(_) => pickup(&http, &api.url(), args.samples).await,
                Err(_) => Ok(Vec::new()),
            };
            for w in &mut workers {
                let _ = w.kill();
                let _ = w.wait();
            }
            api.stop().await?;
            let (r, e, _) = run?;
            let picked = picked?;
            processes.push(json!({
                "processes": n,
                "throughput_jobs_per_s": r.round(),
                "total_seconds": e.as_secs_f64(),
                "pickup_p50_ms": percentile(&picked, 0.50),
                "pickup_p99_ms": percentile(&picked, 0.99),
            }));
        }
    }

    let raw = if args.skip_raw {
        f64::NAN
    } else if cfg.database_url.is_some() {
        raw_postgres(cfg, args.jobs).await?
    } else {
        let raw_dir = cfg.data_dir.with_file_name("raw");
        let (jobs, durability) = (args.jobs, cfg.durability);
        tokio::task::spawn_blocking(move || ferry_store::sqlite::bench::raw_baseline(&raw_dir, jobs, 1000, durability))
            .await??
    };
    Ok(json!({
        "backend": target.backend(),
        "durability": args.durability,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "jobs": args.jobs,
        "batch": args.batch,
        "clients": args.clients,
        "concurrency": args.target.concurrency,
        "submit_seconds": submitted_in.as_secs_f64(),
        "total_seconds": elapsed.as_secs_f64(),
        "throughput_jobs_per_s": rate.round(),
        "transactions": transactions,
        "store_requests_per_transaction": if transactions > 0.0 { (req_after - req_before) / transactions } else { f64::NAN },
        "jobs_per_transaction": if transactions > 0.0 { args.jobs as f64 / transactions } else { f64::NAN },
        "pickup_p50_ms": percentile(&pickup_ms, 0.50),
        "pickup_p99_ms": percentile(&pickup_ms, 0.99),
        "pickup_samples": pickup_ms.len(),
        "worker_processes": processes,
        "raw_store_jobs_per_s": raw.round(),
        "engine_vs_raw": rate / raw,
    }))
}

fn print_report(args: &QueueArgs, r: &Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "Ferry bench: {}, durability={}, {} cores",
        r["backend"].as_str().unwrap_or("?"),
        args.durability,
        r["cores"]
    );
    println!(
        "  throughput   {:>9.0} no-op jobs/s end to end ({} jobs in {:.2} s; submitted in {:.2} s; \
         batches of {} from {} clients; concurrency {})",
        f("throughput_jobs_per_s"),
        args.jobs,
        f("total_seconds"),
        f("submit_seconds"),
        args.batch,
        args.clients,
        args.target.concurrency
    );
    if r["backend"] == "sqlite" {
        println!(
            "  group commit {:.1} store requests per transaction ({} transactions, {:.1} jobs each)",
            f("store_requests_per_transaction"),
            f("transactions"),
            f("jobs_per_transaction")
        );
    }
    println!(
        "  pickup       p50 {:.3} ms, p99 {:.3} ms (idle, {} jobs one at a time, submit-to-start)",
        f("pickup_p50_ms"),
        f("pickup_p99_ms"),
        r["pickup_samples"]
    );
    for p in r["worker_processes"].as_array().into_iter().flatten() {
        println!(
            "  {} worker process(es): {:>9.0} jobs/s (API-only server + `ferry worker` processes, concurrency {} each); \
             pickup p50 {:.3} ms, p99 {:.3} ms",
            p["processes"],
            p["throughput_jobs_per_s"].as_f64().unwrap_or(f64::NAN),
            args.target.concurrency,
            p["pickup_p50_ms"].as_f64().unwrap_or(f64::NAN),
            p["pickup_p99_ms"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if args.skip_raw {
        println!("  raw store    skipped (--skip-raw)");
    } else {
        println!(
            "  raw store    {:>9.0} jobs/s (same statements, no engine); engine at {:.0}% of raw",
            f("raw_store_jobs_per_s"),
            100.0 * f("engine_vs_raw")
        );
    }
}
