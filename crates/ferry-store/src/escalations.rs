//! What escalation rules read, and how a firing is recorded, once for both backends.
//!
//! The rules themselves are `ferry_core::escalation`'s and the server's evaluator
//! (`ferry_worker::escalation`) applies them; the store answers two calls:
//!
//! - [`crate::Store::escalation_signals`]: every workspace's failed attempts (through the
//!   partial index `events_failed`), jobs gone dead (`dead` events, `events_dead`) and
//!   breakers opened (the `breakers` rows now `open` that changed in the window), within
//!   a look-back of the store's clock, except those of the escalation workspace itself,
//!   so that an escalation never escalates about its own delivery.
//! - [`crate::Store::escalate`]: the rule `rules::escalations::fire`, in one transaction:
//!   one conditional upsert of the `escalations` row `(rule, group)` that succeeds only
//!   when the group never fired or fired at least a window before this evaluation's time
//!   (the store's clock when the signals were read: [`Firing::at`]),
//!   and, only then, the `webhook` job, under the idempotency key
//!   [`idempotency_key`]. Any number of nodes may evaluate the same rule: the row decides
//!   which of them fires, and a crash cannot separate the record from the job.

use crate::{BreakerRecord, FailureRow};
use ferry_core::time::Micros;
use ferry_core::{JobId, NewJob};

/// What an evaluation reads ([`crate::Store::escalation_signals`]).
#[derive(Debug, Clone, Default)]
pub struct SignalRead {
    /// How far back, from the store's clock: the longest window of the rules.
    pub look_back_ms: u64,
    /// The workspace rules never read (the escalation jobs').
    pub exclude_workspace: String,
    /// The most failures and the most dead jobs read, each the newest.
    pub cap: usize,
    /// Which reads the rules need.
    pub failures: bool,
    pub dead: bool,
    pub breakers: bool,
}

/// A failed attempt, or a job's death (its `dead` event, read the same way: the time,
/// the job's queue, kind and target, the error), with the job's workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    pub workspace: String,
    pub row: FailureRow,
}

/// What [`crate::Store::escalation_signals`] found.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The store's clock when it read: windows end here.
    pub now: Micros,
    /// Failed attempts, newest first.
    pub failures: Vec<Occurrence>,
    /// Jobs gone dead, newest first.
    pub dead: Vec<Occurrence>,
    /// Breakers open now that opened (`changed_at`) within the look-back.
    pub opened: Vec<BreakerRecord>,
}

/// A rule's group over its threshold, and the job that tells the endpoint.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: String,
    /// The group's key: the same text on every node for the same group.
    pub group: String,
    /// How long the group stays quiet after it fired.
    pub window_ms: u64,
    /// The evaluation's time: the store's clock when it read ([`Signals::now`]), the end
    /// of the window the group was counted over. A group fires at `at` only if it last
    /// fired at or before `at - window`, so the windows of two firings never overlap
    /// and no failure counts towards two of them.
    pub at: Micros,
    /// The `webhook` job; its idempotency key is set when it fires.
    pub job: NewJob,
}

/// A firing that won: its evaluation's time and its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    pub at: Micros,
    pub job: JobId,
}

/// The idempotency key of the job of `rule`'s firing for `group` at `at`, unique per
/// firing, in the escalation workspace.
pub fn idempotency_key(rule: &str, group: &str, at: Micros) -> String {
    format!("escalation:{rule}:{group}:{at}")
}
