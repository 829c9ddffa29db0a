//! The remote worker protocol (`docs/worker-protocol.md`): sessions of processes of the
//! user's own that lease the jobs of remote kinds from this node's engine.
//!
//! Every route needs the `worker` role (or `operator`). The rules live in
//! `ferry_worker::remote`; this module checks the bodies, maps the hub's answers onto the
//! API's errors and writes the events a session reports.

use crate::extract::{JsonBody, Path, Shape};
use crate::{ApiError, ApiState, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::JobId;
use ferry_worker::remote::{self, Cancel, Hub, HubError, LeasedJob, Outcome, SessionInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// The protocol's version.
pub const PROTOCOL: u32 = 1;
/// Most kinds of one session, and most results or events of one call.
const MAX_KINDS: usize = 100;
const MAX_ITEMS: usize = 100;
/// Most slots of one session.
const MAX_CONCURRENCY: usize = 1000;
/// Largest progress value and log line of an event, in bytes.
const MAX_EVENT_BYTES: usize = 4096;

/// A session to open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    /// Must be 1.
    pub protocol: u32,
    /// A label for listings (at most 128 characters).
    pub name: Option<String>,
    /// Jobs the session runs at once, 1 to 1,000 (default 1).
    pub concurrency: Option<usize>,
    /// The kinds it serves, 1 to 100.
    pub kinds: Vec<KindSpec>,
}

/// A kind a session serves, on its queue (default `remote`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KindSpec {
    pub kind: String,
    pub queue: Option<String>,
}

/// An open session: what its worker must keep to.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionOpened {
    pub session: String,
    pub protocol: u32,
    /// Heartbeat this often.
    pub heartbeat_ms: u64,
    /// A session that makes no call for this long is over.
    pub session_timeout_ms: u64,
    /// The longest a lease call waits.
    pub max_wait_ms: u64,
}

/// A lease call.
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// At most this many jobs (default 1), never past the session's free slots.
    pub max: Option<usize>,
    /// How long to wait for work (default and most: `max_wait_ms`).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leased {
    pub jobs: Vec<LeasedJob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Heartbeat {
    /// Attempts to stop; each is named once.
    pub cancel: Vec<Cancel>,
}

/// A progress value or a log line of an attempt the session holds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerEvent {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub attempt: u32,
    /// Any JSON, `null` included.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    pub log: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    pub events: Vec<WorkerEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventsWritten {
    /// Per event: `false` when its attempt is no longer the session's (not written).
    pub accepted: Vec<bool>,
}

/// An attempt's failure as the worker reports it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteError {
    /// One of Ferry's error types, or any other name (recorded as `task`).
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    /// Overrides the type's default.
    pub retryable: Option<bool>,
    /// Replaces the backoff delay.
    pub retry_after_ms: Option<u64>,
}

/// The end of an attempt the session holds: exactly one of `output`, `error`, `release`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptResult {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub attempt: u32,
    /// Any JSON, `null` included.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<RemoteError>,
    pub release: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub results: Vec<AttemptResult>,
    /// Lease more jobs in the same call, once the results are in (as `lease` takes them):
    /// one round trip per batch instead of two.
    pub lease: Option<LeaseRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// `false`: the attempt is no longer the session's; its result changed nothing.
    pub accepted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Completed {
    pub results: Vec<Accepted>,
    /// The jobs leased when the call asked for a `lease`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<LeasedJob>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// A field that is there, whatever its value: `null` is an output like any other.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

macro_rules! object_shape {
    ($($t:ty),+) => { $(impl Shape for $t {
        fn check(body: &Value) -> Result<(), ApiError> {
            crate::extract::must_be_object(body, "")
        }
    })+ };
}
object_shape!(OpenSession, LeaseRequest, EventsRequest, CompleteRequest);

/// The hub of this node's engine.
fn hub(st: &ApiState) -> Result<Arc<Hub>, ApiError> {
    st.registry.remote().hub().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "no_engine",
            "this node runs no engine (`--workers 0`); connect remote workers to a node that does",
        )
    })
}

