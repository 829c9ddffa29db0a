//! The writer's job-event log, appended in multi-row inserts.
//!
//! Every job writes an event at each step of its life (queued, started, succeeded, …), and
//! one `INSERT` a row cost about a quarter of the writer's time for a no-op job: each
//! execution opens the table's and its indexes' cursors anew and reads and writes
//! `sqlite_sequence` (the log's ids are `AUTOINCREMENT`, never reused, so a client's
//! resume point stays valid). [`Writer::event`] therefore only notes an event, in order,
//! and [`Writer::flush_events`] writes the notes in a few multi-row inserts
//! ([`super::batch`]), in the order they were noted, so ids keep that order.
//!
//! The rule that keeps this invisible: the log is written out before anything reads or
//! writes the `events` table otherwise. [`Writer::step`] flushes at the end of every
//! request, the parked claims flush after they ran, and the statements that read the log
//! or write to it by other means (run mirroring, a job's deletion, a remote worker's
//! events) flush first. Reads on other connections see only committed transactions, so
//! for them nothing changed.

use super::batch::{MultiRow, bind_row};
use super::*;

/// The log's multi-row insert.
static INSERT: std::sync::LazyLock<MultiRow> = std::sync::LazyLock::new(|| MultiRow::new(&INSERT_EVENTS, 4));

/// An event noted, not yet written.
pub(super) struct Noted {
    job: JobId,
    at: Micros,
    kind: &'static str,
    data: String,
}

impl Writer {
    /// Notes an event of `job`'s log, written by the next [`Writer::flush_events`].
    pub(super) fn event(&self, job: JobId, kind: &'static str, data: serde_json::Value) {
        self.noted.borrow_mut().push(Noted { job, at: self.now, kind, data: data.to_string() });
        self.touched(Subject::Job(job));
    }

    /// Writes every noted event, in the order noted. On an error the notes are dropped:
    /// the error poisons the group, which is rolled back.
    pub(super) fn flush_events(&self) -> rusqlite::Result<()> {
        let noted = std::mem::take(&mut *self.noted.borrow_mut());
        INSERT.insert(&self.conn, &noted, |s, first, e| bind_row(s, first, &[&e.job, &e.at, &e.kind, &e.data]))
    }
}
