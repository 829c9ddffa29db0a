//! Ferry's HTTP API.
//!
//! [`router`] builds the whole API as one axum `Router` over an [`ApiState`]. Handlers
//! are thin: parse and validate the request, make one store call, render the answer.
//! Every `/v1` route is declared through `utoipa-axum`, so the OpenAPI document served at
//! `/v1/openapi.json` is generated from the handlers themselves and cannot drift; [`doc`]
//! completes it with the rules every operation shares and this server's limits.
//!
//! **Invariant:** only this crate knows HTTP. Status codes, headers and the error format
//! live here; the store and the engine speak in typed results.

pub mod auth;
mod blobs;
mod breakers;
pub mod counts;
pub mod doc;
mod error;
mod errors;
mod events;
mod extract;
mod jobs;
pub mod limits;
pub mod listener;
mod numbers;
pub mod runs;
mod schedules;
pub mod sse;
mod system;
pub mod tokens;
pub mod views;
mod wait;
pub mod workers;

pub use error::{ApiError, ErrorBody, ErrorDetail};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use ferry_core::time::Micros;
use ferry_core::{JobSpec, Limits, NewJob};
use ferry_store::Store;
use ferry_worker::{Engine, Registry};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub limits: Limits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Queues that accept jobs.
    pub queues: Vec<String>,
    /// A worker is listed by `GET /v1/workers` while its last heartbeat is this recent.
    pub worker_seen_within_ms: u64,
    /// Interval of the keep-alive comments of event streams.
    pub sse_keep_alive: std::time::Duration,
    /// Concurrency limits of a workspace that set none.
    pub default_limits: ferry_store::WorkspaceLimits,
    /// The most waiting jobs each capped queue may hold.
    pub queue_caps: std::collections::BTreeMap<String, u64>,
    /// The configured circuit-breaker settings (an operator's open uses their cool-down).
    pub breakers: ferry_core::breaker::BreakerConfig,
    /// The blob limits (claim checks), as the OpenAPI document states them.
    pub blobs: ferry_store::BlobsConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            limits: Limits::default(),
            max_body_bytes: 16 * 1024 * 1024,
            max_batch: 1000,
            queues: vec!["default".into()],
            worker_seen_within_ms: 30_000,
            sse_keep_alive: std::time::Duration::from_secs(15),
            default_limits: ferry_store::WorkspaceLimits::default(),
            queue_caps: Default::default(),
            breakers: Default::default(),
            blobs: Default::default(),
        }
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The store's blobs, with the `[blobs]` limits: claim checks and `/v1/blobs`.
    pub blobs: ferry_store::Blobs,
    pub registry: Registry,
    /// The embedded workers, if this process runs any: cancel stops their attempts at once.
    pub engine: Option<Engine>,
    pub cfg: Arc<ApiConfig>,
    pub metrics: PrometheusHandle,
    /// Decides what a workflow run does next (`ferry_worker::planner`).
    pub planner: ferry_store::Planner,
    /// Checks tokens.
    pub auth: Arc<auth::Auth>,
    /// Workspaces' concurrency limits, read through.
    pub limits: Arc<limits::LimitsCache>,
    /// This node's open event streams, within their caps (`sse::Streams::new`).
    pub streams: Arc<sse::Streams>,
    /// Queue counts, read through (`counts`).
    pub counts: Arc<counts::QueueCounts>,
    /// Notified when a schedule is created or resumed here: this node's scheduler
    /// (`ferry_worker::scheduler`) looks at once instead of at its next pass.
    pub schedules: Arc<tokio::sync::Notify>,
}

/// Who is calling (see [`auth`]): a token's workspace, user and role, or, in open mode
/// while no token exists, user `local` of workspace `default` with every right.
#[derive(Debug, Clone)]
pub struct Caller {
    pub workspace: String,
    pub user: String,
    pub role: ferry_core::auth::Role,
}

impl Caller {
    /// The caller of a server in open mode (no token yet, loopback or `--insecure`): the
    /// one local user, who is also the operator (zero setup on a laptop).
    pub fn local() -> Self {
        Caller { workspace: "default".into(), user: "local".into(), role: ferry_core::auth::Role::Operator }
    }

    /// Whether this caller may change and see the queues server-wide.
    pub fn is_operator(&self) -> bool {
        self.role == ferry_core::auth::Role::Operator
    }
}

impl ApiState {
    /// What a user's batch of standalone jobs must fit in: the workspace's limits and the
    /// caps of the queues it goes to.
    pub async fn job_admission(
        &self,
        caller: &Caller,
        jobs: &[ferry_core::NewJob],
    ) -> Result<ferry_store::Admission, error::ApiError> {
        let mut admission = self.limits_of(&caller.workspace).await?.jobs_for(&caller.user);
        let queues: std::collections::BTreeSet<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        for q in queues {
            let cap = self.queue_cap(q).await?;
            if cap > 0 {
                admission.queue_caps.push((q.to_string(), cap));
            }
        }
        Ok(admission)
    }

