//! Queues, health and metrics.
//!
//! Queues are shared by every workspace and belong to the server's operator: only an
//! `operator` sees them server-wide and changes their settings (`concurrency`,
//! `max_depth`, `rate`, `paused`). Every other caller sees, and its admin changes, only
//! its workspace's share of each queue: counts of its own jobs, and `paused` for its own
//! jobs (held back by the claim statements themselves, so a pause holds from its 200 on
//! every node, parked claims included, and never stops another workspace's work).

use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::extract::{JsonBody, Path, Query};
use crate::views::{
    Health, QueueChange, QueueList, QueueSettingsRequest, QueueSettingsView, QueueShareView, QueueView, WorkerList,
    WorkerView,
};
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use std::collections::BTreeMap;

/// The workspace a queue request is about: `?workspace=` (any, for an operator; only its
/// own, for anyone else), else the caller's own, or `None` (server-wide) for an operator
/// who named none. Any other query parameter is refused.
fn scope(caller: &Caller, query: &BTreeMap<String, String>) -> Result<Option<String>, ApiError> {
    if let Some(other) = query.keys().find(|k| k.as_str() != "workspace") {
        return Err(ApiError::bad_field(other.as_str(), "unknown query parameter; expected workspace"));
    }
    // The rule of `ferry token create --workspace`.
    let name_ok = |w: &str| {
        !w.is_empty() && w.len() <= 64 && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
    };
    if let Some(w) = query.get("workspace").filter(|w| !name_ok(w)) {
        return Err(ApiError::bad_field(
            "workspace",
            format!("`{w}` is not a workspace name: 1 to 64 letters, digits, `_`, `-`, `.` or `@`"),
        ));
    }
    match query.get("workspace") {
        None if caller.is_operator() => Ok(None),
        None => Ok(Some(caller.workspace.clone())),
        Some(w) if caller.is_operator() || *w == caller.workspace => Ok(Some(w.clone())),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the operator may name another workspace; leave `workspace` out for your own",
        )
        .field("workspace")),
    }
}

