//! Event-stream notifications between processes (see [`crate::event_signal`]).
//!
//! After a commit that wrote to job or run logs, the store wakes this process's streams
//! at once and hands the subjects to its [`Outbox`]. A task sends what the outbox holds as
//! **one** `pg_notify` on the events channel, at most every [`COALESCE`], outside the
//! transactions that wrote the events: a `NOTIFY` inside a transaction takes a global lock
//! at its commit, which serialised every claim and finish of every node (about 9% of
//! PostgreSQL throughput) for streams that are usually not even open. The notification
//! follows the commit, so a stream it wakes always finds the events.
//!
//! The payload is `origin\n` followed by the subjects when there are at most [`NAMED`] of
//! them (`j:ID,ID` for jobs, `r:ID` for runs, `;` between the two), else `*`: then every
//! stream on the receiving node reads once. The origin lets a store skip its own
//! notifications. A process that dies between a commit and the send leaves other nodes'
//! streams to their safety-net poll.
//!
//! A submission and a run's creation tell other processes nothing: a stream can only
//! follow a job or run that exists, so their first events are never news to one (an
//! idempotent repeat writes nothing). A submission still wakes this process's watchers of
//! its new jobs, as SQLite does, which costs nothing when none watches.

use super::NOTIFY;
use crate::Subject;
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// Most subjects a payload names (36 bytes each, far below the 8,000-byte payload limit).
/// Keep in step with the SQL statements that build payloads.
pub(super) const NAMED: usize = 20;

/// What a notification says.
#[derive(Debug, PartialEq)]
pub(super) enum Told {
    /// This store's own: its streams were woken at the commit.
    Own,
    Subjects(Vec<Subject>),
    /// Too many to name, or unreadable: every stream looks.
    All,
}

/// `j:ID,ID;r:ID`: the named part of a payload.
fn subjects_part(subjects: &[Subject]) -> String {
    let ids = |want_job: bool| {
        let mut ids: Vec<String> = subjects
            .iter()
            .filter_map(|s| match (s, want_job) {
                (Subject::Job(id), true) | (Subject::Run(id), false) => Some(id.to_string()),
                _ => None,
            })
            .collect();
        ids.dedup();
        ids.join(",")
    };
    let (jobs, runs) = (ids(true), ids(false));
    let mut parts = Vec::new();
    if !jobs.is_empty() {
        parts.push(format!("j:{jobs}"));
    }
    if !runs.is_empty() {
        parts.push(format!("r:{runs}"));
    }
    parts.join(";")
}

pub(super) fn parse(payload: &str, own_origin: &str) -> Told {
    let Some((origin, rest)) = payload.split_once('\n') else { return Told::All };
    if origin == own_origin {
        return Told::Own;
    }
    let mut subjects = Vec::new();
    for part in rest.split(';') {
        let (make, ids): (fn(uuid::Uuid) -> Subject, &str) = match part.split_once(':') {
            Some(("j", ids)) => (Subject::Job, ids),
            Some(("r", ids)) => (Subject::Run, ids),
            _ => return Told::All,
        };
        for id in ids.split(',') {
            match uuid::Uuid::parse_str(id) {
                Ok(id) => subjects.push(make(id)),
                Err(_) => return Told::All,
            }
        }
    }
    Told::Subjects(subjects)
}

/// How long the sender gathers subjects before one notification: short beside a
/// stream's own coalescing (100 ms), long beside a claim.
pub(super) const COALESCE: Duration = Duration::from_millis(5);

/// The subjects this process committed events for, not yet told to other nodes.
#[derive(Default)]
pub(super) struct Outbox {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    subjects: Vec<Subject>,
    /// More than [`NAMED`]: the notification says `*`.
    all: bool,
}

impl Outbox {
    /// Queues subjects whose events just committed.
    pub(super) fn push(&self, subjects: impl IntoIterator<Item = Subject>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let before = (p.subjects.len(), p.all);
        if !p.all {
            p.subjects.extend(subjects);
            if p.subjects.len() > NAMED {
                p.all = true;
                p.subjects = Vec::new();
            }
        }
        if (p.subjects.len(), p.all) != before {
            drop(p);
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Option<String> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *p);
        drop(p);
        match (taken.all, taken.subjects.is_empty()) {
            (true, _) => Some(String::new()),
            (false, true) => None,
            (false, false) => Some(subjects_part(&taken.subjects)),
        }
    }
}

/// Sends the outbox's notifications until the store is dropped (`outbox` is its only other
/// owner). A failed send is logged and dropped: other nodes' streams then catch up on their
/// safety-net poll.
pub(super) async fn send(outbox: std::sync::Weak<Outbox>, pool: PgPool, channel: String, origin: String) {
    loop {
        let Some(o) = outbox.upgrade() else { return };
        // Wake up now and then, to notice that the store is gone.
        if tokio::time::timeout(Duration::from_secs(5), o.wake.notified()).await.is_err() {
            continue;
        }
        tokio::time::sleep(COALESCE).await;
        let Some(part) = o.take() else { continue };
        drop(o);
        let payload = if part.is_empty() { format!("{origin}\n*") } else { format!("{origin}\n{part}") };
        if let Err(e) = sqlx::query(*NOTIFY).bind(&channel).bind(payload).execute(&pool).await {
            tracing::warn!(error = %e, "cannot tell other nodes' event streams; they will catch up on their poll");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_few_subjects_and_skip_their_origin() {
        let (j, r) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let outbox = Outbox::default();
        outbox.push([Subject::Job(j), Subject::Run(r)]);
        let p = format!("me\n{}", outbox.take().expect("pending"));
        assert_eq!(outbox.take(), None, "taken once");
        assert_eq!(parse(&p, "other"), Told::Subjects(vec![Subject::Job(j), Subject::Run(r)]));
        assert_eq!(parse(&p, "me"), Told::Own);
        outbox.push((0..=NAMED).map(|_| Subject::Job(uuid::Uuid::now_v7())));
        outbox.push([Subject::Job(j)]);
        assert_eq!(outbox.take().as_deref(), Some(""), "past NAMED: everything");
        assert_eq!(parse("me\n*", "other"), Told::All);
        assert_eq!(parse("garbage", "other"), Told::All);
        assert_eq!(parse(&format!("x\nj:{j},{r}"), "me"), Told::Subjects(vec![Subject::Job(j), Subject::Job(r)]));
    }
}