    /// Stops this process's attempts of jobs a run transition cancelled (other
    /// processes learn it from the store).
    pub fn stop_attempts(&self, ids: &[ferry_core::JobId]) {
        if let Some(engine) = &self.engine {
            for id in ids {
                engine.stop_attempt(*id);
            }
        }
    }

    /// The queue of a job (or workflow node) of `kind` that names none: the kind's own
    /// ([`ferry_worker::Executor::default_queue`]: `webhook` for webhooks) when this
    /// server has it, else `None`, which is `default`. Every path by which a spec becomes
    /// a job resolves its queue here.
    pub fn queue_of_kind(&self, kind: &str) -> Option<String> {
        let Some(executor) = self.registry.builtin_kind(kind) else {
            // A remote kind's jobs go to the queue its workers serve.
            return self.registry.remote().queue(kind);
        };
        let queue = executor.default_queue()?;
        self.cfg.queues.iter().any(|q| q == queue).then(|| queue.to_string())
    }

    /// Whether a job (or workflow node, or agent tool) of `kind` may go to `queue`
    /// (`None`: `default`): a remote kind's only to the queue its workers serve, any other
    /// kind's to a configured queue.
    pub fn check_queue(&self, kind: &str, queue: Option<&str>, field: impl FnOnce() -> String) -> Result<(), ApiError> {
        let queue = queue.unwrap_or("default");
        if self.registry.builtin_kind(kind).is_none()
            && let Some(own) = self.registry.remote().queue(kind)
        {
            return match queue == own {
                true => Ok(()),
                false => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_queue",
                    format!("remote kind `{kind}` is served on queue `{own}`; name that queue or none"),
                )
                .field(field())),
            };
        }
        match self.cfg.queues.iter().any(|q| q == queue) {
            true => Ok(()),
            false => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_queue",
                format!("unknown queue `{queue}`; configured queues: {}", self.cfg.queues.join(", ")),
            )
            .field(field())),
        }
    }

    /// Whether `queue` is a queue of remote kinds (one a registered kind goes to): such a
    /// queue has settings, shares and rates like a configured one.
    pub async fn remote_queue(&self, queue: &str) -> Result<bool, ApiError> {
        let known = |st: &Self| st.registry.remote().kinds().iter().any(|(_, q)| q == queue);
        if known(self) {
            return Ok(true);
        }
        self.registry.remote().refresh(self.store.as_ref(), true).await?;
        Ok(known(self))
    }

    /// Reads the store's remote kinds again when one of `kinds` is unknown here: a kind a
    /// worker registered on another node is known to every node from its registration on.
    pub async fn learn_kinds(&self, kinds: &[&str]) -> Result<(), ApiError> {
        if kinds.iter().any(|k| self.registry.get(k).is_none()) {
            self.registry.remote().refresh(self.store.as_ref(), true).await?;
        }
        Ok(())
    }

    /// The timeout of a job (or workflow node, or agent tool) of `kind` that gives none:
    /// the kind's own ([`ferry_worker::Executor::default_timeout_ms`]: a `workflow` job's
    /// outlasts a run) within the largest allowed, else `None`, which is the server's
    /// default (a tool's: 30 s).
    pub fn timeout_of_kind(&self, kind: &str) -> Option<u64> {
        let own = self.registry.get(kind)?.default_timeout_ms()?;
        Some(own.min(self.cfg.limits.max_timeout_ms))
    }

    /// Validates a spec against this server: its kind must be registered, its queue
    /// configured (none given: the kind's, else `default`), its input acceptable to the
    /// kind, and its fields within the limits. An input over `blobs.claim_check_bytes`
    /// is replaced by its claim-check reference, and the blob to store comes back beside
    /// the job (the caller stores it before the job); `limits.max_input_bytes` then
    /// bounds what stays inline and `blobs.max_bytes` the rest. A reference the client
    /// passed on is checked by the worker once it is read back.
    pub fn validate(
        &self,
        mut spec: JobSpec,
        caller: &Caller,
        now: Micros,
    ) -> Result<(NewJob, Option<ferry_store::blobs::ClaimCheck>), ApiError> {
        let Some(executor) = self.registry.get(&spec.kind) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_kind",
                format!(
                    "unknown kind `{}`; known kinds: {} and the remote kinds workers registered",
                    spec.kind,
                    self.registry.kinds().join(", ")
                ),
            )
            .field("kind"));
        };
        if spec.queue.is_none() {
            spec.queue = self.queue_of_kind(&spec.kind);
        }
        self.check_queue(&spec.kind, spec.queue.as_deref(), || "queue".into())?;
        let input = spec.input.take().unwrap_or(serde_json::Value::Null);
        let passed_on = ferry_store::blobs::parse_reference(&input).is_some();
        if !passed_on {
            executor.validate(&input)?;
        }
        let check = self.claim_check(&input)?;
        spec.input = Some(check.as_ref().map_or_else(|| input.clone(), |c| c.reference.clone()));
        if spec.timeout_ms.is_none() {
            spec.timeout_ms = self.timeout_of_kind(&spec.kind);
        }
        let mut job = spec.validate(&caller.workspace, &caller.user, now, &self.cfg.limits)?;
        // The kind's breaker unless the job names its own: kept on the job, so that its
        // wait is visible and the breaker's close finds it. Both it and the cache key
        // come from the whole input, never a reference.
        if job.breaker.is_none() {
            job.breaker = executor.breaker_key(&input);
        }
        if job.ordering_key.is_none() {
            job.ordering_key = executor.ordering_key(&input);
        }
        job.cache_key = executor.cache(&input).map(|p| p.key);
        Ok((job, check))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry",
        description = "A durable job and workflow engine. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
    ),
    tags((name = "jobs", description = "Submit, inspect, cancel and replay jobs"),
          (name = "workflows", description = "Versioned workflows, their runs and run events"),
          (name = "schedules", description = "Cron and interval schedules that start jobs or runs, once per tick across every node"),
          (name = "blobs", description = "Content-addressed blobs of the workspace: claim-checked payloads and `blob_put` results"),
          (name = "tokens", description = "API tokens of the workspace (admin)"),
          (name = "limits", description = "Concurrency limits of the workspace (admin)"),
          (name = "workers", description = "The remote worker protocol (`docs/worker-protocol.md`): sessions of your own processes that serve remote kinds (worker role)"),
          (name = "system", description = "Queues, health and metrics"))
)]
struct ApiDoc;

