//! The schedule rule: fire one schedule's ticks in one transaction that holds its row.
//! See [`crate::schedules`].

use super::runs::{self, RunTx};
use crate::runs::{CreateRunOutcome, Planner};
use crate::schedules::{FireReport, ScheduleFiring, ScheduleRow, Start, StartRef};
use crate::{Admission, StoreError, Submitted};
use async_trait::async_trait;
use ferry_core::NewJob;
use ferry_core::schedule::{TickStart, overlap};
use ferry_core::time::Micros;
use uuid::Uuid;

/// The statements of the schedule rule, on the transaction the run rules use.
#[async_trait]
pub(crate) trait ScheduleTx: RunTx {
    /// Locks the schedule for the rest of the transaction and reads it.
    async fn lock_schedule(&mut self, id: Uuid) -> Result<Option<ScheduleRow>, StoreError>;
    /// Whether the job or run has not ended yet.
    async fn start_live(&mut self, start: StartRef) -> Result<bool, StoreError>;
    /// Submits one standalone job under `admission`, as `Store::submit_admitted` does
    /// (its key resolved first; refused with `LimitReached` or `QueueFull` before
    /// anything is written).
    async fn submit_job(&mut self, job: &NewJob, admission: &Admission) -> Result<Submitted, StoreError>;
    /// Writes the row's changing columns (paused and the spec never change here).
    async fn update_schedule(&mut self, row: &ScheduleRow) -> Result<(), StoreError>;
}

/// Fires `f` if its schedule's row is still as the scheduler read it.
pub(crate) async fn fire(
    tx: &mut impl ScheduleTx,
    f: ScheduleFiring,
    planner: &Planner,
) -> Result<FireReport, StoreError> {
    let mut out = FireReport::default();
    let Some(mut row) = tx.lock_schedule(f.id).await? else { return Ok(out) };
    // The compare-and-set: a node that read the same tick and committed first moved it.
    if row.paused || row.next_fire_at != f.expect_next || row.waiting_tick != f.waiting.as_ref().map(|w| w.0) {
        return Ok(out);
    }
    out.applied = true;
    let read = row.clone();
    let mut live = match row.last_start {
        Some(s) => tx.start_live(s).await?,
        None => false,
    };
    if let Some((tick, start)) = f.waiting
        && !live
    {
        row.waiting_tick = None;
        live = begin(tx, &mut row, &mut out, tick, start, planner).await?;
    }
    for (tick, start) in f.ticks {
        match overlap(f.overlap, live, row.waiting_tick.is_some()) {
            TickStart::Start => live = begin(tx, &mut row, &mut out, tick, start, planner).await? || live,
            TickStart::Wait => {
                row.waiting_tick = Some(tick);
                out.waiting = Some(tick);
            }
            TickStart::Skip => {
                row.skipped += 1;
                out.skipped += 1;
            }
        }
        row.last_tick = Some(tick);
    }
    row.missed += f.missed;
    row.next_fire_at = f.next_fire_at;
    // A tick still waiting for a start that has not ended changes nothing: no write.
    if row != read {
        tx.update_schedule(&row).await?;
    }
    Ok(out)
}

/// Starts one tick's job or run; whether it started (a refusal is counted and noted).
async fn begin(
    tx: &mut impl ScheduleTx,
    row: &mut ScheduleRow,
    out: &mut FireReport,
    tick: Micros,
    start: Start,
    planner: &Planner,
) -> Result<bool, StoreError> {
    let started = match start {
        Start::Refused(why) => Err(why),
        Start::Job { job, admission } => match tx.submit_job(&job, &admission).await {
            Ok(s) => Ok(StartRef::Job(s.id)),
            Err(
                e @ (StoreError::LimitReached(_)
                | StoreError::QueueFull { .. }
                | StoreError::IdempotencyConflict { .. }),
            ) => Err(e.to_string()),
            Err(e) => return Err(e),
        },
        Start::Run(run) => match runs::create(tx, *run, planner).await {
            Ok((CreateRunOutcome::Created { id, .. } | CreateRunOutcome::Existing { id, .. }, advanced)) => {
                out.advanced.merge(advanced);
                Ok(StartRef::Run(id))
            }
            Ok((CreateRunOutcome::Conflict { id }, _)) => Err(format!("the key was used by run {id}")),
            Ok((CreateRunOutcome::NoWorkflow, _)) => Err("the workflow does not exist".to_string()),
            Ok((CreateRunOutcome::NoVersion { latest }, _)) => {
                Err(format!("the workflow has no such version; the latest is {latest}"))
            }
            Err(e @ (StoreError::LimitReached(_) | StoreError::TokenBudget { .. })) => Err(e.to_string()),
            Err(e) => return Err(e),
        },
    };
    match started {
        Ok(s) => {
            row.last_start = Some(s);
            row.started += 1;
            out.started.push((tick, s));
            Ok(true)
        }
        Err(why) => {
            row.refused += 1;
            row.last_error = Some(format!("tick {}: {why}", ferry_core::time::to_datetime(tick).to_rfc3339()));
            out.refused.push((tick, why));
            Ok(false)
        }
    }
}
