//! API errors: one shape for every refusal, with a stable machine-readable `code`.
//!
//! `{"error": {"code": "invalid_field", "message": "…", "field": "jobs[3].priority"}}`.
//! Client mistakes are 4xx and change nothing. A store failure is a 500 (or 503 when the
//! store is unreachable) carrying a `request_id` that is also logged, never a 400.
//!
//! Refusals that are not about a request's content have this shape too: a bad path or
//! query parameter (`invalid_path`, `invalid_query`, see `extract`), a method a path does
//! not have (`405 method_not_allowed`, with `Allow`), a head over Ferry's size limits
//! (`414 uri_too_long`, `431 headers_too_large`) and a body that does not arrive in time
//! (`408 request_timeout`, see `listener`). The only answers that do not are hyper's own,
//! for heads it cannot parse or past its limits: a status line and no body (see
//! `listener`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::SpecError;
use ferry_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_field`, `unknown_kind`, `not_found`, …).
    pub code: String,
    /// Explanation for humans.
    pub message: String,
    /// The offending field, as a path into the request (`jobs[2].input.url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Present on server errors; the same id is in the server's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, request_id: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message).field(field)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    /// A failure on our side: logged with an id the client also gets.
    pub fn internal(status: StatusCode, code: &'static str, detail: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        tracing::error!(request_id = %id, error = %detail, "request failed");
        ApiError {
            status,
            code,
            message: "the server could not complete the request".into(),
            field: None,
            request_id: Some(id),
        }
    }
}

/// The answer to a method a path does not have (the router keeps the `Allow` header).
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this path; the Allow header lists the methods that are"),
    )
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        if e.too_large {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.message).field(e.field)
        } else {
            ApiError::bad_field(e.field, e.message)
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict { key, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("idempotency key `{key}` was already used with a different request"),
            )
            .field("idempotency_key"),
            StoreError::LimitReached(limit) => {
                metrics::counter!("ferry_admission_refused_total", "reason" => format!("{}_{}_limit", limit.scope, limit.what))
                    .increment(1);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", limit.to_string())
            }
            StoreError::QueueFull { .. } => {
                metrics::counter!("ferry_admission_refused_total", "reason" => "queue_full").increment(1);
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", e.to_string()).field("queue")
            }
            StoreError::TokenBudget { .. } => {
                metrics::counter!("ferry_admission_refused_total", "reason" => "token_budget").increment(1);
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "token_budget", e.to_string())
            }
            StoreError::Unavailable(_) => ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e),
            StoreError::Locked(_) | StoreError::Database(_) => {
                ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("ferry_requests_refused_total", "code" => self.code).increment(1);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
                request_id: self.request_id,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