fn hub_error(e: HubError) -> ApiError {
    match e {
        HubError::UnknownSession => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such session on this node: it ended (open a new one), or lives on another node",
        )
        .field("session"),
        HubError::EventLimit => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "event_limit",
            format!("an attempt may write at most {} events", remote::MAX_EVENTS_PER_ATTEMPT),
        )
        .field("events"),
    }
}

/// Whether a kind's (or queue's) name is acceptable: 1 to 64 of `a-z0-9_-.`, a letter first.
fn good_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
}

/// Open a session of a remote worker (worker role). Registers its kinds for every node.
#[utoipa::path(
    post, path = "/v1/workers/sessions", tag = "workers", operation_id = "openWorkerSession",
    request_body = OpenSession,
    responses((status = 201, body = SessionOpened), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn open(
    State(st): State<ApiState>,
    JsonBody(req): JsonBody<OpenSession>,
) -> Result<(StatusCode, Json<SessionOpened>), ApiError> {
    let hub = hub(&st)?;
    if req.protocol != PROTOCOL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
            format!("this server speaks protocol {PROTOCOL}"),
        )
        .field("protocol"));
    }
    if req.name.as_ref().is_some_and(|n| n.chars().count() > 128) {
        return Err(ApiError::bad_field("name", "must be at most 128 characters"));
    }
    let concurrency = req.concurrency.unwrap_or(1);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(ApiError::bad_field("concurrency", format!("must be 1 to {MAX_CONCURRENCY}")));
    }
    if req.kinds.is_empty() || req.kinds.len() > MAX_KINDS {
        return Err(ApiError::bad_field("kinds", format!("must name 1 to {MAX_KINDS} kinds")));
    }
    let mut kinds = BTreeMap::new();
    for (i, k) in req.kinds.iter().enumerate() {
        let queue = k.queue.clone().unwrap_or_else(|| remote::DEFAULT_QUEUE.to_string());
        if !good_name(&k.kind) {
            return Err(ApiError::bad_field(
                format!("kinds[{i}].kind"),
                "must be 1 to 64 characters of a-z, 0-9, `_`, `-`, `.`, starting with a letter",
            ));
        }
        if !good_name(&queue) {
            return Err(ApiError::bad_field(
                format!("kinds[{i}].queue"),
                "must be 1 to 64 characters of a-z, 0-9, `_`, `-`, `.`, starting with a letter",
            ));
        }
        if st.registry.builtin_kind(&k.kind).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "kind_conflict",
                format!("`{}` is a built-in kind; a remote kind needs a name of its own", k.kind),
            )
            .field(format!("kinds[{i}].kind")));
        }
        if st.cfg.queues.contains(&queue) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "queue_conflict",
                format!("queue `{queue}` is served by the built-in engine; remote kinds need a queue of their own"),
            )
            .field(format!("kinds[{i}].queue")));
        }
        if kinds.insert(k.kind.clone(), queue).is_some() {
            return Err(ApiError::bad_field(format!("kinds[{i}].kind"), "is named twice"));
        }
    }
    let stored: Vec<ferry_store::RemoteKind> = kinds
        .iter()
        .map(|(kind, queue)| ferry_store::RemoteKind { kind: kind.clone(), queue: queue.clone() })
        .collect();
    st.store.put_remote_kinds(&stored).await?;
    st.registry.remote().learn(kinds.clone());
    let session = hub.open(req.name, concurrency, kinds);
    let cfg = hub.config();
    Ok((
        StatusCode::CREATED,
        Json(SessionOpened {
            session,
            protocol: PROTOCOL,
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            session_timeout_ms: cfg.session_timeout.as_millis() as u64,
            max_wait_ms: cfg.max_wait.as_millis() as u64,
        }),
    ))
}

