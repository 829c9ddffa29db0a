//! The executor interface: one implementation per job kind.
//!
//! Adding a kind is one file in [`crate::kinds`] and one line in [`Registry::builtin`] (or,
//! for a kind that needs configuration, in the `ferry` binary's `app::registry`):
//! implement [`Executor::validate`] (checked at submission, so bad input is a 400, not a
//! failed job) and [`Executor::run`].

use async_trait::async_trait;
use ferry_core::{ExecError, JobId, SpecError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What an executor knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job_id: JobId,
    /// The job's workspace (what the kinds that touch stored data act in).
    pub workspace: String,
    /// The attempt's number across the job's whole life (1-based).
    pub number: u32,
    /// Cancelled when the attempt must stop (user cancel, lost lease, shutdown). The
    /// engine also drops the `run` future then; executors that hold resources outside
    /// the future (a child process) watch this token to release them.
    pub cancel: CancellationToken,
    /// The attempt's hard timeout (already cut to the retry budget). The engine drops the
    /// `run` future at this point, unless the kind [`Executor::enforces_timeout`].
    pub timeout: Duration,
    /// The job's `soft_timeout_ms`, when it gave one.
    pub soft_timeout: Option<Duration>,
}

/// When a kind may answer from a recent identical success instead of running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Equal keys mean interchangeable results (scoped to the workspace by the engine).
    pub key: String,
    /// How old a reused success may be.
    pub ttl: Duration,
}

/// Runs jobs of one kind.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// The kind's name.
    fn kind(&self) -> &'static str;

    /// Checks a job's input at submission. Error fields are relative to the job
    /// (`input.url`).
    fn validate(&self, input: &Value) -> Result<(), SpecError>;

    /// Runs one attempt. The future may be dropped at any await point (timeout, cancel).
    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError>;

    /// The kind's `timeout_ms` when a job gives none (`None`: the server's default).
    fn default_timeout_ms(&self) -> Option<u64> {
        None
    }

    /// The kind ends its own attempts at [`Attempt::timeout`] (to report what happened,
    /// as `exec` does); the engine then drops the future only a grace period later.
    fn enforces_timeout(&self) -> bool {
        false
    }

    /// Whether a job with this (valid) input may be answered from the result cache.
    fn cache(&self, _input: &Value) -> Option<CachePolicy> {
        None
    }

    /// The circuit breaker a job with this (valid) input goes through (see
    /// [`ferry_core::breaker`]), unless the job names its own: for kinds that call a
    /// remote, its origin (`scheme://host:port`). `None`: no breaker.
    fn breaker_key(&self, _input: &Value) -> Option<String> {
        None
    }

    /// The ordering key of a job of this kind that names none: its jobs under one key run
    /// one at a time, in submission order (see `JobSpec::ordering_key`). `None`: unordered.
    fn ordering_key(&self, _input: &Value) -> Option<String> {
        None
    }

    /// The queue a job of this kind goes to when it names none (`None`: `default`), so
    /// that a kind whose attempts wait on others (a webhook on a slow endpoint) cannot
    /// take the slots of everything else. The server applies it only when the queue is
    /// configured.
    fn default_queue(&self) -> Option<&'static str> {
        None
    }

    /// Problems that keep this kind from running safely on this host, for `/readyz`
    /// details; empty when there are none.
    fn readiness(&self) -> Option<Value> {
        None
    }
}

/// The kinds this process can run, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Executor>>,
}

impl Registry {
    /// The built-in kinds: `noop`, `sleep`, `fail` and `http`.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        r.register(crate::kinds::Noop);
        r.register(crate::kinds::Sleep);
        r.register(crate::kinds::Fail);
        r.register(crate::kinds::Http::new());
        r
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, executor: impl Executor) {
        self.kinds.insert(executor.kind(), Arc::new(executor));
    }

    /// The executor of a kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Executor>> {
        self.kinds.get(kind).cloned()
    }

    /// Each kind's [`Executor::readiness`] report, for those that have one.
    pub fn readiness(&self) -> BTreeMap<String, Value> {
        self.kinds.iter().filter_map(|(k, e)| Some((k.to_string(), e.readiness()?))).collect()
    }

    /// The registered kinds' names, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}