/// Every queue with its counts: configured queues and any queue that holds jobs. An
/// operator sees every workspace's jobs and the queue-wide settings (or, with
/// `?workspace=`, one workspace's counts and share); anyone else sees its own
/// workspace's counts and share only. While counting is costly (a deep queue) counts are
/// reused for a while (`counts_age_ms` says how old); `Cache-Control: no-cache` asks for
/// current ones.
#[utoipa::path(
    get, path = "/v1/queues", tag = "system", operation_id = "listQueues",
    params(
        ("workspace" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@-]{1,64}$", description = "Operator: only this workspace's counts and share"),
        ("Cache-Control" = Option<String>, Header, description = "`no-cache`: count now rather than reuse counts a costly count left"),
    ),
    responses((status = 200, body = QueueList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn queues(
    State(st): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<QueueList>, ApiError> {
    let workspace = scope(&caller, &query)?;
    let fresh = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
    let counted = count(&st, workspace.clone(), fresh).await?;
    let mut map: BTreeMap<String, QueueView> = st
        .cfg
        .queues
        .iter()
        .map(|q| (q.clone(), QueueView::from(ferry_store::QueueStats { queue: q.clone(), ..Default::default() })))
        .collect();
    for s in counted.stats.iter() {
        map.insert(s.queue.clone(), s.clone().into());
    }
    let settings = st.store.queue_settings().await?;
    if caller.is_operator() {
        for s in &settings {
            if let Some(view) = map.get_mut(&s.name) {
                view.settings = Some(s.clone().into());
            }
        }
    }
    if let Some(w) = &workspace {
        let shares = st.store.queue_shares(w).await?;
        for (name, view) in map.iter_mut() {
            view.workspace = Some(w.clone());
            let share = shares.iter().find(|s| &s.queue == name);
            view.share = Some(QueueShareView {
                paused: share.is_some_and(|s| s.paused),
                rate: share.and_then(|s| s.rate),
                queue_paused: settings.iter().any(|s| &s.name == name && s.paused),
            });
        }
    }
    let counts_age_ms = counted.age.as_millis() as u64;
    Ok(Json(QueueList { queues: map.into_values().collect(), counts_age_ms }))
}

/// The queue counts of a scope (`None`: server-wide), through the cache of `counts`
/// (`fresh`: counted now).
async fn count(
    st: &ApiState,
    workspace: Option<String>,
    fresh: bool,
) -> Result<crate::counts::Counted, ferry_store::StoreError> {
    let store = st.store.clone();
    st.counts
        .get(workspace.clone(), fresh, move || async move {
            match workspace {
                None => store.queue_stats().await,
                Some(w) => store.workspace_queue_stats(&w).await,
            }
        })
        .await
}

/// Change a queue at run time. An operator changes the whole queue: any of
/// `concurrency` (per worker process), `max_depth`, `rate` (attempts started per second,
/// across every worker process), `paused`; fields left out keep their value, `null`
/// returns a field to the configured value (no queue is configured paused: `paused: null`
/// resumes it); worker processes apply a concurrency within `poll_ms`, a rate and the
/// API's depth check within a second, a pause from this answer on, on every node. A
/// workspace admin changes only its workspace's share, whose two fields touch its own
/// jobs on the queue and never another workspace's: `paused` (`null`: not paused) holds
/// them back (from this answer on, on every node), `rate` caps how many of them start per
/// second across every worker process (`null`: no rate of its own; the queue's rate still
/// holds). A queue-wide field is refused with 403 naming it. An operator sets a
/// workspace's share with `?workspace=`.
#[utoipa::path(
    put, path = "/v1/queues/{name}", tag = "system", operation_id = "setQueue",
    params(
        ("name" = String, Path, description = "Queue name"),
        ("workspace" = Option<String>, Query, pattern = "^[A-Za-z0-9_.@-]{1,64}$", description = "Operator: change this workspace's share instead of the queue"),
    ),
    request_body = QueueSettingsRequest,
    responses(
        (status = 200, body = QueueChange, description = "The queue's settings, or the workspace's share"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    )
)]
pub async fn set_queue(
    State(st): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<QueueChange>, ApiError> {
    if !st.cfg.queues.contains(&name) && !st.remote_queue(&name).await? {
        return Err(ApiError::not_found("queue"));
    }
    let workspace = scope(&caller, &query)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_field("", "the body must be a JSON object"))?;
    match workspace {
        None => set_queue_wide(&st, name, obj).await.map(|s| Json(QueueChange::Queue(s))),
        Some(w) => set_share(&st, name, w, obj).await.map(|s| Json(QueueChange::Share(s))),
    }
}

/// The operator's change of a whole queue.
async fn set_queue_wide(
    st: &ApiState,
    name: String,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<QueueSettingsView, ApiError> {
    let current = st.store.queue_settings().await?.into_iter().find(|s| s.name == name);
    let mut s = current.unwrap_or(ferry_store::QueueSettings { name: name.clone(), ..Default::default() });
    let int = |k: &str, v: &serde_json::Value, max: u64| -> Result<Option<u64>, ApiError> {
        match v {
            serde_json::Value::Null => Ok(None),
            v => v
                .as_u64()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| ApiError::bad_field(k, format!("must be an integer from 0 to {max}, or null"))),
        }
    };
    for (k, v) in obj {
        match k.as_str() {
            "concurrency" => s.concurrency = int(k, v, 10_000)?.map(|n| n as u32),
            "max_depth" => s.max_depth = int(k, v, 1_000_000_000)?,
            "rate" => {
                s.rate = match v {
                    serde_json::Value::Null => None,
                    v => Some(rate_field(v, ", or null")?),
                }
            }
            "paused" => s.paused = pause_field(v)?,
            other => {
                return Err(ApiError::bad_field(
                    other,
                    "unknown field; expected concurrency, max_depth, rate or paused",
                ));
            }
        }
    }
    st.store.set_queue_settings(s.clone()).await?;
    st.limits.forget_queues();
    Ok(s.into())
}

/// A change of one workspace's share of a queue. Every field is checked before anything
/// is written: a queue-wide field is 403, an unknown one 400.
async fn set_share(
    st: &ApiState,
    name: String,
    workspace: String,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<QueueShareView, ApiError> {
    let mut share = st
        .store
        .queue_shares(&workspace)
        .await?
        .into_iter()
        .find(|s| s.queue == name)
        .unwrap_or(ferry_store::QueueShare { queue: name.clone(), workspace, paused: false, rate: None });
    for (k, v) in obj {
        match k.as_str() {
            "paused" => share.paused = pause_field(v)?,
            "rate" => {
                share.rate = match v {
                    serde_json::Value::Null => None,
                    v => Some(rate_field(v, ", or null")?),
                }
            }
            "concurrency" | "max_depth" => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "`{k}` is a setting of the whole queue, shared by every workspace: only the server's \
                         operator may change it (a workspace admin may set `paused` and `rate` for its own jobs)"
                    ),
                )
                .field(k.as_str()));
            }
            other => return Err(ApiError::bad_field(other, "unknown field; a workspace's share has paused and rate")),
        }
    }
    st.store.set_queue_share(share.clone()).await?;
    let queue_paused = st.store.queue_settings().await?.iter().any(|s| s.name == name && s.paused);
    Ok(QueueShareView { paused: share.paused, rate: share.rate, queue_paused })
}

