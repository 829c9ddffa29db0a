//! Blobs: content-addressed bytes of a workspace, for payloads too large for a job row.
//!
//! A blob is addressed by the SHA-256 of its bytes (64 lowercase hex digits) *within its
//! workspace*: the key is `(workspace, hash)`, so a workspace never reads, learns of or
//! deletes another's blob, even one with the same bytes. Each blob carries its [`Media`]
//! (JSON, UTF-8 text or raw bytes), which says how the `blob_get` kind and
//! `GET /v1/blobs/{hash}` hand it back.
//!
//! The rule is written once here, in [`Blobs`]: hashing, the size limit
//! (`[blobs] max_bytes`), the hash's syntax (it becomes a file name on SQLite), the wait
//! bound of every operation, and claim checks (below). A backend is the thin
//! [`BlobBackend`]: store these bytes under this key unless they are there, read, delete,
//! prune. SQLite keeps files in the data directory (`sqlite/blobs.rs`); PostgreSQL a
//! table every node reaches (`postgres/blobs.rs`).
//!
//! - **Put is idempotent.** The same bytes make the same hash; a second put stores
//!   nothing and only marks the blob used. The media of the first put stays (a blob is
//!   its bytes; the media is how they were first described).
//! - **Delete** answers whether the blob existed; a missing blob is not an error.
//! - **Every operation is bounded in time** ([`Blobs::within`], 60 s unless cut): a
//!   backend that waits (a lock, a slow disk) gives up at the bound with
//!   [`BlobError::TimedOut`], and gives up *for good*: a put that timed out stores
//!   nothing later (SQLite checks before its rename; PostgreSQL's `statement_timeout`
//!   ends the statement in the database), so a job kind whose attempt timed out leaves
//!   no work running behind it.
//! - **Retention**: a blob unused (not put, read or claim-checked) for longer than the
//!   jobs' `retention_ms` is pruned by the pruning task ([`BlobBackend::prune`]). Use is
//!   what counts, not references: a dead job kept past the retention whose claim-checked
//!   input went unread loses it, and its replay fails with `not_found`.
//!
//! ## Claim checks
//!
//! A JSON value over `[blobs] claim_check_bytes` (a job's input at submission, an
//! attempt's output before it is recorded) is stored as a JSON blob and replaced by a
//! reference: `{"$blob": {"hash": "…", "size": N}}`. `$blob` is reserved: an input
//! object with a top-level `$blob` key must be exactly such a reference (the API refuses
//! anything else with that key), so a reference is never mistaken for a payload. The
//! worker resolves an input reference back to the content before the kind runs
//! ([`Blobs::resolve`]); a reference to a missing blob is a `not_found` failure.

use crate::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reserved key of a claim-check reference.
pub const REF_KEY: &str = "$blob";
/// The largest `[blobs] max_bytes` accepted: a blob is held in memory whole while it is
/// written or read, and PostgreSQL's `bytea` stops at 1 GiB.
pub const MAX_BLOB_BYTES_CEILING: u64 = 512 * 1024 * 1024;
/// How long an operation may wait unless [`Blobs::within`] cuts it.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// A read marks a blob used only when its last use is at least this old, so that reads
/// do not each write.
pub const TOUCH_AFTER: Duration = Duration::from_secs(60);

/// The `[blobs]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobsConfig {
    /// The largest blob, in bytes (a `blob_put`, a claim-checked input or output).
    pub max_bytes: u64,
    /// A job input or an attempt output whose serialized JSON is over this many bytes is
    /// kept as a blob and referenced (a claim check).
    pub claim_check_bytes: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        BlobsConfig { max_bytes: 64 * 1024 * 1024, claim_check_bytes: 256 * 1024 }
    }
}

