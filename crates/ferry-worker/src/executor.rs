//! The executor interface: one implementation per job kind.
//!
//! Adding a kind is one file in [`crate::kinds`] and one line in [`Registry::builtin`] (or,
//! for a kind that needs configuration, in the `ferry` binary's `app::registry`):
//! implement [`Executor::validate`] (checked at submission, so bad input is a 400, not a
//! failed job) and [`Executor::run`].

use async_trait::async_trait;
use ferry_core::run::{RunId, RunState};
use ferry_core::{ExecError, JobId, SpecError};
use ferry_store::{Advanced, CreateRunOutcome, NewRun, Planner, Store, StoreError, WorkspaceLimits};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::remote::{Remote, RemoteExecutor};

/// What an executor knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job_id: JobId,
    /// The job's kind and queue (what a remote kind's worker is told).
    pub kind: String,
    pub queue: String,
    /// The job's workspace (what the kinds that touch stored data act in).
    pub workspace: String,
    /// The user who submitted the job (or started the run it belongs to): whom a kind
    /// that starts work of its own acts as.
    pub user: String,
    /// The run the job is a node (or an agent's tool call) of.
    pub run: Option<RunId>,
    /// The attempt's number across the job's whole life (1-based).
    pub number: u32,
    /// Cancelled when the attempt must stop (user cancel, lost lease, shutdown). The
    /// engine also drops the `run` future then; executors that hold resources outside
    /// the future (a child process) watch this token to release them.
    pub cancel: CancellationToken,
    /// When the attempt started here: its timeout counts from this.
    pub started: std::time::Instant,
    /// The attempt's hard timeout (already cut to the retry budget). The engine drops the
    /// `run` future at this point, unless the kind [`Executor::enforces_timeout`].
    pub timeout: Duration,
    /// The job's `soft_timeout_ms`, when it gave one.
    pub soft_timeout: Option<Duration>,
    /// Workflow runs, as this process's engine starts and cancels them.
    pub runs: Runs,
}

/// Workflow runs as an attempt may start and cancel them (the `workflow` kind runs one
/// and waits for it): through the store with the engine's own planner and configured
/// default limits, the jobs a cancel stopped stopping here at once (a cancel made
/// elsewhere reaches them through the store's cancel channel or the next heartbeat).
#[derive(Clone)]
pub struct Runs(Arc<RunsInner>);

struct RunsInner {
    store: Arc<dyn Store>,
    planner: Planner,
    default_limits: WorkspaceLimits,
    /// Stops this process's attempt of a job, if it runs one.
    stop: Box<dyn Fn(JobId) + Send + Sync>,
}

impl Runs {
    /// Runs over `store` with `planner`; `default_limits` are a workspace's when it stores
    /// none; `stop` stops this process's attempt of a job the store cancelled.
    pub fn new(
        store: Arc<dyn Store>,
        planner: Planner,
        default_limits: WorkspaceLimits,
        stop: impl Fn(JobId) + Send + Sync + 'static,
    ) -> Runs {
        Runs(Arc::new(RunsInner { store, planner, default_limits, stop: Box::new(stop) }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    /// The workspace's limits: its own, else the configured defaults.
    pub async fn limits(&self, workspace: &str) -> Result<WorkspaceLimits, StoreError> {
        Ok(self.0.store.workspace_limits(workspace).await?.unwrap_or_else(|| self.0.default_limits.clone()))
    }

    /// Starts a run, or finds the one its idempotency key names (see
    /// [`Store::create_run`]).
    pub async fn create(&self, run: NewRun) -> Result<CreateRunOutcome, StoreError> {
        let (outcome, advanced) = self.0.store.create_run(run, self.0.planner.clone()).await?;
        self.stop_local(&advanced);
        if matches!(outcome, CreateRunOutcome::Created { .. }) {
            metrics::counter!("ferry_runs_started_total").increment(1);
        }
        Ok(outcome)
    }

    /// Cancels a run (see [`Store::cancel_run`]); its state after, `None` when there is
    /// no such run.
    pub async fn cancel(&self, workspace: &str, id: RunId) -> Result<Option<RunState>, StoreError> {
        let (state, advanced) = self.0.store.cancel_run(workspace, id, self.0.planner.clone()).await?;
        self.stop_local(&advanced);
        Ok(state)
    }

    fn stop_local(&self, advanced: &Advanced) {
        for id in &advanced.stopped {
            (self.0.stop)(*id);
        }
    }
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("store", &self.0.store.backend()).finish_non_exhaustive()
    }
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

/// The kinds this process can run, by name: the built-in ones, and the remote kinds
/// workers registered (see [`crate::remote`]), all run by one [`RemoteExecutor`].
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Executor>>,
    remote: Arc<Remote>,
    remote_executor: Arc<dyn Executor>,
}

impl Default for Registry {
    fn default() -> Self {
        let remote = Arc::new(Remote::default());
        Registry {
            kinds: BTreeMap::new(),
            remote_executor: Arc::new(RemoteExecutor { remote: remote.clone() }),
            remote,
        }
    }
}

impl Registry {
    /// The built-in kinds: `noop`, `sleep`, `fail`, `http` and `workflow`.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        r.register(crate::kinds::Noop);
        r.register(crate::kinds::Sleep);
        r.register(crate::kinds::Fail);
        r.register(crate::kinds::Http::new());
        r.register(crate::kinds::Workflow);
        r
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, executor: impl Executor) {
        self.kinds.insert(executor.kind(), Arc::new(executor));
    }

    /// The executor of a kind: a built-in one, else the remote one for a known remote
    /// kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Executor>> {
        match self.kinds.get(kind) {
            Some(e) => Some(e.clone()),
            None => self.remote.queue(kind).map(|_| self.remote_executor.clone()),
        }
    }

    /// The executor of a built-in kind (none for a remote one).
    pub fn builtin_kind(&self, kind: &str) -> Option<Arc<dyn Executor>> {
        self.kinds.get(kind).cloned()
    }

    /// The remote kinds known here, and the hub of this process's engine.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Each kind's [`Executor::readiness`] report, for those that have one.
    pub fn readiness(&self) -> BTreeMap<String, Value> {
        self.kinds.iter().filter_map(|(k, e)| Some((k.to_string(), e.readiness()?))).collect()
    }

    /// The built-in kinds' names, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}
