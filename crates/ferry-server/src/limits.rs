//! `/v1/limits`: a workspace's concurrency limits (admin). A workspace that never set
//! any has the server's defaults (`default_limits` in the configuration).

use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
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

fn check(limits: &WorkspaceLimits) -> Result<(), ApiError> {
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
#[utoipa::path(get, path = "/v1/limits", tag = "limits", responses((status = 200, body = WorkspaceLimits)))]
pub async fn get(State(st): State<ApiState>, caller: Caller) -> Result<Json<WorkspaceLimits>, ApiError> {
    Ok(Json(st.limits_of(&caller.workspace).await?))
}

/// Set the workspace's concurrency limits (admin). Work already admitted is not affected;
/// new submissions must fit.
#[utoipa::path(
    put, path = "/v1/limits", tag = "limits",
    request_body = WorkspaceLimits,
    responses((status = 200, body = WorkspaceLimits), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn put(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(limits): JsonBody<WorkspaceLimits>,
) -> Result<Json<WorkspaceLimits>, ApiError> {
    check(&limits)?;
    st.store.set_workspace_limits(&caller.workspace, limits.clone()).await?;
    st.limits.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&caller.workspace);
    Ok(Json(limits))
}