/// The sessions open on this node (worker role).
#[utoipa::path(
    get, path = "/v1/workers/sessions", tag = "workers", operation_id = "listWorkerSessions",
    responses((status = 200, body = SessionList), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn list(State(st): State<ApiState>) -> Result<Json<SessionList>, ApiError> {
    Ok(Json(SessionList { sessions: hub(&st)?.sessions() }))
}

/// Lease jobs (worker role): answers as soon as one is ready, or with none at the wait's end.
#[utoipa::path(
    post, path = "/v1/workers/sessions/{session}/lease", tag = "workers", operation_id = "leaseJobs",
    params(("session" = String, Path)), request_body = LeaseRequest,
    responses((status = 200, body = Leased), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn lease(
    State(st): State<ApiState>,
    Path(session): Path<String>,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Json<Leased>, ApiError> {
    let hub = hub(&st)?;
    let (max, wait) = lease_terms(&hub, &req, "")?;
    Ok(Json(Leased { jobs: take(&hub, &session, max, wait, 0).await? }))
}

/// A lease call's `max` and wait, checked (`at`: where its fields are in the body).
fn lease_terms(hub: &Hub, req: &LeaseRequest, at: &str) -> Result<(usize, Duration), ApiError> {
    let max = req.max.unwrap_or(1);
    if !(1..=MAX_CONCURRENCY).contains(&max) {
        return Err(ApiError::bad_field(format!("{at}max"), format!("must be 1 to {MAX_CONCURRENCY}")));
    }
    let most = hub.config().max_wait.as_millis() as u64;
    let wait = req.wait_ms.unwrap_or(most);
    if wait > most {
        return Err(ApiError::bad_field(format!("{at}wait_ms"), format!("must be 0 to {most}")));
    }
    Ok((max, Duration::from_millis(wait)))
}

async fn take(hub: &Hub, session: &str, max: usize, wait: Duration, expect: usize) -> Result<Vec<LeasedJob>, ApiError> {
    hub.lease(session, max, wait, expect).await.map_err(hub_error)
}

/// Keep a session alive (worker role); the attempts it must stop.
#[utoipa::path(
    post, path = "/v1/workers/sessions/{session}/heartbeat", tag = "workers", operation_id = "heartbeatSession",
    params(("session" = String, Path)),
    responses((status = 200, body = Heartbeat), (status = 404, body = ErrorBody), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn heartbeat(State(st): State<ApiState>, Path(session): Path<String>) -> Result<Json<Heartbeat>, ApiError> {
    Ok(Json(Heartbeat { cancel: hub(&st)?.heartbeat(&session).map_err(hub_error)? }))
}

/// Consecutive events of one attempt: the attempt, its events (type, data), and their
/// places in the request.
type Run = ((JobId, u32), Vec<(String, Value)>, Vec<usize>);

/// Write progress values and log lines of the session's attempts (worker role).
#[utoipa::path(
    post, path = "/v1/workers/sessions/{session}/events", tag = "workers", operation_id = "writeAttemptEvents",
    params(("session" = String, Path)), request_body = EventsRequest,
    responses((status = 200, body = EventsWritten), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn events(
    State(st): State<ApiState>,
    Path(session): Path<String>,
    JsonBody(req): JsonBody<EventsRequest>,
) -> Result<Json<EventsWritten>, ApiError> {
    let hub = hub(&st)?;
    if req.events.is_empty() || req.events.len() > MAX_ITEMS {
        return Err(ApiError::bad_field("events", format!("must hold 1 to {MAX_ITEMS} events")));
    }
    // Every event is checked before any is written; then each attempt's run, in order.
    let mut runs: Vec<Run> = Vec::new();
    for (i, e) in req.events.into_iter().enumerate() {
        let at = |f: &str| format!("events[{i}].{f}");
        let entry = match (e.progress, e.log) {
            (Some(p), None) => {
                if serde_json::to_vec(&p).map_or(usize::MAX, |v| v.len()) > MAX_EVENT_BYTES {
                    return Err(ApiError::bad_field(
                        at("progress"),
                        format!("must be at most {MAX_EVENT_BYTES} bytes"),
                    ));
                }
                ("progress".to_string(), serde_json::json!({"attempt": e.attempt, "progress": p}))
            }
            (None, Some(line)) => {
                if line.len() > MAX_EVENT_BYTES {
                    return Err(ApiError::bad_field(at("log"), format!("must be at most {MAX_EVENT_BYTES} bytes")));
                }
                ("log".to_string(), serde_json::json!({"attempt": e.attempt, "line": line}))
            }
            _ => return Err(ApiError::bad_field(format!("events[{i}]"), "must have exactly one of progress and log")),
        };
        match runs.last_mut() {
            Some((key, entries, idx)) if *key == (e.id, e.attempt) => {
                entries.push(entry);
                idx.push(i);
            }
            _ => runs.push(((e.id, e.attempt), vec![entry], vec![i])),
        }
    }
    let mut accepted = vec![false; runs.iter().map(|r| r.2.len()).sum()];
    for ((id, attempt), entries, idx) in runs {
        if !hub.note_events(&session, id, attempt, entries.len() as u32).map_err(hub_error)? {
            continue;
        }
        if st.store.write_job_events(id, attempt, entries).await? {
            for i in idx {
                accepted[i] = true;
            }
        }
    }
    Ok(Json(EventsWritten { accepted }))
}

/// End the session's attempts with an output, an error, or a release (worker role); with
/// `lease`, then lease more jobs in the same call.
#[utoipa::path(
    post, path = "/v1/workers/sessions/{session}/complete", tag = "workers", operation_id = "completeAttempts",
    params(("session" = String, Path)), request_body = CompleteRequest,
    responses((status = 200, body = Completed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn complete(
    State(st): State<ApiState>,
    Path(session): Path<String>,
    JsonBody(req): JsonBody<CompleteRequest>,
) -> Result<Json<Completed>, ApiError> {
    let hub = hub(&st)?;
    if req.results.is_empty() || req.results.len() > MAX_ITEMS {
        return Err(ApiError::bad_field("results", format!("must hold 1 to {MAX_ITEMS} results")));
    }
    let lease = req.lease.as_ref().map(|l| lease_terms(&hub, l, "lease.")).transpose()?;
    let mut outcomes = Vec::with_capacity(req.results.len());
    for (i, r) in req.results.into_iter().enumerate() {
        let outcome = match (r.output, r.error, r.release) {
            (Some(output), None, None | Some(false)) => Outcome::Output(output),
            (None, Some(e), None | Some(false)) => {
                if e.error_type.is_empty() || e.error_type.len() > 128 {
                    return Err(ApiError::bad_field(format!("results[{i}].error.type"), "must be 1 to 128 bytes"));
                }
                let after = e.retry_after_ms.map(Duration::from_millis);
                Outcome::Error(remote::remote_error(&e.error_type, &e.message, e.retryable, after))
            }
            (None, None, Some(true)) => Outcome::Release,
            _ => {
                return Err(ApiError::bad_field(
                    format!("results[{i}]"),
                    "must have exactly one of output, error and release: true",
                ));
            }
        };
        outcomes.push((r.id, r.attempt, outcome));
    }
    let mut results = Vec::with_capacity(outcomes.len());
    for (id, attempt, outcome) in outcomes {
        let accepted = hub.complete(&session, id, attempt, outcome).map_err(hub_error)?;
        results.push(Accepted { id, accepted });
    }
    // Each accepted result freed a slot of the engine: the lease waits a moment for the
    // jobs those slots start (see `Hub::lease`).
    let freed = results.iter().filter(|r| r.accepted).count();
    let jobs = match lease {
        Some((max, wait)) => Some(take(&hub, &session, max, wait, freed).await?),
        None => None,
    };
    Ok(Json(Completed { results, jobs }))
}

/// Close a session (worker role): attempts it still holds fail with `worker_lost`.
#[utoipa::path(
    delete, path = "/v1/workers/sessions/{session}", tag = "workers", operation_id = "closeWorkerSession",
    params(("session" = String, Path)),
    responses((status = 204, description = "Closed"), (status = 404, body = ErrorBody), (status = 421, description = "This node runs no engine (`no_engine`)", body = ErrorBody))
)]
pub async fn close(State(st): State<ApiState>, Path(session): Path<String>) -> Result<StatusCode, ApiError> {
    hub(&st)?.close(&session).map_err(hub_error)?;
    Ok(StatusCode::NO_CONTENT)
}
