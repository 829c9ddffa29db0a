//! Extractors whose refusals speak the API's error format: a JSON body ([`JsonBody`]),
//! path parameters and query strings ([`Path`], [`Query`]).
//!
//! The body is parsed into a JSON value, checked for objects where the request types need
//! them ([`Shape`]), then converted.
//!
//! Axum's own `Json` answers in plain text. This one checks the head first: a
//! `Content-Length` over the router's body limit is `413 payload_too_large` at once,
//! before a byte of the body is read, and a `Content-Type` other than JSON is
//! `415 unsupported_media_type`. Accepted are no `Content-Type`, `application/json`
//! and any `application/…+json`, and `application/x-www-form-urlencoded`, which is what
//! `curl -d` sends by default: whatever the content type says, the body is parsed as
//! JSON. A `charset` parameter other than UTF-8 is refused (JSON is UTF-8).
//!
//! Then it reads the body (bounded by the body limit: a body without `Content-Length`
//! that runs over it is a 413 too; bounded in time by the listener: a body that does not
//! arrive within `http.body_timeout_ms` is `408 request_timeout`), parses it in one pass
//! refusing duplicate keys (`400 duplicate_key` naming the path, see [`strict`]), and
//! deserializes with `serde_path_to_error`, so a wrong type deep in a batch is reported as
//! `jobs[3].priority`, not as a line and column.

mod params;
mod strict;

pub use params::{Path, Query};

use crate::ApiState;
use crate::error::ApiError;
use crate::views::BatchRequest;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use ferry_core::JobSpec;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Shape> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let limit = state.cfg.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over the limit of {limit} bytes"),
            )
        };
        content_type(req.headers())?;
        if content_length(req.headers()).is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if let Some(timeout) = find_source::<crate::listener::BodyTimedOut>(&rej) {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", timeout.to_string())
            } else if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rej.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The declared body length, if it is one number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Refuses a body whose `Content-Type` is not one Ferry reads as JSON (module docs).
fn content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let refuse = |why: String| {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", why).field("Content-Type")
    };
    let text = value.to_str().map_err(|_| refuse("the Content-Type is not visible ASCII".into()))?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json && essence != "application/x-www-form-urlencoded" {
        return Err(refuse(format!(
            "`{essence}` is not accepted; send JSON as application/json (or with no Content-Type)"
        )));
    }
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(refuse(format!("charset `{value}` is not accepted; JSON is UTF-8")));
        }
    }
    Ok(())
}

/// The first error of type `E` in `err`'s chain of sources.
fn find_source<'a, E: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Objects where the request's types expect them. Serde's derived structs also accept a
/// JSON array (fields by position), which would let `["sleep", {"ms": 1}]` through as a
/// job; a request type lists here where it needs objects, and anything else is refused.
pub trait Shape {
    /// Checks the parsed body before it is converted.
    fn check(body: &Value) -> Result<(), ApiError>;
}

pub(crate) fn must_be_object(v: &Value, field: &str) -> Result<(), ApiError> {
    if v.is_object() {
        return Ok(());
    }
    let what = if field.is_empty() { "the body".to_string() } else { format!("`{field}`") };
    let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{what} must be a JSON object"));
    Err(if field.is_empty() { ApiError { code: "invalid_body", ..err } } else { err.field(field) })
}

fn check_spec(spec: &Value, prefix: &str) -> Result<(), ApiError> {
    must_be_object(spec, prefix)?;
    if let Some(b) = spec.get("backoff").filter(|b| !b.is_null()) {
        let field = if prefix.is_empty() { "backoff".to_string() } else { format!("{prefix}.backoff") };
        must_be_object(b, &field)?;
    }
    Ok(())
}

impl Shape for JobSpec {
    fn check(body: &Value) -> Result<(), ApiError> {
        check_spec(body, "")
    }
}

impl Shape for BatchRequest {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")?;
        if let Some(Value::Array(jobs)) = body.get("jobs") {
            for (i, spec) in jobs.iter().enumerate() {
                check_spec(spec, &format!("jobs[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// Parses JSON into `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned + Shape>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = strict::parse_value(bytes).map_err(|e| match e {
        strict::ParseError::Malformed(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {e}"))
        }
        strict::ParseError::Duplicate(path) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "duplicate_key",
            format!("`{path}` appears twice in its object; give each key once"),
        )
        .field(path),
    })?;
    T::check(&value)?;
    let value = crate::numbers::whole_floats_as_integers(value);
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Serde reports a missing field at the object that lacks it; name the field itself.
        let missing = inner.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_string(),
            (_, Some(name)) => format!("{path}.{name}"),
            (".", None) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", inner),
            (_, None) => path,
        };
        ApiError::bad_field(field, inner)
    })
}

impl Shape for ferry_core::workflow::WorkflowSpec {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")?;
        if let Some(Value::Array(nodes)) = body.get("nodes") {
            for (i, node) in nodes.iter().enumerate() {
                check_spec(node, &format!("nodes[{i}]"))?;
            }
        }
        Ok(())
    }
}

impl Shape for crate::views::RunRequest {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")
    }
}

impl Shape for ferry_core::schedule::ScheduleSpec {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")?;
        if let Some(job) = body.get("job").filter(|j| !j.is_null()) {
            check_spec(job, "job")?;
        }
        for field in ["run", "catch_up"] {
            if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
                must_be_object(v, field)?;
            }
        }
        Ok(())
    }
}

impl Shape for crate::views::TokenRequest {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")
    }
}

impl Shape for ferry_store::WorkspaceLimits {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")?;
        for pair in ["per_workspace", "per_user"] {
            if let Some(v) = body.get(pair).filter(|v| !v.is_null()) {
                must_be_object(v, pair)?;
            }
        }
        if let Some(Value::Object(users)) = body.get("users") {
            for (user, v) in users {
                must_be_object(v, &format!("users.{user}"))?;
            }
        }
        // Token counts are kept as signed 64-bit integers: the documented range (a whole
        // float is a whole number, as everywhere: `crate::numbers`).
        let in_range = |v: &Value| match v.as_u64() {
            Some(n) => n <= i64::MAX as u64,
            None => v.as_f64().is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f < i64::MAX as f64),
        };
        for field in ["tokens_per_day", "tokens_today"] {
            if let Some(v) = body.get(field).filter(|v| !v.is_null())
                && !in_range(v)
            {
                return Err(ApiError::bad_field(field, format!("must be a whole number from 0 to {}", i64::MAX)));
            }
        }
        Ok(())
    }
}

/// Merges the `Idempotency-Key` header into a body's `idempotency_key`: either may be
/// given, or both when they are equal.
pub fn idempotency_key(headers: &axum::http::HeaderMap, body: &mut Option<String>) -> Result<(), ApiError> {
    let Some(h) = headers.get("idempotency-key") else { return Ok(()) };
    let h = h.to_str().map_err(|_| ApiError::bad_field("Idempotency-Key", "must be visible ASCII"))?;
    match body {
        Some(k) if k != h => Err(ApiError::bad_field(
            "idempotency_key",
            "differs from the Idempotency-Key header; give one or make them equal",
        )),
        _ => {
            *body = Some(h.to_string());
            Ok(())
        }
    }
}

impl Shape for Value {
    fn check(body: &Value) -> Result<(), ApiError> {
        must_be_object(body, "")
    }
}
