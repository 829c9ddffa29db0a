//! Queues, health and metrics.

use crate::ApiState;
use crate::error::ApiError;
use crate::views::{Health, QueueList, QueueView, WorkerList, WorkerView};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::collections::BTreeMap;

/// Every queue with its counts: configured queues and any queue that holds jobs.
#[utoipa::path(get, path = "/v1/queues", tag = "system", responses((status = 200, body = QueueList)))]
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
    Ok(Json(QueueList { queues: map.into_values().collect() }))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), store: None, error: None, details: BTreeMap::new() })
}

/// The store answers: the node can take requests.
#[utoipa::path(
    get, path = "/readyz", tag = "system",
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
#[utoipa::path(get, path = "/v1/workers", tag = "system", responses((status = 200, body = WorkerList)))]
pub async fn workers(State(st): State<ApiState>) -> Result<Json<WorkerList>, ApiError> {
    let workers = st.store.workers(st.cfg.worker_seen_within_ms).await?;
    Ok(Json(WorkerList { workers: workers.into_iter().map(WorkerView::from).collect() }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
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
