//! `ferry bench`: end-to-end throughput and pickup latency, beside the store's raw limit.
//!
//! It starts a server in this process on a temporary data directory and a loopback port,
//! and drives it over real HTTP like any client:
//!
//! 1. **Throughput**: `--jobs` no-op jobs submitted through `POST /v1/jobs/batch` in
//!    batches of `--batch` by `--clients` concurrent clients; the clock stops when the
//!    queue reports nothing left unfinished.
//! 2. **Pickup latency when idle**: `--samples` jobs submitted one at a time, each after
//!    the previous one finished; the latency is the job's first attempt start minus its
//!    creation, both stamped by the store.
//! 3. **Raw limit**: the same statements run directly on SQLite without the engine.

use crate::app;
use crate::config::{Config, QueueSettings};
use anyhow::{Context, bail};
use clap::Args;
use ferry_store::sqlite::Durability;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// No-op jobs in the throughput run
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per batch request
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent submitting clients
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Worker concurrency of the queue
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Jobs in the idle pickup-latency run
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// `process` or `full`
    #[arg(long, default_value = "process")]
    pub durability: String,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// Skip the raw SQLite measurement
    #[arg(long)]
    pub skip_raw: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn outstanding(http: &reqwest::Client, base: &str) -> anyhow::Result<(u64, u64)> {
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

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let durability = match args.durability.as_str() {
        "process" => Durability::Process,
        "full" => Durability::Full,
        other => bail!("--durability must be `process` or `full`, not `{other}`"),
    };
    if args.batch == 0 || args.batch > 1000 || args.clients == 0 || args.jobs == 0 {
        bail!("--jobs and --clients must be positive and --batch between 1 and 1000");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let mut cfg =
        Config { listen: "127.0.0.1:0".parse()?, data_dir: dir.path().join("engine"), durability, ..Config::default() };
    cfg.queues.insert("default".into(), QueueSettings { concurrency: Some(args.concurrency) });
    let server = app::start(&cfg).await?;
    let base = server.url();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.clients).build()?;

    // 1. Throughput.
    let (tx_before, req_before) = group_commit_counters(&http, &base).await?;
    let per_client = args.jobs.div_ceil(args.clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let http = http.clone();
        let base = base.clone();
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
        let (open, dead) = outstanding(&http, &base).await?;
        if dead > 0 {
            bail!("{dead} no-op jobs died during the benchmark");
        }
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let throughput = args.jobs as f64 / elapsed.as_secs_f64();
    let (tx_after, req_after) = group_commit_counters(&http, &base).await?;
    let transactions = tx_after - tx_before;
    let per_transaction = (req_after - req_before) / transactions.max(1.0);

    // 2. Pickup latency when idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pickup_ms = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let accepted: Value =
            http.post(format!("{base}/v1/jobs")).json(&json!({"kind": "noop"})).send().await?.json().await?;
        let id = accepted["id"].as_str().context("no id")?.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
            if job["state"] == "succeeded" {
                let created: chrono::DateTime<chrono::Utc> = serde_json::from_value(job["created_at"].clone())?;
                let start: chrono::DateTime<chrono::Utc> =
                    serde_json::from_value(job["attempts"][0]["started_at"].clone())?;
                pickup_ms.push((start - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} did not finish within 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    pickup_ms.sort_by(f64::total_cmp);
    server.stop().await?;

    // 3. The raw limit, on a fresh database.
    let raw_dir = dir.path().join("raw");
    let raw_jobs = args.jobs;
    let raw = if args.skip_raw {
        f64::NAN
    } else {
        tokio::task::spawn_blocking(move || ferry_store::sqlite::raw_baseline(&raw_dir, raw_jobs, 1000, durability))
            .await??
    };

    let report = json!({
        "backend": "sqlite",
        "durability": args.durability,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "jobs": args.jobs,
        "batch": args.batch,
        "clients": args.clients,
        "concurrency": args.concurrency,
        "submit_seconds": submitted_in.as_secs_f64(),
        "total_seconds": elapsed.as_secs_f64(),
        "throughput_jobs_per_s": throughput.round(),
        "pickup_p50_ms": percentile(&pickup_ms, 0.50),
        "pickup_p99_ms": percentile(&pickup_ms, 0.99),
        "pickup_samples": pickup_ms.len(),
        "transactions": transactions,
        "store_requests_per_transaction": per_transaction,
        "jobs_per_transaction": args.jobs as f64 / transactions.max(1.0),
        "raw_sqlite_jobs_per_s": raw.round(),
        "engine_vs_raw": throughput / raw,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("Ferry bench: SQLite, durability={}, {} cores", args.durability, report["cores"]);
        println!(
            "  throughput   {:>9.0} no-op jobs/s end to end ({} jobs in {:.2} s; submitted in {:.2} s; \
             batches of {} from {} clients; concurrency {})",
            throughput,
            args.jobs,
            elapsed.as_secs_f64(),
            submitted_in.as_secs_f64(),
            args.batch,
            args.clients,
            args.concurrency
        );
        println!(
            "  group commit {:.1} store requests per transaction ({} transactions, {:.1} jobs each)",
            per_transaction,
            transactions,
            args.jobs as f64 / transactions.max(1.0)
        );
        println!(
            "  pickup       p50 {:.3} ms, p99 {:.3} ms (idle, {} jobs one at a time, submit-to-start)",
            percentile(&pickup_ms, 0.50),
            percentile(&pickup_ms, 0.99),
            pickup_ms.len()
        );
        println!(
            "  raw SQLite   {:>9.0} jobs/s (same statements, no engine); engine at {:.0}% of raw",
            raw,
            100.0 * throughput / raw
        );
    }
    Ok(())
}
