//! Starting and stopping a server: store, engine and HTTP API wired from one [`Config`].

use crate::config::{Config, ListenAddr};
use anyhow::Context;
use ferry_server::{ApiConfig, ApiState};
use ferry_store::Store;
use ferry_store::postgres::{PgOptions, PgStore};
use ferry_store::sqlite::{SqliteOptions, SqliteStore};
use ferry_worker::escalation::{Escalation, Plan};
use ferry_worker::kinds::{BlobDelete, BlobGet, BlobPut, Exec, LLM_BASE_URLS_VAR, Llm, Webhook};
use ferry_worker::scheduler::Scheduler;
use ferry_worker::{Engine, EngineConfig, QueueConfig, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A server (or a worker process) running in this process.
pub struct Server {
    /// The address the HTTP listener is bound to (useful with port 0).
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub engine: Option<Engine>,
    /// The escalation rules' evaluator, when rules are configured (`ferry server` only).
    pub escalation: Option<Escalation>,
    /// The schedules' scheduler (`ferry server` only).
    pub scheduler: Option<Scheduler>,
    grace: Duration,
    stop_http: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    stop_pruner: CancellationToken,
    pruner: JoinHandle<()>,
}

/// Opens the configured store: PostgreSQL when `database_url` is set, else SQLite in
/// `data_dir`.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &cfg.database_url {
        Some(url) => {
            let opts = PgOptions {
                url: url.clone(),
                schema: cfg.database_schema.clone(),
                max_connections: cfg.database_max_connections,
                application_name: format!("ferry:{}", cfg.node),
            };
            Arc::new(PgStore::open(&opts).await.context("cannot open the PostgreSQL store")?)
        }
        None => {
            let opts = SqliteOptions { data_dir: cfg.data_dir.clone(), durability: cfg.durability };
            let store = SqliteStore::open(&opts)
                .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
            Arc::new(store)
        }
    })
}

fn engine_config(cfg: &Config, queues: Vec<QueueConfig>) -> EngineConfig {
    EngineConfig {
        node: cfg.node.clone(),
        queues,
        lease_ms: cfg.lease_ms,
        heartbeat_ms: cfg.heartbeat_ms,
        poll_ms: cfg.poll_ms,
        reap_ms: cfg.reap_ms,
        max_output_bytes: cfg.limits.max_output_bytes,
        blobs: cfg.blobs.clone(),
        job_limits: cfg.job_limits(),
        default_limits: cfg.default_limits.clone(),
        breakers: cfg.breakers.clone(),
        dead_severity: cfg.queues.iter().filter_map(|(name, q)| Some((name.clone(), q.severity?))).collect(),
        ..EngineConfig::default()
    }
}

/// Binds the API's address. Called before the store opens, so that a port in use is
/// reported at once, before migrations run or the data directory is locked.
async fn bind(listen: &ListenAddr) -> anyhow::Result<TcpListener> {
    let addr = listen.resolve().await.with_context(|| format!("cannot resolve the listen address {listen}"))?;
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {listen}"))
}

async fn serve(
    cfg: &Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    engine: Option<Engine>,
    escalation: Option<Escalation>,
    scheduler: Option<Scheduler>,
    app: axum::Router,
) -> anyhow::Result<Server> {
    let addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let stop = stop_http.clone();
    let limits = cfg.http.limits();
    let http = tokio::spawn(async move {
        ferry_server::listener::serve(listener, app, limits, async move { stop.cancelled().await }).await
    });
    let stop_pruner = CancellationToken::new();
    let pruner =
        tokio::spawn(ferry_worker::prune_loop(store.clone(), cfg.retention_ms, cfg.prune_ms, 500, stop_pruner.clone()));
    Ok(Server {
        addr,
        store,
        engine,
        escalation,
        scheduler,
        grace: Duration::from_millis(cfg.shutdown_grace_ms),
        stop_http,
        http,
        stop_pruner,
        pruner,
    })
}

