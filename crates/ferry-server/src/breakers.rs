//! Circuit breakers (see `ferry_core::breaker`): list them, read one, and force one open,
//! closed, reset, or give it settings of its own.
//!
//! A breaker guards a target every workspace may call (a host, a partner's endpoint), so
//! breakers are the server operator's, like queues: every route here needs the
//! `operator` role. A key is a path segment: percent-encode it
//! (`/v1/breakers/https%3A%2F%2Fapi.example.com%3A443`).

use crate::extract::{JsonBody, Path};
use crate::views::{BreakerChange, BreakerList, BreakerView, ForcedState};
use crate::{ApiError, ApiState, ErrorBody};
use axum::Json;
use axum::extract::State;
use ferry_core::breaker::BreakerSettings;
use ferry_store::{BreakerAction, BreakerOp};
use serde_json::Value;

/// Every breaker the store keeps, by key (operator). A target gets a breaker the first
/// time an attempt through it fails, or an operator sets one.
#[utoipa::path(
    get, path = "/v1/breakers", tag = "system", operation_id = "listBreakers",
    responses((status = 200, body = BreakerList))
)]
pub async fn list(State(st): State<ApiState>) -> Result<Json<BreakerList>, ApiError> {
    let breakers = st.store.breakers(None).await?;
    Ok(Json(BreakerList { breakers: breakers.into_iter().map(BreakerView::from).collect() }))
}

/// One breaker (operator).
#[utoipa::path(
    get, path = "/v1/breakers/{key}", tag = "system", operation_id = "getBreaker",
    params(("key" = String, Path, description = "The breaker's key, percent-encoded")),
    responses((status = 200, body = BreakerView), (status = 404, body = ErrorBody))
)]
pub async fn get(State(st): State<ApiState>, Path(key): Path<String>) -> Result<Json<BreakerView>, ApiError> {
    let found = st.store.breakers(Some(&key)).await?.into_iter().next();
    found.map(|b| Json(b.into())).ok_or_else(|| ApiError::not_found("breaker"))
}

/// Change a breaker (operator): `settings` of its own (`null`: the configured ones),
/// `reset: true` (closed and as new; also what enables a target that said it is gone),
/// `state: "open"` (its jobs wait out the next cool-down) or `"closed"` (the jobs it held
/// back go at once). Every node and worker process sees the change from this answer on.
/// The whole body is checked before anything is written; a body that changes nothing
/// (`{}`, nulls, `reset: false`) answers the breaker as it is (404 if there is none).
#[utoipa::path(
    put, path = "/v1/breakers/{key}", tag = "system", operation_id = "setBreaker",
    params(("key" = String, Path, description = "The breaker's key, percent-encoded")),
    request_body = BreakerChange,
    responses((status = 200, body = BreakerView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn set(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<BreakerView>, ApiError> {
    if key.is_empty() || key.len() > 255 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_field("key", "must be 1 to 255 bytes without spaces or control characters"));
    }
    let actions = actions(&body)?;
    // An open's cool-down, before an operator's own settings, is the configured one.
    let settings = st.cfg.breakers.settings(&key, "").clone();
    let mut last = None;
    for action in actions {
        let op = BreakerOp::Set { settings: settings.clone(), action };
        last = Some(st.store.breaker(&key, op).await?.record);
    }
    // This process's workers read it again now, rather than within a quarter second.
    if let Some(engine) = &st.engine {
        engine.forget_breaker(&key);
    }
    match last {
        Some(b) => Ok(Json(b.into())),
        // Nothing to change: the breaker as it is.
        None => get(State(st), Path(key)).await,
    }
}

/// The body's changes, in the order they apply; every field is checked first.
fn actions(body: &Value) -> Result<Vec<BreakerAction>, ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::bad_field("", "the body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !["settings", "reset", "state"].contains(&k.as_str())) {
        return Err(ApiError::bad_field(k.as_str(), "unknown field; expected settings, reset or state"));
    }
    let mut actions = Vec::new();
    if let Some(v) = obj.get("settings") {
        let s = match v {
            Value::Null => None,
            v => {
                let s: BreakerSettings = serde_json::from_value(v.clone())
                    .map_err(|e| ApiError::bad_field("settings", format!("is not breaker settings: {e}")))?;
                s.validate().map_err(|(field, why)| ApiError::bad_field(format!("settings.{field}"), why))?;
                Some(s)
            }
        };
        actions.push(BreakerAction::Settings(s));
    }
    match obj.get("reset") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        // A reset is a close: as new, disabled or not.
        Some(Value::Bool(true)) => actions.push(BreakerAction::Close),
        Some(_) => return Err(ApiError::bad_field("reset", "must be true or false")),
    }
    if let Some(v) = obj.get("state").filter(|v| !v.is_null()) {
        let state: ForcedState = serde_json::from_value(v.clone())
            .map_err(|_| ApiError::bad_field("state", "must be \"open\" or \"closed\""))?;
        actions.push(match state {
            ForcedState::Open => BreakerAction::Open,
            ForcedState::Closed => BreakerAction::Close,
        });
    }
    Ok(actions)
}

/// Sets the breakers' series from the store's rows at scrape time (right on every node).
/// `/metrics` needs no token and a key is a target's origin or a name a job chose, so only
/// the targets the operator named in `breakers.targets` get series of their own
/// (`ferry_breaker_state{breaker}`: 0 closed, 1 half-open, 2 open, 3 disabled; trips and
/// probes); every breaker is counted in `ferry_breakers{state}` and in the trips and
/// probes of `breaker="all"`.
pub(crate) async fn set_gauges(st: &ApiState) {
    use ferry_core::breaker::BreakerState;
    let Ok(all) = st.store.breakers(None).await else { return };
    let (mut trips, mut probes) = (0, 0);
    for state in BreakerState::ALL {
        let n = all.iter().filter(|b| b.breaker.state == state).count();
        metrics::gauge!("ferry_breakers", "state" => state.as_str()).set(n as f64);
    }
    for b in &all {
        trips += b.breaker.trips;
        probes += b.breaker.probes;
        if !st.cfg.breakers.targets.contains_key(&b.key) {
            continue;
        }
        let state = match b.breaker.state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
            BreakerState::Disabled => 3.0,
        };
        metrics::gauge!("ferry_breaker_state", "breaker" => b.key.clone()).set(state);
        metrics::counter!("ferry_breaker_trips_total", "breaker" => b.key.clone()).absolute(b.breaker.trips);
        metrics::counter!("ferry_breaker_probes_total", "breaker" => b.key.clone()).absolute(b.breaker.probes);
    }
    metrics::counter!("ferry_breaker_trips_total", "breaker" => "all").absolute(trips);
    metrics::counter!("ferry_breaker_probes_total", "breaker" => "all").absolute(probes);
}