impl BlobsConfig {
    /// Checks the settings against each other and the inline limits: a value that may stay
    /// inline (up to `claim_check_bytes`) must fit the inline input and output limits.
    pub fn validate(&self, max_input_bytes: usize, max_output_bytes: usize) -> Result<(), String> {
        if self.max_bytes == 0 || self.max_bytes > MAX_BLOB_BYTES_CEILING {
            return Err(format!("blobs.max_bytes must be between 1 and {MAX_BLOB_BYTES_CEILING}"));
        }
        if self.claim_check_bytes == 0 || self.claim_check_bytes > self.max_bytes {
            return Err("blobs.claim_check_bytes must be between 1 and blobs.max_bytes".into());
        }
        let inline = max_input_bytes.min(max_output_bytes) as u64;
        if self.claim_check_bytes > inline {
            return Err(format!(
                "blobs.claim_check_bytes ({}) must be at most limits.max_input_bytes and limits.max_output_bytes \
                 ({inline}): what stays inline must fit them",
                self.claim_check_bytes
            ));
        }
        Ok(())
    }
}

/// How a blob's bytes are to be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    /// A JSON document (claim checks; `blob_put`'s `data`).
    Json,
    /// UTF-8 text (`blob_put`'s `text`).
    Text,
    /// Raw bytes (`blob_put`'s `base64`).
    Bytes,
}

impl Media {
    /// Every media, in the order a backend looks for them.
    pub const ALL: [Media; 3] = [Media::Json, Media::Text, Media::Bytes];

    /// The stable name (also the column's value on PostgreSQL).
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Json => "json",
            Media::Text => "text",
            Media::Bytes => "bytes",
        }
    }

    /// The media named `s`.
    pub fn parse(s: &str) -> Option<Media> {
        Media::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Where a blob is: its hash and size, what a put answers and a reference carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: String,
    pub size: u64,
}

/// A blob read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub hash: String,
    pub media: Media,
    pub data: Vec<u8>,
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Over `[blobs] max_bytes`; nothing was stored.
    #[error("is {size} bytes; the largest blob is {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// Not 64 lowercase hex digits.
    #[error("`{0}` is not a blob hash (64 lowercase hex digits)")]
    BadHash(String),
    /// A reference names a blob the workspace does not have.
    #[error("no blob {0} in this workspace")]
    NotFound(String),
    /// A reference's blob is not JSON.
    #[error("blob {0} is not JSON")]
    NotJson(String),
    /// The operation did not finish within its bound; it changed nothing.
    #[error("the blob store did not answer within {0} ms")]
    TimedOut(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A backend's part of the blob store (see the module docs): plain storage under
/// `(workspace, hash)`, the hash already checked and computed by [`Blobs`]. Each
/// operation gives up at `until` with [`BlobError::TimedOut`], changing nothing.
#[async_trait]
pub trait BlobBackend: Send + Sync + 'static {
    /// Stores `data` unless the key holds it already; either way marks it used now.
    async fn put(
        &self,
        workspace: &str,
        hash: &str,
        media: Media,
        data: Vec<u8>,
        until: Instant,
    ) -> Result<(), BlobError>;

    /// The blob's media and bytes, marking it used (see [`TOUCH_AFTER`]); `None`: absent.
    async fn get(&self, workspace: &str, hash: &str, until: Instant) -> Result<Option<(Media, Vec<u8>)>, BlobError>;

    /// Deletes the blob; whether it existed.
    async fn delete(&self, workspace: &str, hash: &str, until: Instant) -> Result<bool, BlobError>;

    /// Deletes up to `limit` blobs of any workspace unused for more than `unused_for_ms`;
    /// how many. Callers repeat while it returns `limit`.
    async fn prune(&self, unused_for_ms: u64, limit: usize) -> Result<usize, StoreError>;
}