/// Whether the API may serve unauthenticated requests while no token exists: only on
/// loopback (zero setup on a laptop), or when the operator said `--insecure`. Anywhere
/// else a server without tokens refuses to start.
async fn open_mode(cfg: &Config, addr: SocketAddr, store: &dyn Store) -> anyhow::Result<bool> {
    let tokens = store.active_tokens().await.context("cannot read the API tokens")?;
    let closed = store.auth_closed().await.context("cannot read the API tokens")?;
    let loopback = addr.ip().is_loopback();
    if tokens > 0 {
        tracing::info!(tokens, "API tokens exist: every /v1 request needs one");
    } else if closed {
        // Safe anywhere: nobody is served without a token.
        tracing::warn!(
            "every API token was revoked; the store stays closed, so every /v1 request needs a token \
             (`ferry token create`, or `ferry token reopen` to serve unauthenticated requests again)"
        );
    } else if loopback {
        tracing::info!(
            "no API tokens: serving unauthenticated requests as user `local` of workspace `default` \
             (loopback only; `ferry token create` to require tokens)"
        );
    } else if cfg.insecure {
        tracing::warn!(listen = %cfg.listen, "no API tokens and --insecure: ANYONE who can reach this address acts as admin of workspace `default`");
    } else {
        anyhow::bail!(
            "refusing to listen on {} without API tokens: create one first (`ferry token create --workspace W \
             --user U --role admin`), listen on loopback, or pass --insecure",
            cfg.listen
        );
    }
    Ok(loopback || cfg.insecure)
}

/// The argument that makes the `ferry` binary act as the sandbox helper.
pub const SANDBOX_HELPER_ARG: &str = "sandbox-helper";

/// The kinds this process runs: the built-ins, and those the configuration sets up: `exec`,
/// `webhook` (with its signing secrets), `llm` (with its API keys), and the blob kinds over
/// the store's `blobs`.
/// The sandbox is probed here, and a missing layer is reported at start (and in
/// `/readyz`).
pub async fn registry(cfg: &Config, blobs: &ferry_store::Blobs) -> anyhow::Result<Registry> {
    let mut exec_cfg = cfg.exec.clone();
    // The sandbox never sees Ferry's own data or configuration.
    exec_cfg.hidden_paths.push(std::path::absolute(&cfg.data_dir)?);
    if let Some(file) = &cfg.config_file {
        exec_cfg.hidden_paths.push(std::path::absolute(file)?);
    }
    let helper = match &cfg.exec_helper {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the ferry binary to run the sandbox helper")?,
    };
    let allow_weak = exec_cfg.allow_weak_isolation;
    let exec = Exec::new(exec_cfg, helper, vec![SANDBOX_HELPER_ARG.into()]);
    let (_, missing) = exec.probe().await;
    if missing.is_empty() {
        tracing::info!("exec sandbox: every isolation layer is available");
    } else if allow_weak {
        tracing::warn!(missing = %missing.join(", "), "exec sandbox is WEAKER than intended on this host; running exec jobs anyway (exec.allow_weak_isolation)");
    } else {
        tracing::warn!(missing = %missing.join(", "), "exec jobs are refused: the sandbox lacks layers on this host (set exec.allow_weak_isolation = true to accept weaker isolation)");
    }
    // An unbound key goes wherever a job's `base_url` says (`llm.require_base_urls`
    // refuses to start instead).
    for name in cfg.llm.unbound() {
        tracing::warn!(
            secret = name,
            "the llm secret `{name}` has no base_urls: any job that names it may send its key to any base_url \
             (bind it with llm.secrets.{name}.base_urls or {LLM_BASE_URLS_VAR}{})",
            name.to_ascii_uppercase()
        );
    }
    let mut registry = Registry::builtin();
    registry.register(exec);
    registry.register(Webhook::new(&cfg.webhooks));
    registry.register(Llm::new(&cfg.llm));
    registry.register(BlobPut::new(blobs.clone()));
    registry.register(BlobGet::new(blobs.clone()));
    registry.register(BlobDelete::new(blobs.clone()));
    Ok(registry)
}

