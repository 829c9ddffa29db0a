//! Ferry's engine core: what a job is, which states it moves through, how a failure is
//! classified and when it is retried.
//!
//! Everything here is plain data and pure functions. The store decides *where* a job lives,
//! the worker decides *how* it runs; this crate decides *what happens next*, so that both
//! storage backends and every executor agree on one state machine.
//!
//! **Invariant:** this crate does no I/O. It reads no clock except through the explicit
//! [`time::now_micros`] helper that callers pass in, touches no file and knows no HTTP.

pub mod admission;
pub mod agent;
pub mod auth;
pub mod backoff;
pub mod breaker;
pub mod error;
pub mod escalation;
pub mod job;
pub mod message;
pub mod run;
pub mod schedule;
pub mod severity;
pub mod time;
pub mod workflow;

pub use backoff::{Backoff, Jitter};
pub use error::{ErrorType, ExecError, JobError};
pub use job::{
    AttemptOutcome, Decision, JobId, JobSpec, JobState, Limits, NewJob, OnLimit, RetryState, SpecError,
    decide_after_failure,
};
pub use severity::Severity;
