//! Starting and stopping a server: store, engine and HTTP API wired from one [`Config`].

use crate::config::Config;
use anyhow::Context;
use ferry_server::{ApiConfig, ApiState};
use ferry_store::Store;
use ferry_store::sqlite::{SqliteOptions, SqliteStore};
use ferry_worker::{Engine, EngineConfig, QueueConfig, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A server running in this process.
pub struct Server {
    /// The address the API listens on (useful with port 0).
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub engine: Option<Engine>,
    grace: Duration,
    stop_http: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
}

/// Opens the store, starts the embedded workers and serves the API.
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    let store = SqliteStore::open(&SqliteOptions { data_dir: cfg.data_dir.clone(), durability: cfg.durability })
        .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(store);
    let registry = Registry::builtin();
    let engine = (cfg.workers > 0).then(|| {
        let queues = cfg
            .queues
            .iter()
            .map(|(name, q)| QueueConfig { name: name.clone(), concurrency: q.concurrency.unwrap_or(cfg.workers) })
            .collect();
        Engine::start(
            store.clone(),
            registry.clone(),
            EngineConfig {
                node: cfg.node.clone(),
                queues,
                lease_ms: cfg.lease_ms,
                heartbeat_ms: cfg.heartbeat_ms,
                poll_ms: cfg.poll_ms,
                reap_ms: cfg.reap_ms,
                max_output_bytes: cfg.limits.max_output_bytes,
                ..EngineConfig::default()
            },
        )
    });
    let state = ApiState {
        store: store.clone(),
        registry,
        engine: engine.clone(),
        cfg: Arc::new(ApiConfig {
            limits: cfg.job_limits(),
            max_body_bytes: cfg.limits.max_body_bytes,
            max_batch: cfg.limits.max_batch,
            queues: cfg.queues.keys().cloned().collect(),
        }),
        metrics: ferry_server::metrics_handle(),
    };
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let stop = stop_http.clone();
    let app = ferry_server::router(state);
    let http = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    tracing::info!(%addr, store = store.backend(), data_dir = %cfg.data_dir.display(), "Ferry is serving");
    Ok(Server { addr, store, engine, grace: Duration::from_millis(cfg.shutdown_grace_ms), stop_http, http })
}

impl Server {
    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drains: stops taking requests, lets running attempts finish within the grace
    /// period, hands back the rest, and flushes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_http.cancel();
        if let Some(engine) = &self.engine {
            engine.shutdown(self.grace).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), self.http).await {
            Ok(joined) => joined.context("HTTP task panicked")?.context("HTTP server failed")?,
            Err(_) => tracing::warn!("open HTTP connections did not close within 10 s"),
        }
        self.store.close().await;
        tracing::info!("Ferry stopped");
        Ok(())
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
