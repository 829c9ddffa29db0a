//! Queues, health and metrics.

use crate::ApiState;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::extract::JsonBody;
use crate::views::{Health, QueueList, QueueSettingsRequest, QueueSettingsView, QueueView, WorkerList, WorkerView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::collections::BTreeMap;

/// Every queue with its counts: configured queues and any queue that holds jobs.
#[utoipa::path(
    get, path = "/v1/queues", tag = "system", operation_id = "listQueues",
    responses((status = 200, body = QueueList))
)]
pub async fn queues(State(st): State<ApiState>) -> Result<Json<QueueList>, ApiError> {
    let stats = st.store.queue_stats().await?;
    let mut map: BTreeMap<String, QueueView> = st
        .cfg
        .queues
        .iter()
        .map(|q| (q.clone(), QueueView::from(ferry_store::QueueStats { queue: q.clone(), ..Default::default() })))
        .collect();
    for s in stats {
        map.insert(s.queue.clone(), s.into());
    }
    for s in st.store.queue_settings().await? {
        if let Some(view) = map.get_mut(&s.name) {
            view.settings = Some(s.into());
        }
    }
    Ok(Json(QueueList { queues: map.into_values().collect() }))
}

/// Change a queue at run time (admin): any of `concurrency` (per worker process),
/// `max_depth`, `rate` (attempts started per second, across every worker process), `paused`.
/// Fields left out keep their value; `null` returns a field to the configured value.
/// Worker processes apply it within `poll_ms`, a rate and the API's depth check within a
/// second.
#[utoipa::path(
    put, path = "/v1/queues/{name}", tag = "system", operation_id = "setQueue",
    params(("name" = String, Path, description = "Queue name")),
    request_body = QueueSettingsRequest,
    responses((status = 200, body = QueueSettingsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn set_queue(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<QueueSettingsView>, ApiError> {
    if !st.cfg.queues.contains(&name) {
        return Err(ApiError::not_found("queue"));
    }
    let current = st.store.queue_settings().await?.into_iter().find(|s| s.name == name);
    let mut s = current.unwrap_or(ferry_store::QueueSettings { name: name.clone(), ..Default::default() });
    let obj = body.as_object().ok_or_else(|| ApiError::bad_field("", "the body must be a JSON object"))?;
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
            "paused" => s.paused = v.as_bool().ok_or_else(|| ApiError::bad_field("paused", "must be true or false"))?,
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
    Ok(Json(s.into()))
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
    if let Ok(stats) = st.store.queue_stats().await {
        let mut seen: Vec<String> = st.cfg.queues.clone();
        for s in &stats {
            set_queue_gauges(&s.queue, s.queued, s.running, s.scheduled, s.retrying, s.dead);
            seen.retain(|q| q != &s.queue);
        }
        for q in seen {
            set_queue_gauges(&q, 0, 0, 0, 0, 0);
        }
    }
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