/// Opens the store, starts the embedded workers and serves the API.
pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
    let listener = bind(&cfg.listen).await?;
    let store = open_store(cfg).await?;
    let open = open_mode(cfg, listener.local_addr()?, store.as_ref()).await?;
    let blobs = ferry_store::Blobs::new(store.blobs(), cfg.blobs.clone());
    let registry = registry(cfg, &blobs).await?;
    // Checked before anything starts: a rule whose endpoint the `webhook` kind refuses
    // stops the start like any other bad setting.
    let plan = Plan::new(&cfg.escalation, &registry, cfg.job_limits()).map_err(anyhow::Error::msg)?;
    let engine = (cfg.workers > 0).then(|| {
        let queues = cfg
            .queues
            .keys()
            .map(|name| QueueConfig { name: name.clone(), concurrency: cfg.queue_concurrency(name) })
            .collect();
        Engine::start(store.clone(), registry.clone(), engine_config(cfg, queues))
    });
    let wake_scheduler = Arc::new(tokio::sync::Notify::new());
    let state = ApiState {
        store: store.clone(),
        blobs,
        registry: registry.clone(),
        engine: engine.clone(),
        cfg: Arc::new(ApiConfig {
            limits: cfg.job_limits(),
            max_body_bytes: cfg.limits.max_body_bytes,
            max_batch: cfg.limits.max_batch,
            queues: cfg.queues.keys().cloned().collect(),
            worker_seen_within_ms: cfg.lease_ms,
            sse_keep_alive: Duration::from_millis(cfg.sse_keep_alive_ms),
            default_limits: cfg.default_limits.clone(),
            queue_caps: cfg
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.max_depth.unwrap_or(crate::config::DEFAULT_MAX_DEPTH)))
                .filter(|(_, cap)| *cap > 0)
                .collect(),
            breakers: cfg.breakers.clone(),
            blobs: cfg.blobs.clone(),
        }),
        metrics: ferry_server::metrics_handle(),
        planner: ferry_worker::planner(cfg.job_limits(), registry.clone(), &cfg.default_limits),
        auth: ferry_server::auth::Auth::new(store.clone(), open),
        limits: Default::default(),
        counts: Default::default(),
        streams: ferry_server::sse::Streams::new(
            store.clone(),
            ferry_server::sse::StreamLimits {
                max_streams: cfg.sse_max_streams,
                max_per_token: cfg.sse_max_streams_per_token,
            },
        ),
        schedules: wake_scheduler.clone(),
    };
    let escalation = plan.map(|plan| Escalation::start(store.clone(), plan));
    // Schedules are fired by `ferry server` nodes only (see `ferry_worker::scheduler`),
    // making their jobs and runs as this API does.
    let scheduler = Scheduler::start(store.clone(), Arc::new(state.clone()), state.planner.clone(), wake_scheduler);
    let app = ferry_server::router(state);
    let server = serve(cfg, listener, store.clone(), engine, escalation, Some(scheduler), app).await?;
    tracing::info!(addr = %server.addr, store = store.backend(), "Ferry is serving");
    Ok(server)
}

/// Starts a worker process: the engine for `queues`, and `/healthz`, `/readyz` and
/// `/metrics` on `listen`. It needs a store other processes can share (PostgreSQL).
pub async fn start_worker(
    cfg: &Config,
    queues: &[String],
    concurrency: usize,
    listen: &ListenAddr,
) -> anyhow::Result<Server> {
    if cfg.database_url.is_none() {
        anyhow::bail!(
            "`ferry worker` needs --database postgres://…: a SQLite data directory belongs to one `ferry server`"
        );
    }
    let listener = bind(listen).await?;
    let store = open_store(cfg).await?;
    let queues: Vec<QueueConfig> = queues.iter().map(|name| QueueConfig { name: name.clone(), concurrency }).collect();
    let registry = registry(cfg, &ferry_store::Blobs::new(store.blobs(), cfg.blobs.clone())).await?;
    let engine = Engine::start(store.clone(), registry.clone(), engine_config(cfg, queues));
    let app = ferry_server::worker_router(store.clone(), registry, engine.clone(), ferry_server::metrics_handle());
    // Escalation rules are evaluated, and schedules fired, by `ferry server` nodes only
    // (see `ferry_worker::escalation` and `ferry_worker::scheduler`).
    let server = serve(cfg, listener, store, Some(engine), None, None, app).await?;
    tracing::info!(addr = %server.addr, worker = server.engine.as_ref().map(|e| e.worker_id()).unwrap_or(""), "Ferry worker running");
    Ok(server)
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
        self.stop_pruner.cancel();
        let _ = self.pruner.await;
        if let Some(escalation) = self.escalation {
            escalation.stop().await;
        }
        if let Some(scheduler) = self.scheduler {
            scheduler.stop().await;
        }
        self.store.close().await;
        tracing::info!("Ferry stopped");
        Ok(())
    }
}

/// Waits for SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: called before the server announces itself, a signal sent
/// the moment it does is a drain, never the default action's death.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int) => {}
            _ = wait(term) => {}
        }
    }
}
