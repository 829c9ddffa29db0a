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

use crate::LimitReached;
use std::collections::HashSet;

pub(crate) mod breakers;
pub(crate) mod claims;
pub(crate) mod escalations;
pub(crate) mod jobs;
pub(crate) mod runs;
pub(crate) mod schedules;

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

/// The order rule of a pass that releases what waits for a concurrency slot (held jobs,
/// queued runs), oldest first: a workspace-wide limit ends the pass; a user's limit skips
/// that user for the rest of it, so that a slot freed meanwhile never lets a later item of
/// theirs go ahead of an earlier one.
#[derive(Default)]
pub(crate) struct Turns(HashSet<String>);

/// What a [`Turns`] pass does with the next waiting item.
pub(crate) enum Turn {
    Go,
    Skip,
    Stop,
}

impl Turns {
    /// Whether `user` was refused earlier in this pass (nothing to count then).
    pub(crate) fn refused(&self, user: &str) -> bool {
        self.0.contains(user)
    }

    /// The turn of `user`'s next item, given the limits' answer for it.
    pub(crate) fn turn(&mut self, user: &str, check: Result<(), LimitReached>) -> Turn {
        match check {
            Ok(()) => Turn::Go,
            Err(l) if l.scope == "workspace" => Turn::Stop,
            Err(_) => {
                self.0.insert(user.to_string());
                Turn::Skip
            }
        }
    }
}
