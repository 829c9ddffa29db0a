//! A JSON body extractor whose refusals speak the API's error format.
//!
//! Axum's own `Json` answers in plain text. This one reads the body (bounded by the
//! router's body limit: over it is a 413 that names the limit), then deserializes with
//! `serde_path_to_error`, so a wrong type deep in a batch is reported as
//! `jobs[3].priority`, not as a line and column. The body is parsed as JSON whatever its
//! content type says: `curl -d` sends a form content type by default.

use crate::ApiState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let limit = state.cfg.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the request body is over the limit of {limit} bytes"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rej.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Deserializes JSON, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", inner.to_string())
        } else {
            ApiError::bad_field(path, inner.to_string())
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("trailing data after the JSON value: {e}"))
    })?;
    Ok(value)
}
