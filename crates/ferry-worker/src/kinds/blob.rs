//! `blob_put`, `blob_get`, `blob_delete`: steps against the store's blobs
//! (`ferry_store::blobs`), in the job's workspace.
//!
//! - `blob_put`: the content as exactly one of `{"data": <any JSON>}`, `{"text": "…"}`
//!   (UTF-8) or `{"base64": "…"}` (bytes); answers `{"hash", "size"}`. The same content
//!   answers the same hash and is stored once.
//! - `blob_get`: `{"hash": "…"}`; answers the content in the shape it was put
//!   (`{"data": …}`, `{"text": …}` or `{"base64": …}`). A large answer is itself kept as a
//!   blob by the output's claim check. A hash the workspace does not have fails with
//!   `not_found`, which is not retried.
//! - `blob_delete`: `{"hash": "…"}`; answers `{"deleted": bool}`, false when there was no
//!   such blob (not an error).
//!
//! Their default timeouts are 10, 5 and 3 seconds. Each operation is bounded by the
//! attempt's timeout ([`Blobs::within`]): an operation still waiting then (a lock, a slow
//! disk) gives up in the store too, and the attempt ends with `timeout`.

use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry_core::{ErrorType, ExecError, SpecError};
use ferry_store::{BlobError, Blobs, Media};
use serde_json::{Map, Value, json};

/// The content fields of `blob_put`'s input, each a [`Media`].
const CONTENT: [(&str, Media); 3] = [("data", Media::Json), ("text", Media::Text), ("base64", Media::Bytes)];

/// What a blob error means for the attempt.
fn failure(e: BlobError) -> ExecError {
    let kind = match &e {
        BlobError::TimedOut(_) => ErrorType::Timeout,
        BlobError::TooLarge { .. } => ErrorType::ResourceLimit,
        BlobError::NotFound(_) => ErrorType::NotFound,
        BlobError::BadHash(_) => ErrorType::Validation,
        BlobError::NotJson(_) | BlobError::Store(_) => ErrorType::Internal,
    };
    ExecError::new(kind, e.to_string())
}

fn only_fields(input: &Value, allowed: &[&str]) -> Result<(), SpecError> {
    let Value::Object(map) = input else { return Err(SpecError::invalid("input", "must be a JSON object")) };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(SpecError::invalid(
            format!("input.{k}"),
            format!("unknown field; the fields are {}", allowed.join(", ")),
        ));
    }
    Ok(())
}

/// Checks `{"hash": "…"}`.
fn validate_hash(input: &Value) -> Result<(), SpecError> {
    only_fields(input, &["hash"])?;
    match input.get("hash").and_then(Value::as_str) {
        Some(h) if ferry_store::blobs::valid_hash(h) => Ok(()),
        Some(_) => Err(SpecError::invalid("input.hash", "must be a SHA-256 in lowercase hex (64 digits)")),
        None => Err(SpecError::invalid("input.hash", "is required: the blob's hash")),
    }
}

fn hash_of(input: &Value) -> &str {
    input.get("hash").and_then(Value::as_str).unwrap_or_default()
}

/// `blob_put`'s content: its field, media and bytes.
fn content(input: &Value) -> Result<(&'static str, Media, Vec<u8>), SpecError> {
    only_fields(input, &["data", "text", "base64"])?;
    let given: Vec<_> = CONTENT.iter().filter(|(f, _)| input.get(*f).is_some()).collect();
    let [(field, media)] = given.as_slice() else {
        return Err(SpecError::invalid("input", "must hold exactly one of `data` (JSON), `text` or `base64`"));
    };
    let value = &input[*field];
    let bytes = match media {
        Media::Json => serde_json::to_vec(value).unwrap_or_default(),
        Media::Text => {
            value.as_str().ok_or_else(|| SpecError::invalid("input.text", "must be a string"))?.as_bytes().to_vec()
        }
        Media::Bytes => {
            let text = value.as_str().ok_or_else(|| SpecError::invalid("input.base64", "must be a string"))?;
            STANDARD.decode(text).map_err(|e| SpecError::invalid("input.base64", format!("is not base64: {e}")))?
        }
    };
    Ok((field, *media, bytes))
}

