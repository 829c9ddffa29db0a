//! `/v1/limits`: a workspace's concurrency limits (admin). A workspace that never set
//! any has the server's defaults (`default_limits` in the configuration).
//! `/v1/limits/rates`: the workspace's rates on label keys (admin; see
//! `ferry_store::rate`).

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Path};
use crate::views::{LabelRateList, LabelRateView, RateRequest};
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_store::WorkspaceLimits;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node reuses a workspace's limits before reading them again: a change made
/// on another node applies here within this time (on the node that made it, at once).
const FRESH_FOR: Duration = Duration::from_secs(1);

/// Workspaces' limits and queues' run-time settings, read through.
#[derive(Debug, Default)]
pub struct LimitsCache {
    entries: Mutex<HashMap<String, (Instant, WorkspaceLimits)>>,
    queues: Mutex<Option<(Instant, Vec<ferry_store::QueueSettings>)>>,
}

impl LimitsCache {
    /// Forgets the queue settings (after this node changed them).
    pub fn forget_queues(&self) {
        *self.queues.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl ApiState {
    /// The most waiting jobs a queue may hold (0: no cap): its run-time setting, else
    /// the configured one.
    pub async fn queue_cap(&self, queue: &str) -> Result<u64, ApiError> {
        let cached = self.limits.queues.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let settings = match cached {
            Some((at, s)) if at.elapsed() < FRESH_FOR => s,
            _ => {
                let s = self.store.queue_settings().await?;
                *self.limits.queues.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), s.clone()));
                s
            }
        };
        let set = settings.iter().find(|s| s.name == queue).and_then(|s| s.max_depth);
        Ok(set.or_else(|| self.cfg.queue_caps.get(queue).copied()).unwrap_or(0))
    }

    /// The limits in force for a workspace.
    pub async fn limits_of(&self, workspace: &str) -> Result<WorkspaceLimits, ApiError> {
        if let Some((at, limits)) = self.limits.entries.lock().unwrap_or_else(|e| e.into_inner()).get(workspace)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(limits.clone());
        }
        let limits = self.store.workspace_limits(workspace).await?.unwrap_or_else(|| self.cfg.default_limits.clone());
        let mut entries = self.limits.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(workspace.to_string(), (Instant::now(), limits.clone()));
        Ok(limits)
    }
}

/// The most users with limits of their own in one workspace (`users` of
/// `PUT /v1/limits`): every admission reads the workspace's limits, so they stay small.
pub const MAX_LIMIT_USERS: usize = 10_000;

fn check(limits: &WorkspaceLimits) -> Result<(), ApiError> {
    if limits.users.len() > MAX_LIMIT_USERS {
        return Err(ApiError::bad_field(
            "users",
            format!("names {} users; the limit is {MAX_LIMIT_USERS}", limits.users.len()),
        ));
    }
    for user in limits.users.keys() {
        let ok = !user.is_empty()
            && user.len() <= 64
            && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b));
        if !ok {
            return Err(ApiError::bad_field(format!("users.{user}"), "is not a valid user name"));
        }
    }
    Ok(())
}

/// The workspace's concurrency limits (`null`: no limit).
#[utoipa::path(
    get, path = "/v1/limits", tag = "limits", operation_id = "getLimits",
    responses((status = 200, body = WorkspaceLimits))
)]
pub async fn get(State(st): State<ApiState>, caller: Caller) -> Result<Json<WorkspaceLimits>, ApiError> {
    let mut limits = st.limits_of(&caller.workspace).await?;
    limits.tokens_today = Some(st.store.tokens_today(&caller.workspace).await?);
    Ok(Json(limits))
}

/// Set the workspace's concurrency limits (admin). Work already admitted is not affected;
/// new submissions must fit.
#[utoipa::path(
    put, path = "/v1/limits", tag = "limits", operation_id = "setLimits",
    request_body = WorkspaceLimits,
    responses((status = 200, body = WorkspaceLimits), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn put(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(mut limits): JsonBody<WorkspaceLimits>,
) -> Result<Json<WorkspaceLimits>, ApiError> {
    check(&limits)?;
    limits.tokens_today = None;
    st.store.set_workspace_limits(&caller.workspace, limits.clone()).await?;
    st.limits.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&caller.workspace);
    Ok(Json(limits))
}

/// The workspace's rates on label keys.
#[utoipa::path(
    get, path = "/v1/limits/rates", tag = "limits", operation_id = "listLabelRates",
    responses((status = 200, body = LabelRateList), (status = 403, body = ErrorBody))
)]
pub async fn rates(State(st): State<ApiState>, caller: Caller) -> Result<Json<LabelRateList>, ApiError> {
    let rates = st.store.label_rates(&caller.workspace).await?;
    Ok(Json(LabelRateList { rates: rates.into_iter().map(Into::into).collect() }))
}

fn label_key(label: &str) -> Result<(), ApiError> {
    if ferry_core::job::valid_name(label) {
        Ok(())
    } else {
        Err(ApiError::bad_field("label", ferry_core::job::NAME_RULE))
    }
}

/// Set the workspace's rate on a label key (admin), body `{"rate": 5}`: its jobs that
/// carry the label start at most that many times a second for each value of the label,
/// across every worker process; the others pass them by. Applies within a second.
#[utoipa::path(
    put, path = "/v1/limits/rates/{label}", tag = "limits", operation_id = "setLabelRate",
    params(("label" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "Label key: 1 to 64 letters, digits, `_`, `-` or `.`")),
    request_body = RateRequest,
    responses((status = 200, body = LabelRateView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn set_rate(
    State(st): State<ApiState>,
    caller: Caller,
    Path(label): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<LabelRateView>, ApiError> {
    label_key(&label)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_field("", "the body must be a JSON object"))?;
    if let Some(other) = obj.keys().find(|k| *k != "rate") {
        return Err(ApiError::bad_field(other.as_str(), "unknown field; expected rate"));
    }
    let rate = crate::system::rate_field(obj.get("rate").unwrap_or(&serde_json::Value::Null), "")?;
    st.store.set_label_rate(&caller.workspace, &label, Some(rate)).await?;
    Ok(Json(LabelRateView { label, rate }))
}

/// Remove the workspace's rate on a label key (admin).
#[utoipa::path(
    delete, path = "/v1/limits/rates/{label}", tag = "limits", operation_id = "deleteLabelRate",
    params(("label" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "Label key: 1 to 64 letters, digits, `_`, `-` or `.`")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn delete_rate(
    State(st): State<ApiState>,
    caller: Caller,
    Path(label): Path<String>,
) -> Result<StatusCode, ApiError> {
    label_key(&label)?;
    if st.store.set_label_rate(&caller.workspace, &label, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("rate on this label"))
    }
}
