//! Event-stream notifications between processes (see [`crate::event_signal`]).
//!
//! A transaction that writes to logs an open stream may be following sends **one**
//! `pg_notify` on the events channel, never one per row: the statements that claim
//! (`claim.sql`, `claim_ids.sql`) and finish (`finish.sql`) build it in SQL from the rows
//! they logged, and the Rust-side transitions (cancel, replay, held jobs released, run
//! advances) through [`announce`]. The payload is `origin\n` followed by the subjects when
//! there are at most [`NAMED`] of them (`j:ID,ID` for jobs, `r:ID` for runs, `;` between
//! the two), else `*`: then every stream on the receiving node reads once. The origin lets
//! a store skip its own notifications, whose streams it woke right after the commit.
//!
//! A submission and a run's creation send none: a stream can only follow a job or run
//! that exists, so their first events are never news to one (an idempotent repeat writes
//! nothing).

use crate::Subject;
use sqlx::{Postgres, Transaction};

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

fn payload(origin: &str, subjects: &[Subject]) -> String {
    if subjects.len() > NAMED {
        return format!("{origin}\n*");
    }
    let ids = |want_job: bool| {
        subjects
            .iter()
            .filter_map(|s| match (s, want_job) {
                (Subject::Job(id), true) | (Subject::Run(id), false) => Some(id.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let (jobs, runs) = (ids(true), ids(false));
    let mut parts = Vec::new();
    if !jobs.is_empty() {
        parts.push(format!("j:{jobs}"));
    }
    if !runs.is_empty() {
        parts.push(format!("r:{runs}"));
    }
    format!("{origin}\n{}", parts.join(";"))
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

/// Sends the transaction's one events notification, delivered when it commits.
pub(super) async fn announce(
    tx: &mut Transaction<'static, Postgres>,
    channel: &str,
    origin: &str,
    subjects: &[Subject],
) -> Result<(), sqlx::Error> {
    if subjects.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload(origin, subjects)).execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_few_subjects_and_skip_their_origin() {
        let (j, r) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let p = payload("me", &[Subject::Job(j), Subject::Run(r)]);
        assert_eq!(parse(&p, "other"), Told::Subjects(vec![Subject::Job(j), Subject::Run(r)]));
        assert_eq!(parse(&p, "me"), Told::Own);
        let many: Vec<Subject> = (0..=NAMED).map(|_| Subject::Job(uuid::Uuid::now_v7())).collect();
        assert_eq!(parse(&payload("me", &many), "other"), Told::All);
        assert_eq!(parse("garbage", "other"), Told::All);
        // What the SQL statements build: `j:` and the ids joined by commas.
        assert_eq!(parse(&format!("x\nj:{j},{r}"), "me"), Told::Subjects(vec![Subject::Job(j), Subject::Job(r)]));
    }
}
