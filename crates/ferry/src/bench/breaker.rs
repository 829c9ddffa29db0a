//! `ferry bench breaker`: what a circuit breaker saves a dead target, and how fast the
//! work drains once it recovers.
//!
//! A local target answers 503 to every request. `--jobs` (10,000) `http` jobs for it are
//! submitted to a fresh server at the queue's `--concurrency` (10, the default a new user
//! gets). The breaker trips after its default 5 failures in a row; from the moment the
//! benchmark sees it open, every request the target gets should be a probe: the report
//! gives the requests beyond the probes (target: 0), and how long it took to hold every
//! job back (each claimed once and put back as `scheduled`, without an attempt). The
//! target stays dead for `--dead-ms`, so probes fail and the cool-down grows; then it
//! recovers, and the report gives the time from the recovery to the breaker's close (the
//! rest of the cool-down, a property of the settings) and from the close to the last job's
//! success (the engine's part).

use super::target::{Target, TargetArgs};
use crate::app;
use anyhow::{Context, bail};
use axum::http::StatusCode;
use clap::Args;
use ferry_core::breaker::BreakerSettings;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `ferry bench breaker`'s flags.
#[derive(Debug, Clone, Args)]
pub struct BreakerArgs {
    /// Jobs queued for the dead target
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Worker concurrency of the queue (per process; 10 is the default a server runs with)
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// The breaker's first cool-down (the default a server runs with is 30000)
    #[arg(long, default_value_t = 2_000)]
    pub cool_down_ms: u64,
    /// How long the target stays dead after the breaker opened
    #[arg(long, default_value_t = 5_000)]
    pub dead_ms: u64,
    /// Benchmark PostgreSQL at this URL (in a temporary schema) instead of SQLite
    #[arg(long = "database")]
    pub database_url: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

/// The stand-in target: 503 until it recovers, counting requests.
struct Dead {
    base: String,
    up: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
}

impl Dead {
    async fn start() -> anyhow::Result<Dead> {
        let (up, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (u, h) = (up.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/call",
            axum::routing::get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let ok = u.load(Ordering::SeqCst);
                async move { if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Dead { base, up, hits })
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Measures and prints.
pub async fn run(args: &BreakerArgs) -> anyhow::Result<()> {
    let mut target =
        Target::new(&TargetArgs { concurrency: args.concurrency, database_url: args.database_url.clone() })?;
    target.cfg.breakers.defaults = BreakerSettings { cool_down_ms: args.cool_down_ms, ..BreakerSettings::default() };
    let result = measure(args, &target).await;
    target.remove().await;
    result
}

async fn get(http: &reqwest::Client, url: String) -> anyhow::Result<Value> {
    let resp = http.get(&url).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
        bail!("{url}: {status}: {v}");
    }
    Ok(v)
}

/// Polls every 2 ms until `done` says so (at most `limit`); returns what it said.
async fn until<T>(
    limit: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = done().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn measure(args: &BreakerArgs, target: &Target) -> anyhow::Result<()> {
    let dead = Dead::start().await?;
    let server = app::start(&target.cfg).await?;
    let base = server.url();
    let http = reqwest::Client::new();
    let key = dead.base.clone();
    let breaker_url = format!("{base}/v1/breakers/{}", key.replace(':', "%3A").replace('/', "%2F"));
    let spec = json!({"kind": "http", "input": {"url": format!("{}/call", dead.base)}, "max_attempts": 20,
                      "backoff": {"initial_ms": 10, "max_ms": 100}});
    let submitted = Instant::now();
    for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(1000) {
        let jobs: Vec<Value> = chunk.iter().map(|_| spec.clone()).collect();
        let resp = http.post(format!("{base}/v1/jobs/batch")).json(&json!({"jobs": jobs})).send().await?;
        if !resp.status().is_success() {
            bail!("submission refused: {}", resp.text().await?);
        }
    }
    let submit_s = submitted.elapsed().as_secs_f64();
    // From the moment the breaker is seen open, only probes may reach the target.
    let opened = until(Duration::from_secs(60), "the breaker to open", async || {
        let b = get(&http, breaker_url.clone()).await?;
        Ok((b["state"] == "open").then(Instant::now))
    })
    .await?;
    let hits_at_open = dead.hits();
    let queues = format!("{base}/v1/queues");
    let waiting = async || -> anyhow::Result<(u64, u64)> {
        let q = get(&http, queues.clone()).await?;
        let d = q["queues"].as_array().context("queues")?.iter().find(|q| q["name"] == "default").cloned();
        let d = d.context("no default queue")?;
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        Ok((n("depth") + n("running") + n("retrying"), n("scheduled")))
    };
    let held = until(Duration::from_secs(300), "every job to be held back", async || {
        let (active, scheduled) = waiting().await?;
        Ok((active == 0 && scheduled as usize == args.jobs).then(Instant::now))
    })
    .await;
    let hold_s = held.as_ref().map(|t| (*t - opened).as_secs_f64()).unwrap_or(f64::NAN);
    let dead_until = opened + Duration::from_millis(args.dead_ms);
    tokio::time::sleep_until(dead_until.into()).await;
    let b = get(&http, breaker_url.clone()).await?;
    let probes_dead = b["probes"].as_u64().unwrap_or(0);
    let hits_dead = dead.hits();
    dead.up.store(true, Ordering::SeqCst);
    let recovered = Instant::now();
    let closed = until(Duration::from_secs(700), "the breaker to close", async || {
        let b = get(&http, breaker_url.clone()).await?;
        Ok((b["state"] == "closed").then(Instant::now))
    })
    .await?;
    let drained = until(Duration::from_secs(300), "every job to succeed", async || {
        let (active, scheduled) = waiting().await?;
        Ok((active == 0 && scheduled == 0).then(Instant::now))
    })
    .await?;
    let b = get(&http, breaker_url.clone()).await?;
    server.stop().await?;
    let beyond = (hits_dead - hits_at_open).saturating_sub(probes_dead);
    let report = json!({
        "backend": target.backend(),
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "cool_down_ms": args.cool_down_ms,
        "submit_s": submit_s,
        "requests_before_open": hits_at_open,
        "probes_while_dead": probes_dead,
        "requests_while_open_beyond_probes": beyond,
        "hold_all_s": hold_s,
        "trips": b["trips"],
        "recovery_to_close_s": (closed - recovered).as_secs_f64(),
        "close_to_drained_s": (drained - closed).as_secs_f64(),
        "drain_jobs_per_s": args.jobs as f64 / (drained - closed).as_secs_f64(),
        "requests_total": dead.hits(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "circuit breaker, {} ({} jobs for a dead target, concurrency {}, cool-down {} ms)",
        target.backend(),
        args.jobs,
        args.concurrency,
        args.cool_down_ms
    );
    println!("  requests before the breaker was seen open: {hits_at_open} (it trips at 5 in a row)");
    println!("  requests while open, beyond the {probes_dead} probes: {beyond} (target 0)");
    match held {
        Ok(_) => println!("  every job held back (scheduled, no attempt spent) {hold_s:.2} s after the trip"),
        Err(e) => println!("  not every job was held back: {e}"),
    }
    println!(
        "  recovery → close {:.2} s (the rest of the cool-down, {} trips); close → all {} succeeded {:.2} s ({:.0} jobs/s)",
        (closed - recovered).as_secs_f64(),
        b["trips"],
        args.jobs,
        (drained - closed).as_secs_f64(),
        args.jobs as f64 / (drained - closed).as_secs_f64()
    );
    Ok(())
}
