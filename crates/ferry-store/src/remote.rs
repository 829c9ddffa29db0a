//! Remote kinds and the events remote workers write (see ferry-worker's `remote.rs` and
//! `docs/worker-protocol.md`).
//!
//! The store keeps the list of kinds remote workers registered (so that every node accepts
//! their jobs) and writes the progress values and log lines a remote attempt reports to
//! its job's log, fenced by the attempt's number like a finish.

use serde::{Deserialize, Serialize};

/// A kind a remote worker registered, with the queue its jobs go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteKind {
    pub kind: String,
    pub queue: String,
}