/// A `paused` field; `null` is the configured value, not paused: a queue (or a workspace's
/// share of it) is paused only at run time, never by the configuration.
fn pause_field(v: &serde_json::Value) -> Result<bool, ApiError> {
    match v {
        serde_json::Value::Null => Ok(false),
        v => v.as_bool().ok_or_else(|| ApiError::bad_field("paused", "must be true, false or null")),
    }
}

/// A `rate` field: jobs per second, above 0 and at most a million.
pub(crate) fn rate_field(v: &serde_json::Value, or: &str) -> Result<f64, ApiError> {
    v.as_f64().filter(|r| *r > 0.0 && *r <= 1_000_000.0).ok_or_else(|| {
        ApiError::bad_field("rate", format!("must be a number of jobs per second above 0, at most 1000000{or}"))
    })
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "system", operation_id = "getHealth", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), store: None, error: None, details: BTreeMap::new() })
}

/// The store answers: the node can take requests.
#[utoipa::path(
    get, path = "/readyz", tag = "system", operation_id = "getReadiness",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
pub async fn readyz(State(st): State<ApiState>) -> (StatusCode, Json<Health>) {
    ready(st.store.as_ref(), &st.registry).await
}

/// Ready when the store answers. The kinds' own reports (a sandbox missing a layer) are
/// details: they do not make the node unready, since every other kind still runs.
pub async fn ready(store: &dyn ferry_store::Store, registry: &ferry_worker::Registry) -> (StatusCode, Json<Health>) {
    let backend = Some(store.backend().to_string());
    let details = registry.readiness();
    match store.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ready".into(), store: backend, error: None, details })),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "unavailable".into(), store: backend, error: Some(e.to_string()), details }),
        ),
    }
}

/// Every live worker process: its node, queues, concurrency, running attempts and last
/// heartbeat. A worker is live while its last heartbeat is within one lease.
#[utoipa::path(
    get, path = "/v1/workers", tag = "system", operation_id = "listWorkers",
    responses((status = 200, body = WorkerList))
)]
pub async fn workers(State(st): State<ApiState>) -> Result<Json<WorkerList>, ApiError> {
    let workers = st.store.workers(st.cfg.worker_seen_within_ms).await?;
    Ok(Json(WorkerList { workers: workers.into_iter().map(WorkerView::from).collect() }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "system", operation_id = "getMetrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    // Gauges are read from the store at scrape time, so they are right on every node
    // and after a restart.
    if let Ok(counted) = count(&st, None, false).await {
        let stats = counted.stats;
        let mut seen: Vec<String> = st.cfg.queues.clone();
        // Configured queues only: a label's values are the operator's, never a name
        // stored by a tenant.
        for s in stats.iter().filter(|s| st.cfg.queues.contains(&s.queue)) {
            set_queue_gauges(&s.queue, s.queued, s.running, s.scheduled, s.retrying, s.dead);
            seen.retain(|q| q != &s.queue);
        }
        for q in seen {
            set_queue_gauges(&q, 0, 0, 0, 0, 0);
        }
    }
    crate::breakers::set_gauges(&st).await;
    if let Some(engine) = &st.engine {
        metrics::gauge!("ferry_worker_attempts_running").set(engine.running() as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render())
}

fn set_queue_gauges(queue: &str, queued: u64, running: u64, scheduled: u64, retrying: u64, dead: u64) {
    let q = queue.to_string();
    metrics::gauge!("ferry_queue_depth", "queue" => q.clone()).set(queued as f64);
    metrics::gauge!("ferry_jobs_running", "queue" => q.clone()).set(running as f64);
    metrics::gauge!("ferry_jobs_scheduled", "queue" => q.clone()).set(scheduled as f64);
    metrics::gauge!("ferry_jobs_retrying", "queue" => q.clone()).set(retrying as f64);
    metrics::gauge!("ferry_jobs_dead", "queue" => q).set(dead as f64);
}

/// Any unknown path.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
