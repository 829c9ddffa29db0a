//! Schedules on SQLite (see `crate::schedules`): reads on a read connection, writes and
//! the schedule rule's statements ([`ScheduleTx`]) on the writer's transaction.

use super::tx::SqliteTx;
use super::*;
use crate::rules::schedules::ScheduleTx;
use crate::schedules::{DueSchedules, FireReport, NewSchedule, ScheduleFiring, ScheduleRow, ScheduleStore, StartRef};
use uuid::Uuid;

crate::sql::statements!("../../sql/sqlite/schedules.sql":
    INSERT_SCHEDULE, LIST_SCHEDULES, GET_SCHEDULE, LOCK_SCHEDULE, PAUSE_SCHEDULE, DELETE_SCHEDULE, DUE_SCHEDULES,
    NEXT_TICK, UPDATE_SCHEDULE, JOB_LIVE, RUN_LIVE,
);

/// A schedule out of a row of `SCHEDULE_COLUMNS`.
fn schedule(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    let spec: String = r.get(3)?;
    let count = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(ScheduleRow {
        id: r.get(0)?,
        workspace: r.get(1)?,
        name: r.get(2)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, Type::Text, Box::new(e)))?,
        paused: r.get(4)?,
        next_fire_at: r.get(5)?,
        last_tick: r.get(6)?,
        last_start: StartRef::from_parts(r.get(7)?, r.get(8)?),
        waiting_tick: r.get(9)?,
        started: count(10)?,
        skipped: count(11)?,
        refused: count(12)?,
        missed: count(13)?,
        last_error: r.get(14)?,
        created_by: r.get(15)?,
        created_at: r.get(16)?,
        updated_at: r.get(17)?,
    })
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(&self, s: NewSchedule) -> Result<bool, StoreError> {
        self.on_writer(move |w| {
            let spec = s.spec.to_string();
            let params = params![s.id, s.workspace, s.name, spec, s.paused, s.next_fire_at, s.created_by, s.created_at];
            Ok(w.conn.prepare_cached(*INSERT_SCHEDULE)?.execute(params)? > 0)
        })
        .await
    }

    async fn schedules(&self, workspace: &str) -> Result<Vec<ScheduleRow>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| c.prepare_cached(*LIST_SCHEDULES)?.query_map(params![ws], schedule)?.collect()).await
    }

    async fn schedule(&self, workspace: &str, id: Uuid) -> Result<Option<ScheduleRow>, StoreError> {
        let ws = workspace.to_string();
        self.read(move |c| c.prepare_cached(*GET_SCHEDULE)?.query_row(params![ws, id], schedule).optional()).await
    }

    async fn pause_schedule(
        &self,
        workspace: &str,
        id: Uuid,
        paused: bool,
        next_fire_at: Option<Micros>,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let ws = workspace.to_string();
        self.on_writer(move |w| {
            let params = params![ws, id, paused, next_fire_at, w.now];
            Ok(w.conn.prepare_cached(*PAUSE_SCHEDULE)?.query_row(params, schedule).optional()?)
        })
        .await
    }

    async fn delete_schedule(&self, workspace: &str, id: Uuid) -> Result<bool, StoreError> {
        let ws = workspace.to_string();
        self.on_writer(move |w| Ok(w.conn.prepare_cached(*DELETE_SCHEDULE)?.execute(params![ws, id])? > 0)).await
    }

    async fn due_schedules(&self, limit: usize) -> Result<DueSchedules, StoreError> {
        self.read(move |c| {
            // The writer's clock is this process's: the one the firings are made on.
            let now = time::now_micros();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let due = c
                .prepare_cached(*DUE_SCHEDULES)?
                .query_map(params![now, limit], schedule)?
                .collect::<Result<_, _>>()?;
            let next = c.prepare_cached(*NEXT_TICK)?.query_row(params![now], |r| r.get(0))?;
            Ok(DueSchedules { now, due, next })
        })
        .await
    }

    async fn fire_schedule(&self, firing: ScheduleFiring, planner: Planner) -> Result<FireReport, StoreError> {
        self.on_writer(move |w| rules::ready(rules::schedules::fire(&mut w.tx(), firing, &planner))).await
    }
}

#[async_trait]
impl ScheduleTx for SqliteTx<'_> {
    async fn lock_schedule(&mut self, id: Uuid) -> Result<Option<ScheduleRow>, StoreError> {
        Ok(self.w.conn.prepare_cached(*LOCK_SCHEDULE)?.query_row(params![id], schedule).optional()?)
    }

    async fn start_live(&mut self, start: StartRef) -> Result<bool, StoreError> {
        let sql = match start {
            StartRef::Job(_) => *JOB_LIVE,
            StartRef::Run(_) => *RUN_LIVE,
        };
        Ok(self.w.conn.prepare_cached(sql)?.query_row(params![start.id()], |_| Ok(())).optional()?.is_some())
    }

    async fn submit_job(&mut self, job: &NewJob, admission: &Admission) -> Result<Submitted, StoreError> {
        let mut out = self.w.submit(vec![job.clone()], admission.clone())?;
        out.pop().ok_or_else(|| StoreError::Database("the submission answered nothing".into()))
    }

    async fn update_schedule(&mut self, r: &ScheduleRow) -> Result<(), StoreError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.w.conn.prepare_cached(*UPDATE_SCHEDULE)?.execute(params![
            r.id,
            r.next_fire_at,
            r.last_tick,
            r.last_start.map(|s| s.kind()),
            r.last_start.map(|s| s.id()),
            r.waiting_tick,
            n(r.started),
            n(r.skipped),
            n(r.refused),
            n(r.missed),
            r.last_error,
            self.w.now,
        ])?;
        Ok(())
    }
}
