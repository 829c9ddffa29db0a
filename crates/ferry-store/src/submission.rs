//! What a submission adds, decided once for both backends: which jobs of a batch are new
//! once their idempotency keys are resolved, so that the concurrency limits and a queue's
//! depth cap count only those, and what each job of the batch is answered.
//!
//! A key already stored (a client's retried request) adds nothing; a key repeated inside
//! the batch adds one job, and the repeat is answered as that job. Each backend only
//! finds the jobs stored under the batch's keys (SQLite key by key in its writer,
//! PostgreSQL in one statement) and hands them to [`resolve`].

use crate::{Admission, StoreError, Submitted};
use ferry_core::{JobId, JobState, NewJob};
use std::collections::HashMap;

/// A job stored under an idempotency key, as a submission finds it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: JobId,
    pub state: JobState,
    pub request_hash: Option<String>,
}

/// What one job of a batch is, once its idempotency key is resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolved {
    /// Not stored yet: the batch adds it.
    New,
    /// Its key names a job already stored, with the same request: answered as that job.
    Stored(Submitted),
    /// Its key repeats that of the batch's job at this index (the same request):
    /// answered as that job, and not added again.
    Repeat(usize),
}

/// Resolves every job's idempotency key, in batch order: `stored` finds the job stored
/// under a key of the job's workspace, if any. A key used with another request (stored,
/// or earlier in the batch) refuses the whole batch, naming the first such job.
pub(crate) fn resolve(
    jobs: &[NewJob],
    mut stored: impl FnMut(&NewJob, &str) -> Result<Option<Stored>, StoreError>,
) -> Result<Vec<Resolved>, StoreError> {
    let mut out = Vec::with_capacity(jobs.len());
    // The batch's new keys: the first job that carries each.
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    for (index, job) in jobs.iter().enumerate() {
        let Some(key) = job.idempotency_key.as_deref() else {
            out.push(Resolved::New);
            continue;
        };
        let conflict = || StoreError::IdempotencyConflict { index, key: key.to_string() };
        if let Some(&earlier) = first.get(&(job.workspace.as_str(), key)) {
            if jobs[earlier].request_hash != job.request_hash {
                return Err(conflict());
            }
            out.push(Resolved::Repeat(earlier));
            continue;
        }
        match stored(job, key)? {
            Some(s) if s.request_hash != job.request_hash => return Err(conflict()),
            Some(s) => out.push(Resolved::Stored(Submitted { id: s.id, state: s.state, created: false })),
            None => {
                first.insert((job.workspace.as_str(), key), index);
                out.push(Resolved::New);
            }
        }
    }
    Ok(out)
}

/// How many jobs the batch adds, on `queue` only when one is given: what every limit
/// and cap counts.
pub(crate) fn adding(jobs: &[NewJob], resolved: &[Resolved], queue: Option<&str>) -> u64 {
    jobs.iter().zip(resolved).filter(|(j, r)| **r == Resolved::New && queue.is_none_or(|q| j.queue == q)).count() as u64
}

/// The depth rule: a queue holding `waiting` jobs (counted up to `cap + 1`) takes `adding`
/// more only if it stays within `cap`.
pub(crate) fn check_depth(queue: &str, cap: u64, waiting: u64, adding: u64) -> Result<(), StoreError> {
    match adding > 0 && waiting.saturating_add(adding) > cap {
        true => Err(StoreError::QueueFull { queue: queue.to_string(), max_depth: cap }),
        false => Ok(()),
    }
}

/// Whether a submission's jobs must be checked against the workspace's limits at all
/// (see [`hold`]); an ungated one is inserted as it comes.
pub(crate) fn gated(admission: &Admission) -> bool {
    !admission.is_unlimited() || admission.queue_on_limit
}

/// The admission rule: the new jobs of a batch (`adding`) against the limits, given what
/// the user and the workspace have in flight (`in_flight`: user's, workspace's) and how
/// many of the workspace's jobs are held already (`held`, read only when the batch may
/// wait). Over a limit, the batch is refused, or held with the reason when it may wait
/// (`on_limit: "queue"`); jobs that may wait never overtake jobs already held. `None`:
/// the jobs go ahead.
pub(crate) fn hold(
    admission: &Admission,
    in_flight: (u64, u64),
    adding: u64,
    held: u64,
) -> Result<Option<String>, StoreError> {
    match admission.check("job", in_flight.0, in_flight.1, adding) {
        Err(limit) if !admission.queue_on_limit => Err(limit.into()),
        Err(limit) => Ok(Some(limit.to_string())),
        Ok(()) if admission.queue_on_limit && held > 0 => Ok(Some("jobs of the workspace are held".into())),
        Ok(()) => Ok(None),
    }
}

