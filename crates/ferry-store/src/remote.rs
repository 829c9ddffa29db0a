//! Remote kinds and the events remote workers write (see ferry-worker's `remote.rs` and
//! `docs/worker-protocol.md`).
//!
//! The store keeps the list of kinds remote workers registered (so that every node accepts
//! their jobs) and writes the progress values and log lines a remote attempt reports to
//! its job's log, fenced by the attempt's number like a finish.

use crate::StoreError;
use async_trait::async_trait;
use ferry_core::JobId;
use serde::{Deserialize, Serialize};

/// A kind a remote worker registered, with the queue its jobs go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteKind {
    pub kind: String,
    pub queue: String,
}

/// What a store keeps of remote kinds and writes for remote attempts (a part of
/// [`crate::Store`], each backend's in its own `remote.rs`).
#[async_trait]
pub trait RemoteStore: Send + Sync {
    /// Registers remote kinds (or moves them to other queues), for every node.
    async fn put_remote_kinds(&self, kinds: &[RemoteKind]) -> Result<(), StoreError>;

    /// Every registered remote kind, by name.
    async fn remote_kinds(&self) -> Result<Vec<RemoteKind>, StoreError>;

    /// Writes events (type, data) to a job's log while it runs under `attempt`, in order:
    /// a remote attempt's progress and log lines. `false` (nothing written) when the
    /// attempt is no longer the job's current one.
    async fn write_job_events(
        &self,
        id: JobId,
        attempt: u32,
        events: Vec<(String, serde_json::Value)>,
    ) -> Result<bool, StoreError>;
}
