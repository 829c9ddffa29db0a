//! Row decoding for SQLite (the shared `row::Columns`), the rates read, and job reads.

use super::*;

crate::sql::statements!("../../sql/sqlite/rows.sql": RATED_QUEUES, RATED_SHARES, RATED_LABELS, JOB_EVENTS);

pub(super) fn conversion(idx: usize, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.to_string().into())
}

pub(super) fn parse_enum<T: FromStr<Err = String>>(s: &str) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| conversion(0, e))
}

/// Reads a row of [`CLAIMED_COLUMNS`] (the claim's RETURNING list has the same order).
/// Every rate in force: queues' and workspaces' label keys'.
pub(super) fn load_rates(c: &Connection) -> Result<Rates, StoreError> {
    let mut rates = Rates::default();
    let mut q = c.prepare_cached(*RATED_QUEUES)?;
    for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))? {
        let (name, rate) = row?;
        rates.queues.insert(name, rate);
    }
    let mut s = c.prepare_cached(*RATED_SHARES)?;
    for row in s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))? {
        let (queue, ws, rate) = row?;
        rates.shares.entry(queue).or_default().insert(ws, rate);
    }
    let mut l = c.prepare_cached(*RATED_LABELS)?;
    for row in l.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))? {
        let (ws, label, rate) = row?;
        rates.labels.entry(ws).or_default().insert(label, rate);
    }
    Ok(rates)
}

pub(super) fn claimed_from_row(r: &Row<'_>, started_at: Micros) -> rusqlite::Result<ClaimedJob> {
    row::claimed(r, started_at)
}

pub(super) fn read_events(c: &Connection, id: JobId) -> rusqlite::Result<Vec<Event>> {
    use row::Columns;
    c.prepare_cached(*JOB_EVENTS)?
        .query_map(params![id], |r| {
            Ok(Event { id: r.get(0)?, job_id: id, at: r.get(1)?, event_type: r.get(2)?, data: r.json(3)? })
        })?
        .collect()
}

pub(super) fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    row::job(r)
}

impl row::Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn uuid(&self, i: usize) -> rusqlite::Result<JobId> {
        self.get(i)
    }
    fn opt_uuid(&self, i: usize) -> rusqlite::Result<Option<JobId>> {
        self.get(i)
    }
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn invalid(&self, i: usize, why: String) -> rusqlite::Error {
        conversion(i, why)
    }
}