/// The answer to each job of the batch, in order: a new job with the state it was stored
/// in (`inserted`), the others as the job their key names.
pub(crate) fn answers(jobs: &[NewJob], resolved: &[Resolved], inserted: impl Fn(JobId) -> JobState) -> Vec<Submitted> {
    let mut out: Vec<Submitted> = Vec::with_capacity(jobs.len());
    for (job, r) in jobs.iter().zip(resolved) {
        let answer = match r {
            Resolved::New => Submitted { id: job.id, state: inserted(job.id), created: true },
            Resolved::Stored(s) => s.clone(),
            Resolved::Repeat(i) => Submitted { created: false, ..out[*i].clone() },
        };
        out.push(answer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{JobSpec, Limits};

    fn job(key: Option<&str>, queue: &str, priority: i32) -> NewJob {
        let spec = JobSpec {
            kind: "noop".into(),
            idempotency_key: key.map(Into::into),
            queue: Some(queue.into()),
            priority: Some(priority),
            ..Default::default()
        };
        spec.validate("w", "u", 0, &Limits::default()).unwrap()
    }

    /// Resolves `jobs` against one stored job (under key `old`), and returns what each
    /// job is and how many the batch adds to queue `a`.
    fn check(jobs: &[NewJob]) -> Result<(Vec<Resolved>, u64), StoreError> {
        let old =
            Stored { id: JobId::from_u128(7), state: JobState::Running, request_hash: jobs[0].request_hash.clone() };
        let resolved = resolve(jobs, |_, key| Ok((key == "old").then(|| old.clone())))?;
        let adding = adding(jobs, &resolved, Some("a"));
        Ok((resolved, adding))
    }

    #[test]
    fn only_new_jobs_count_and_repeats_answer_as_their_first() {
        let (a, b) = (job(Some("k"), "a", 0), job(None, "a", 0));
        let repeat = NewJob { id: JobId::now_v7(), ..a.clone() };
        let stored = job(Some("old"), "a", 0);
        let (resolved, adding_a) = check(&[a.clone(), b.clone(), repeat, stored]).unwrap();
        let old = Submitted { id: JobId::from_u128(7), state: JobState::Running, created: false };
        assert_eq!(resolved, vec![Resolved::New, Resolved::New, Resolved::Repeat(0), Resolved::Stored(old.clone())]);
        assert_eq!(adding_a, 2, "the repeat and the stored job add nothing");
        let answers = answers(&[a.clone(), b.clone(), a.clone(), a.clone()], &resolved, |_| JobState::Held);
        assert_eq!(answers[2], Submitted { id: a.id, state: JobState::Held, created: false });
        assert_eq!(answers[3], old);
        let (_, elsewhere) = check(&[job(None, "b", 0), job(Some("x"), "b", 0)]).unwrap();
        assert_eq!(elsewhere, 0, "jobs of another queue");
    }

    #[test]
    fn a_key_with_another_request_refuses_the_batch() {
        let a = job(Some("k"), "a", 0);
        let other = NewJob { id: JobId::now_v7(), ..job(Some("k"), "a", 5) };
        assert!(matches!(check(&[a, other]), Err(StoreError::IdempotencyConflict { index: 1, .. })));
        let stored_other = job(Some("old"), "a", 5);
        let first = job(None, "a", 0);
        assert!(matches!(check(&[first, stored_other]), Err(StoreError::IdempotencyConflict { index: 1, .. })));
    }

    #[test]
    fn a_queue_takes_what_fits_its_cap() {
        assert!(check_depth("a", 3, 1, 2).is_ok());
        assert!(matches!(check_depth("a", 3, 2, 2), Err(StoreError::QueueFull { max_depth: 3, .. })));
        assert!(check_depth("a", 3, 4, 0).is_ok(), "adding nothing never overfills");
    }
}
