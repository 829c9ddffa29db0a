//! `/v1/blobs/{hash}`, and the API's side of claim checks (see `ferry_store::blobs`).
//!
//! A blob is read in the caller's workspace only: another workspace's blob answers 404
//! like a missing one. Its bytes come back as they were put, with the content type its
//! media says (`application/json`, `text/plain; charset=utf-8`,
//! `application/octet-stream`) and its hash as a strong `ETag`, so `sha256sum` of the
//! answer is the hash in its URL.
//!
//! Claim checks at submission: [`ApiState::claim_check`] decides (in `validate`, before
//! anything is stored) whether a job's input stays inline or is kept as a blob, and
//! [`store_claim_checks`] stores those blobs before the jobs that reference them, so a
//! stored job never references a missing blob (a crash between the two leaves an unused
//! blob, which retention prunes).

use crate::extract::Path;
use crate::{ApiError, ApiState, Caller, ErrorBody};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_store::blobs::{ClaimCheck, parse_reference, valid_hash};
use ferry_store::{BlobError, Media};
use serde_json::Value;

/// A blob's bytes, by hash, in the caller's workspace.
///
/// The hash is the SHA-256 of the bytes, in lowercase hex: a `blob_put` job's output, or
/// the `hash` of a claim-check reference (`{"$blob": {"hash", "size"}}`) in a job's input
/// or output.
#[utoipa::path(
    get, path = "/v1/blobs/{hash}", tag = "blobs", operation_id = "getBlob",
    params(("hash" = String, Path, pattern = "^[0-9a-f]{64}$", description = "The blob's SHA-256, 64 lowercase hex digits")),
    responses(
        (status = 200, description = "The blob's bytes, as they were put; `ETag` is the hash",
            headers(("ETag" = String, description = "The hash, quoted")),
            content(
                (serde_json::Value = "application/json"),
                (String = "text/plain"),
                (String = "application/octet-stream"),
            )),
        (status = 404, description = "No such blob in this workspace", body = ErrorBody),
    )
)]
pub async fn get(State(st): State<ApiState>, caller: Caller, Path(hash): Path<String>) -> Result<Response, ApiError> {
    if !valid_hash(&hash) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("`{hash}` is not a blob hash (64 lowercase hex digits)"),
        )
        .field("hash"));
    }
    let blob =
        st.blobs.get(&caller.workspace, &hash).await.map_err(error)?.ok_or_else(|| ApiError::not_found("blob"))?;
    let content_type = match blob.media {
        Media::Json => "application/json",
        Media::Text => "text/plain; charset=utf-8",
        Media::Bytes => "application/octet-stream",
    };
    let etag = HeaderValue::from_str(&format!("\"{hash}\""))
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e))?;
    let mut resp = (StatusCode::OK, blob.data).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::ETAG, etag);
    Ok(resp)
}

/// A blob store failure as an answer: a store that did not answer in time is unavailable.
pub(crate) fn error(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge { size, max } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("is {size} bytes; the largest blob is {max} bytes"),
        ),
        BlobError::BadHash(_) | BlobError::NotFound(_) | BlobError::NotJson(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string())
        }
        BlobError::TimedOut(_) => ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e),
        BlobError::Store(e) => e.into(),
    }
}

impl ApiState {
    /// What becomes of a job's input: `Ok(None)` when it stays inline (at most
    /// `blobs.claim_check_bytes`, or a reference the client passed on), else the claim
    /// check to store. Refuses a `$blob` object that is not exactly a reference (400) and
    /// an input over `blobs.max_bytes` (413), naming `input`.
    pub(crate) fn claim_check(&self, input: &Value) -> Result<Option<ClaimCheck>, ApiError> {
        if let Some(parsed) = parse_reference(input) {
            return parsed.map(|_| None).map_err(|m| ApiError::bad_field("input", m));
        }
        self.blobs.claim_check(input).map_err(|e| match e {
            BlobError::TooLarge { size, max } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("is {size} bytes; the largest input (kept as a blob) is {max} bytes"),
            )
            .field("input"),
            other => error(other),
        })
    }
}

/// Stores the claim-checked inputs of a submission (before its jobs).
pub(crate) async fn store_claim_checks(
    st: &ApiState,
    caller: &Caller,
    checks: Vec<ClaimCheck>,
) -> Result<(), ApiError> {
    for check in checks {
        st.blobs.put(&caller.workspace, Media::Json, check.data).await.map_err(error)?;
    }
    Ok(())
}