/// How often the recorder folds the histogram samples recorded since into its buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// The metrics recorder, installed once per process: `/metrics` renders it.
///
/// The recorder keeps each histogram sample until a render or an upkeep folds it into the
/// buckets; nothing else bounds them. So a thread of its own runs the upkeep every
/// [`METRICS_UPKEEP`]: a process nobody scrapes holds at most a second of samples (a few
/// hundred KiB at 30,000 jobs/s) instead of every sample since it started (about 50 bytes
/// per job, which grew a busy server by 1.4 MiB a second).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            let recorder =
                PrometheusBuilder::new().set_buckets(&seconds).expect("bucket list is not empty").build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application's);
            // then our handle renders what we record through it only if it is ours.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("ferry-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP);
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread can be started");
            handle
        })
        .clone()
}

/// The OpenAPI document and the routes it describes.
fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::submit_batch))
        .routes(routes!(jobs::get, jobs::delete))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::replay))
        .routes(routes!(jobs::events))
        .routes(routes!(errors::list))
        .routes(routes!(blobs::get))
        .routes(routes!(runs::register, runs::list_workflows))
        .routes(routes!(runs::get_workflow))
        .routes(routes!(runs::start, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::run_events))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(limits::get, limits::put))
        .routes(routes!(limits::rates))
        .routes(routes!(limits::set_rate, limits::delete_rate))
        .routes(routes!(system::queues))
        .routes(routes!(system::set_queue))
        .routes(routes!(system::workers))
        .routes(routes!(workers::open, workers::list))
        .routes(routes!(workers::lease))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::events))
        .routes(routes!(workers::complete))
        .routes(routes!(workers::close))
        .routes(routes!(breakers::list))
        .routes(routes!(breakers::get, breakers::set))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::metrics))
        .split_for_parts()
}

/// The OpenAPI document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api();
    doc.paths.paths.insert(
        "/v1/openapi.json".into(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .description(Some("Needs no token. While the server is in open mode, bearer auth is optional."))
                .operation_id(Some("getOpenApi"))
                .tag("system")
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new().description("The OpenAPI document").content(
                        "application/json",
                        utoipa::openapi::content::Content::new(Some(
                            utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Object),
                        )),
                    ),
                ),
        ),
    );
    doc
}

/// The whole HTTP API.
pub fn router(state: ApiState) -> Router {
    let (routes, _) = api();
    let docs = Arc::new(doc::Documents::new(&state.cfg, &state.registry.kinds()));
    let limit = state.cfg.max_body_bytes;
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move |axum::extract::State(st): axum::extract::State<ApiState>| {
                let docs = docs.clone();
                async move {
                    // A store that cannot say whether tokens exist: describe the stricter server.
                    let required = st.auth.token_required().await.unwrap_or(true);
                    axum::Json(docs.get(required).clone())
                }
            }),
        )
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(system::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The HTTP surface of a worker process: `/healthz`, `/readyz` and `/metrics` only.
pub fn worker_router(store: Arc<dyn Store>, registry: Registry, engine: Engine, metrics: PrometheusHandle) -> Router {
    use axum::routing::get;
    let ready_store = store.clone();
    Router::new()
        .route("/healthz", get(system::healthz))
        .route(
            "/readyz",
            get(move || {
                let store = ready_store.clone();
                let registry = registry.clone();
                async move { system::ready(store.as_ref(), &registry).await }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let engine = engine.clone();
                async move {
                    metrics::gauge!("ferry_worker_attempts_running").set(engine.running() as f64);
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
                }
            }),
        )
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(system::not_found)
}
