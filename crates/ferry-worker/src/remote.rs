//! Remote kinds: jobs run by processes of the user's own, over the worker protocol
//! (`docs/worker-protocol.md`).
//!
//! A remote kind is known by name once a worker registered it (the store keeps the list,
//! so every node accepts its jobs): [`Remote`] is this process's copy of that list, shared
//! by the [`crate::Registry`], which answers every remote kind with one [`RemoteExecutor`].
//!
//! A remote attempt is an attempt of this process's engine like any other: the engine
//! claims it, holds its lease, runs its breaker, timeout and cancellation, and records its
//! end. Only the work is elsewhere: the executor *offers* the job to the [`Hub`], a
//! session of a remote worker leases it, and its result comes back through the hub to the
//! executor. So every rule of an attempt (fencing, retries, budgets, breakers, claim
//! checks, workflows) holds for remote kinds without a second copy.
//!
//! **Slots.** A queue of remote kinds is served here with as many slots as the live
//! sessions serving it have `concurrency` (never more than the operator's `concurrency`
//! for the queue): jobs are claimed only for a session that can take them, and a queue no
//! session serves is not claimed from.
//!
//! **Ends.** A session that stops calling for the session timeout is over: the attempts it
//! held fail with `worker_lost` (retryable), and jobs offered but never leased are handed
//! back uncounted once no session serves their queue. An attempt the engine stops (a
//! cancel, its timeout, a lost lease, a shutdown) is withdrawn: a leased one is named to
//! its session at its next heartbeat, and whatever the session sends about it afterwards
//! is refused.

mod hub;

pub use hub::{Cancel, Hub, HubConfig, HubError, LeasedJob, MAX_EVENTS_PER_ATTEMPT, Outcome, SessionInfo};

use async_trait::async_trait;
use ferry_core::{ErrorType, ExecError, SpecError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// The queue a remote kind goes to when its worker names none.
pub const DEFAULT_QUEUE: &str = "remote";

/// How long a known remote kind is taken as known without reading the store again: a kind
/// registered on another node (or moved to another queue) is seen here within this.
pub const REFRESH: Duration = Duration::from_secs(2);

/// This process's list of remote kinds (kind → queue), and the hub of its engine.
#[derive(Default)]
pub struct Remote {
    kinds: RwLock<HashMap<String, String>>,
    read_at: std::sync::Mutex<Option<Instant>>,
    hub: OnceLock<Arc<Hub>>,
}

impl Remote {
    /// The queue of a remote kind, if the kind is known here.
    pub fn queue(&self, kind: &str) -> Option<String> {
        self.kinds.read().unwrap_or_else(|e| e.into_inner()).get(kind).cloned()
    }

    /// Takes `kinds` (kind → queue) as known, beside those known already.
    pub fn learn(&self, kinds: impl IntoIterator<Item = (String, String)>) {
        self.kinds.write().unwrap_or_else(|e| e.into_inner()).extend(kinds);
    }

    /// Reads the store's list of remote kinds again, unless it was read within
    /// [`REFRESH`] (`force`: whatever the age).
    pub async fn refresh(&self, store: &dyn ferry_store::Store, force: bool) -> Result<(), ferry_store::StoreError> {
        {
            let mut at = self.read_at.lock().unwrap_or_else(|e| e.into_inner());
            if !force && at.is_some_and(|t| t.elapsed() < REFRESH) {
                return Ok(());
            }
            *at = Some(Instant::now());
        }
        let kinds = store.remote_kinds().await?;
        self.learn(kinds.into_iter().map(|k| (k.kind, k.queue)));
        Ok(())
    }

    /// Every known remote kind, by name.
    pub fn kinds(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> =
            self.kinds.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, q)| (k.clone(), q.clone())).collect();
        all.sort();
        all
    }

    /// The hub of this process's engine (none: this process runs no engine).
    pub fn hub(&self) -> Option<&Arc<Hub>> {
        self.hub.get()
    }

    /// Attaches the engine's hub; the first engine of the process keeps it.
    pub(crate) fn attach(&self, hub: Arc<Hub>) -> bool {
        self.hub.set(hub).is_ok()
    }
}

/// The executor of every remote kind: offers the attempt to the hub and waits for a
/// session's answer.
pub struct RemoteExecutor {
    pub(crate) remote: Arc<Remote>,
}

#[async_trait]
impl crate::Executor for RemoteExecutor {
    fn kind(&self) -> &'static str {
        "remote"
    }

    /// A remote kind's input is the worker's to check: any JSON is accepted here.
    fn validate(&self, _input: &Value) -> Result<(), SpecError> {
        Ok(())
    }

    async fn run(&self, attempt: &crate::Attempt, input: Value) -> Result<Value, ExecError> {
        let Some(hub) = self.remote.hub() else {
            return Err(
                ExecError::new(ErrorType::Internal, "this process runs no engine for remote kinds").retryable(true)
            );
        };
        let (offer, reply) = hub.offer(attempt, input);
        // Dropped with the future (a cancel, the timeout, a shutdown): the attempt is
        // withdrawn from the hub and, if a session holds it, named to that session.
        let _withdraw = offer;
        match reply.await {
            Ok(Outcome::Output(output)) => Ok(output),
            Ok(Outcome::Error(e)) => Err(e),
            Ok(Outcome::Release) => {
                Err(ExecError::new(ErrorType::WorkerLost, "handed back by the remote worker").hand_back())
            }
            Err(_) => Err(ExecError::new(ErrorType::WorkerLost, "the remote worker's session ended").retryable(true)),
        }
    }
}

/// A remote worker's error, as its session reported it: a type of Ferry's catalogue is
/// kept; any other name (an exception's class) becomes `task`, the name leading the
/// message.
pub fn remote_error(
    type_name: &str,
    message: &str,
    retryable: Option<bool>,
    retry_after: Option<Duration>,
) -> ExecError {
    let (error_type, message) = match type_name.parse::<ErrorType>() {
        Ok(t) => (t, message.to_string()),
        Err(_) => (ErrorType::Task, format!("{type_name}: {message}")),
    };
    let mut e = ExecError::new(error_type, message);
    e.retryable = retryable;
    e.retry_after = retry_after;
    e
}
