//! The store's rules, written once for both backends.
//!
//! A rule (cancel a job, release held jobs, start a run, advance it…) is an `async fn`
//! generic over a small per-area interface of statements ([`jobs::JobTx`],
//! [`runs::RunTx`]): it reads
//! through the interface, decides, and writes through it. A backend implements the
//! interface with its own SQL and nothing else; whatever the two backends do alike lives
//! in the rule. Transactions stay the backend's: the caller opens one, runs the rule in it
//! and commits, so the rule never knows whether it runs inside the SQLite writer's group
//! commit or in a PostgreSQL transaction of its own.
//!
//! The SQLite writer is synchronous: its statements never wait, so a rule's future
//! completes on its first poll, and [`ready`] runs it there without a runtime. PostgreSQL
//! awaits the same future on Tokio.
//!
//! Adding an operation: one rule here, one statement (or a few) per backend in the
//! interface's implementations, one conformance test in `tests/conformance/`.

pub(crate) mod claims;
pub(crate) mod jobs;
pub(crate) mod runs;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future whose every await is already complete (a rule over the SQLite writer's
/// statements) to its end, on the calling thread.
///
/// # Panics
/// If the future is not ready at its first poll: a statement that waits has no place on
/// the writer thread, and this is how such a mistake shows at once in any test.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a store rule waited on the SQLite writer thread"),
    }
}
