//! Ferry's worker runtime: the executors that run each kind of job, and the engine that
//! claims jobs from the store, runs them under a lease, and records how they ended.
//!
//! A job's life on a worker: a per-queue dispatcher claims a batch of ready jobs (as many
//! as the queue has free slots) and starts one task per job; the task runs the job's
//! [`Executor`] under the attempt's timeout and cancellation; the outcome goes through
//! [`ferry_core::decide_after_failure`] and back to the store as one fenced transition.
//! Meanwhile a heartbeat task renews every lease the process holds, independently of the
//! jobs' own work, and a reaper retries jobs whose worker stopped heartbeating.
//!
//! **Invariant:** a worker never changes a job's state except through the store's fenced
//! transitions; if the store says the lease is gone, the worker's result is discarded.

mod engine;
pub mod escalation;
mod executor;
pub mod kinds;
pub mod remote;
pub mod scheduler;

pub use engine::{Engine, EngineConfig, QueueConfig, prune_loop};
pub use executor::{Attempt, CachePolicy, Executor, Registry, Runs};

/// The planner of workflow runs: the jobs it creates are checked against `limits` and
/// their kinds' own validation (a node whose resolved input its kind refuses fails).
/// `defaults` are the configured workspace limits: a workspace that stores none has their
/// `tokens_per_day`.
pub fn planner(
    limits: ferry_core::Limits,
    registry: Registry,
    defaults: &ferry_core::admission::WorkspaceLimits,
) -> ferry_store::Planner {
    let tokens_per_day = defaults.tokens_per_day;
    std::sync::Arc::new(move |snap| {
        let check = |kind: &str, input: &serde_json::Value| match registry.get(kind) {
            None => Err(format!("unknown kind `{kind}`")),
            // A claim-check reference (a whole output passed on by a template) is read
            // back and checked by the worker that runs the node (`engine::claim_checks`).
            Some(_) if matches!(ferry_store::blobs::parse_reference(input), Some(Ok(_))) => Ok(()),
            Some(executor) => executor.validate(input).map_err(|e| e.to_string()),
        };
        if snap.budget.defaults {
            let mut snap = snap.clone();
            snap.budget.per_day = tokens_per_day;
            snap.budget.defaults = false;
            return ferry_core::run::plan(&snap, &limits, &check);
        }
        ferry_core::run::plan(snap, &limits, &check)
    })
}