/// The SHA-256 of `data`, as 64 lowercase hex digits.
pub fn hash_of(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether `hash` is 64 lowercase hex digits (so it is safe as a file name).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_hash(hash: &str) -> Result<(), BlobError> {
    if valid_hash(hash) { Ok(()) } else { Err(BlobError::BadHash(hash.to_string())) }
}

/// The claim-check reference to a JSON blob.
pub fn reference(r: &BlobRef) -> Value {
    json!({ REF_KEY: { "hash": r.hash, "size": r.size } })
}

/// What `value` says about claim checks: `None` when it is no reference (no top-level
/// `$blob` key); `Some(Err)` when it has the key but is not exactly a reference.
pub fn parse_reference(value: &Value) -> Option<Result<BlobRef, String>> {
    let obj = value.as_object()?;
    let inner = obj.get(REF_KEY)?;
    let bad = || Err(format!("`{REF_KEY}` is reserved for claim checks: {{\"{REF_KEY}\": {{\"hash\", \"size\"}}}}"));
    if obj.len() != 1 {
        return Some(bad());
    }
    let Some(fields) = inner.as_object().filter(|f| f.len() == 2) else { return Some(bad()) };
    let (Some(hash), Some(size)) =
        (fields.get("hash").and_then(Value::as_str), fields.get("size").and_then(Value::as_u64))
    else {
        return Some(bad());
    };
    if !valid_hash(hash) {
        return Some(Err(format!("`{hash}` is not a blob hash (64 lowercase hex digits)")));
    }
    Some(Ok(BlobRef { hash: hash.to_string(), size }))
}

/// A value to keep as a blob: its reference, and the bytes to store under it.
#[derive(Debug, Clone)]
pub struct ClaimCheck {
    pub reference: Value,
    pub blob: BlobRef,
    pub data: Vec<u8>,
}

/// The blob store: the rule over a backend (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    backend: Arc<dyn BlobBackend>,
    cfg: BlobsConfig,
    wait: Duration,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("cfg", &self.cfg).field("wait", &self.wait).finish()
    }
}

impl Blobs {
    /// The store over `backend` (a store's [`crate::Store::blobs`]) with `cfg`'s limits.
    pub fn new(backend: Arc<dyn BlobBackend>, cfg: BlobsConfig) -> Self {
        Blobs { backend, cfg, wait: DEFAULT_WAIT }
    }

    /// The settings.
    pub fn config(&self) -> &BlobsConfig {
        &self.cfg
    }

    /// The same store, each operation bounded by `wait` (a kind's attempt timeout).
    pub fn within(&self, wait: Duration) -> Blobs {
        Blobs { wait: wait.min(self.wait), ..self.clone() }
    }

    /// When an operation started now must give up.
    fn until(&self) -> Instant {
        Instant::now() + self.wait
    }

    async fn bounded<T>(&self, op: impl std::future::Future<Output = Result<T, BlobError>>) -> Result<T, BlobError> {
        let ms = u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX);
        // The backend gives up at its `until` by itself; this is the net under it.
        match tokio::time::timeout(self.wait + Duration::from_secs(1), op).await {
            Ok(r) => r,
            Err(_) => Err(BlobError::TimedOut(ms)),
        }
    }

    /// Stores `data` (at most `max_bytes`) and answers its hash and size.
    pub async fn put(&self, workspace: &str, media: Media, data: Vec<u8>) -> Result<BlobRef, BlobError> {
        let size = data.len() as u64;
        if size > self.cfg.max_bytes {
            return Err(BlobError::TooLarge { size, max: self.cfg.max_bytes });
        }
        let hash = hash_of(&data);
        let key = hash.clone();
        self.bounded(self.backend.put(workspace, &key, media, data, self.until())).await?;
        Ok(BlobRef { hash, size })
    }

    /// The blob, or `None` when the workspace has no blob of that hash.
    pub async fn get(&self, workspace: &str, hash: &str) -> Result<Option<Blob>, BlobError> {
        check_hash(hash)?;
        let found = self.bounded(self.backend.get(workspace, hash, self.until())).await?;
        Ok(found.map(|(media, data)| Blob { hash: hash.to_string(), media, data }))
    }

    /// Deletes the blob; whether it existed.
    pub async fn delete(&self, workspace: &str, hash: &str) -> Result<bool, BlobError> {
        check_hash(hash)?;
        self.bounded(self.backend.delete(workspace, hash, self.until())).await
    }

    /// Deletes blobs unused for more than `unused_for_ms`, `batch` at a time; how many.
    pub async fn prune(&self, unused_for_ms: u64, batch: usize) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.backend.prune(unused_for_ms, batch).await?;
            total += n;
            if n < batch {
                return Ok(total);
            }
        }
    }

    /// The claim check `value` needs: `None` when its JSON is at most `claim_check_bytes`
    /// (it stays inline), else its reference and bytes. Refuses a value over `max_bytes`.
    pub fn claim_check(&self, value: &Value) -> Result<Option<ClaimCheck>, BlobError> {
        // Counted as it is written: a value far over the limit is not serialized whole
        // only to be refused (the write stops at the first byte past `max_bytes`).
        let data = serialize_within(value, self.cfg.max_bytes)?;
        if data.len() as u64 <= self.cfg.claim_check_bytes {
            return Ok(None);
        }
        let blob = BlobRef { hash: hash_of(&data), size: data.len() as u64 };
        Ok(Some(ClaimCheck { reference: reference(&blob), blob, data }))
    }

    /// Keeps `value` as a blob when it is over `claim_check_bytes`: answers the reference
    /// then, else the value itself.
    pub async fn check_in(&self, workspace: &str, value: Value) -> Result<Value, BlobError> {
        match self.claim_check(&value)? {
            None => Ok(value),
            Some(check) => {
                self.put(workspace, Media::Json, check.data).await?;
                Ok(check.reference)
            }
        }
    }

    /// The content a claim-check reference stands for; any other value as it is.
    pub async fn resolve(&self, workspace: &str, value: Value) -> Result<Value, BlobError> {
        let Some(parsed) = parse_reference(&value) else { return Ok(value) };
        let r = parsed.map_err(|_| BlobError::BadHash(value.to_string()))?;
        let blob = self.get(workspace, &r.hash).await?.ok_or_else(|| BlobError::NotFound(r.hash.clone()))?;
        serde_json::from_slice(&blob.data).map_err(|_| BlobError::NotJson(r.hash))
    }
}