/// The `blob_put` kind.
pub struct BlobPut {
    blobs: Blobs,
}

impl BlobPut {
    pub fn new(blobs: Blobs) -> Self {
        BlobPut { blobs }
    }
}

#[async_trait]
impl Executor for BlobPut {
    fn kind(&self) -> &'static str {
        "blob_put"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        let (field, _, bytes) = content(input)?;
        let max = self.blobs.config().max_bytes;
        if bytes.len() as u64 > max {
            return Err(SpecError {
                field: format!("input.{field}"),
                message: format!("is {} bytes; the largest blob is {max} bytes", bytes.len()),
                too_large: true,
            });
        }
        Ok(())
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let (_, media, bytes) = content(&input).map_err(|e| ExecError::new(ErrorType::Validation, e.to_string()))?;
        let put = self.blobs.within(attempt.timeout).put(&attempt.workspace, media, bytes).await.map_err(failure)?;
        Ok(json!({ "hash": put.hash, "size": put.size }))
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(10_000)
    }
}

/// The `blob_get` kind.
pub struct BlobGet {
    blobs: Blobs,
}

impl BlobGet {
    pub fn new(blobs: Blobs) -> Self {
        BlobGet { blobs }
    }
}

#[async_trait]
impl Executor for BlobGet {
    fn kind(&self) -> &'static str {
        "blob_get"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        validate_hash(input)
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let hash = hash_of(&input);
        let blob = self.blobs.within(attempt.timeout).get(&attempt.workspace, hash).await.map_err(failure)?;
        let blob = blob.ok_or_else(|| failure(BlobError::NotFound(hash.to_string())))?;
        let (field, value) = match blob.media {
            Media::Json => {
                ("data", serde_json::from_slice(&blob.data).map_err(|_| failure(BlobError::NotJson(blob.hash)))?)
            }
            Media::Text => ("text", Value::String(String::from_utf8_lossy(&blob.data).into_owned())),
            Media::Bytes => ("base64", Value::String(STANDARD.encode(&blob.data))),
        };
        Ok(Value::Object(Map::from_iter([(field.to_string(), value)])))
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(5_000)
    }
}

/// The `blob_delete` kind.
pub struct BlobDelete {
    blobs: Blobs,
}

impl BlobDelete {
    pub fn new(blobs: Blobs) -> Self {
        BlobDelete { blobs }
    }
}

#[async_trait]
impl Executor for BlobDelete {
    fn kind(&self) -> &'static str {
        "blob_delete"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        validate_hash(input)
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let deleted =
            self.blobs.within(attempt.timeout).delete(&attempt.workspace, hash_of(&input)).await.map_err(failure)?;
        Ok(json!({ "deleted": deleted }))
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(3_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_takes_exactly_one_content_field() {
        assert_eq!(content(&json!({"text": "hi"})).unwrap().2, b"hi");
        assert_eq!(content(&json!({"base64": "aGk="})).unwrap().2, b"hi");
        assert_eq!(content(&json!({"data": {"a": 1}})).unwrap().2, br#"{"a":1}"#);
        assert_eq!(content(&json!({})).unwrap_err().field, "input");
        assert_eq!(content(&json!({"text": "a", "data": 1})).unwrap_err().field, "input");
        assert_eq!(content(&json!({"base64": "!!"})).unwrap_err().field, "input.base64");
        assert_eq!(content(&json!({"text": 3})).unwrap_err().field, "input.text");
        assert_eq!(content(&json!({"text": "a", "x": 1})).unwrap_err().field, "input.x");
    }

    #[test]
    fn a_hash_is_64_lowercase_hex_digits() {
        assert!(validate_hash(&json!({"hash": "a".repeat(64)})).is_ok());
        assert_eq!(validate_hash(&json!({"hash": "A".repeat(64)})).unwrap_err().field, "input.hash");
        assert_eq!(validate_hash(&json!({})).unwrap_err().field, "input.hash");
    }
}