/// `value` as compact JSON, refused as soon as it passes `max` bytes.
fn serialize_within(value: &Value, max: u64) -> Result<Vec<u8>, BlobError> {
    struct Capped {
        buf: Vec<u8>,
        max: u64,
        over: u64,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.buf.len() as u64 + data.len() as u64 > self.max {
                self.over = self.buf.len() as u64 + data.len() as u64;
                return Err(std::io::Error::other("over the limit"));
            }
            self.buf.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped { buf: Vec::new(), max, over: 0 };
    match serde_json::to_writer(&mut out, value) {
        Ok(()) => Ok(out.buf),
        // Only the cap fails a write to memory.
        Err(_) => Err(BlobError::TooLarge { size: out.over, max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_exact() {
        let h = hash_of(b"x");
        assert_eq!(parse_reference(&json!({"a": 1})), None);
        assert_eq!(parse_reference(&json!([1])), None);
        let r = BlobRef { hash: h.clone(), size: 1 };
        assert_eq!(parse_reference(&reference(&r)), Some(Ok(r)));
        assert!(matches!(parse_reference(&json!({"$blob": {"hash": h, "size": 1}, "b": 2})), Some(Err(_))));
        assert!(matches!(parse_reference(&json!({"$blob": {"hash": "../x", "size": 1}})), Some(Err(_))));
        assert!(matches!(parse_reference(&json!({"$blob": 3})), Some(Err(_))));
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let ok = BlobsConfig::default();
        assert_eq!(ok.validate(1 << 20, 4 << 20), Ok(()));
        let refused = |c: BlobsConfig, input: usize| c.validate(input, 4 << 20).unwrap_err();
        assert!(refused(BlobsConfig { max_bytes: 0, ..ok.clone() }, 1 << 20).contains("blobs.max_bytes"));
        let huge = BlobsConfig { max_bytes: MAX_BLOB_BYTES_CEILING + 1, ..ok.clone() };
        assert!(refused(huge, 1 << 20).contains("blobs.max_bytes"));
        assert!(refused(BlobsConfig { claim_check_bytes: 0, ..ok.clone() }, 1 << 20).contains("claim_check_bytes"));
        let over = BlobsConfig { max_bytes: 100, claim_check_bytes: 101 };
        assert!(refused(over, 1 << 20).contains("claim_check_bytes"));
        // What stays inline must fit the inline limits.
        assert!(refused(ok, 1000).contains("limits.max_input_bytes"));
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(hash_of(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(valid_hash(&hash_of(b"")));
        assert!(!valid_hash(&hash_of(b"").to_uppercase()));
    }

    #[test]
    fn serializing_stops_past_the_cap() {
        let v = json!({"a": "x".repeat(100)});
        let n = serde_json::to_vec(&v).unwrap().len() as u64;
        assert_eq!(serialize_within(&v, n).unwrap().len() as u64, n);
        assert!(matches!(serialize_within(&v, n - 1), Err(BlobError::TooLarge { .. })));
    }
}
