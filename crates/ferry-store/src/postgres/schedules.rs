//! Schedules on PostgreSQL (see `crate::schedules`): reads on the pool, and the schedule
//! rule's statements ([`ScheduleTx`]) on a pool transaction.

use super::tx::PgTx;
use super::*;
use crate::rules;
use crate::rules::escalations::EscalationTx;
use crate::rules::schedules::ScheduleTx;
use crate::schedules::{DueSchedules, FireReport, NewSchedule, ScheduleFiring, ScheduleRow, ScheduleStore, StartRef};
use uuid::Uuid;

crate::sql::statements!("../../sql/postgres/schedules.sql":
    INSERT_SCHEDULE, LIST_SCHEDULES, GET_SCHEDULE, LOCK_SCHEDULE, PAUSE_SCHEDULE, DELETE_SCHEDULE, DUE_SCHEDULES,
    NEXT_TICK, UPDATE_SCHEDULE, JOB_LIVE, RUN_LIVE,
);

/// A schedule out of a row of `SCHEDULE_COLUMNS`.
fn schedule(r: &PgRow) -> Result<ScheduleRow, sqlx::Error> {
    let spec: String = r.try_get(3)?;
    let count = |i: usize| r.try_get::<i64, _>(i).map(|n| n.max(0) as u64);
    Ok(ScheduleRow {
        id: r.try_get(0)?,
        workspace: r.try_get(1)?,
        name: r.try_get(2)?,
        spec: serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        paused: r.try_get(4)?,
        next_fire_at: r.try_get(5)?,
        last_tick: r.try_get(6)?,
        last_start: StartRef::from_parts(r.try_get(7)?, r.try_get(8)?),
        waiting_tick: r.try_get(9)?,
        started: count(10)?,
        skipped: count(11)?,
        refused: count(12)?,
        missed: count(13)?,
        last_error: r.try_get(14)?,
        created_by: r.try_get(15)?,
        created_at: r.try_get(16)?,
        updated_at: r.try_get(17)?,
    })
}

fn schedules(rows: &[PgRow]) -> Result<Vec<ScheduleRow>, StoreError> {
    rows.iter().map(schedule).collect::<Result<_, _>>().map_err(err)
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn create_schedule(&self, s: NewSchedule) -> Result<bool, StoreError> {
        let done = sqlx::query(*INSERT_SCHEDULE)
            .bind(s.id)
            .bind(&s.workspace)
            .bind(&s.name)
            .bind(s.spec.to_string())
            .bind(s.paused)
            .bind(s.next_fire_at)
            .bind(&s.created_by)
            .bind(s.created_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn schedules(&self, workspace: &str) -> Result<Vec<ScheduleRow>, StoreError> {
        schedules(&sqlx::query(*LIST_SCHEDULES).bind(workspace).fetch_all(&self.pool).await?)
    }

    async fn schedule(&self, workspace: &str, id: Uuid) -> Result<Option<ScheduleRow>, StoreError> {
        let row = sqlx::query(*GET_SCHEDULE).bind(workspace).bind(id).fetch_optional(&self.pool).await?;
        Ok(schedules(&Vec::from_iter(row))?.pop())
    }

    async fn pause_schedule(
        &self,
        workspace: &str,
        id: Uuid,
        paused: bool,
        next_fire_at: Option<Micros>,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        let now: Micros = sqlx::query_scalar(*CLOCK).fetch_one(&self.pool).await?;
        let row = sqlx::query(*PAUSE_SCHEDULE)
            .bind(workspace)
            .bind(id)
            .bind(paused)
            .bind(next_fire_at)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(schedules(&Vec::from_iter(row))?.pop())
    }

    async fn delete_schedule(&self, workspace: &str, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(*DELETE_SCHEDULE).bind(workspace).bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn due_schedules(&self, limit: usize) -> Result<DueSchedules, StoreError> {
        // The database's clock: the one every node fires by.
        let now: Micros = sqlx::query_scalar(*CLOCK).fetch_one(&self.pool).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let due = schedules(&sqlx::query(*DUE_SCHEDULES).bind(now).bind(limit).fetch_all(&self.pool).await?)?;
        let next: Option<Micros> = sqlx::query_scalar(*NEXT_TICK).bind(now).fetch_one(&self.pool).await?;
        Ok(DueSchedules { now, due, next })
    }

    async fn fire_schedule(&self, firing: ScheduleFiring, planner: Planner) -> Result<FireReport, StoreError> {
        let mut tx = PgTx::begin(self).await?;
        let report = rules::schedules::fire(&mut tx, firing, &planner).await?;
        // The jobs' queues are woken, and the runs' logs signalled, after the commit.
        tx.commit().await?;
        Ok(report)
    }
}

#[async_trait]
impl ScheduleTx for PgTx<'_> {
    async fn lock_schedule(&mut self, id: Uuid) -> Result<Option<ScheduleRow>, StoreError> {
        let row = sqlx::query(*LOCK_SCHEDULE).bind(id).fetch_optional(&mut *self.tx).await?;
        let Some(row) = row else { return Ok(None) };
        // Read the clock once the row is locked: after whatever moved it last.
        self.now = clock(&mut self.tx).await?;
        schedule(&row).map(Some).map_err(err)
    }

    async fn start_live(&mut self, start: StartRef) -> Result<bool, StoreError> {
        let sql = match start {
            StartRef::Job(_) => *JOB_LIVE,
            StartRef::Run(_) => *RUN_LIVE,
        };
        Ok(sqlx::query(sql).bind(start.id()).fetch_optional(&mut *self.tx).await?.is_some())
    }

    async fn submit_job(&mut self, job: &NewJob, admission: &Admission) -> Result<Submitted, StoreError> {
        // The key first: a job already stored under it is the answer, and nothing counts.
        let stored = stored_under_keys(&mut self.tx, std::iter::once(job)).await?;
        if let Some(found) = job.idempotency_key.as_ref().and_then(|k| stored.get(&(job.workspace.clone(), k.clone())))
        {
            return Ok(Submitted { id: found.id, state: found.state, created: false });
        }
        // Then the limits, under the workspace's admission lock, as `submit_admitted`.
        let mut hold = None;
        if submission::gated(admission) {
            let counts = in_flight(&mut self.tx, "jobs", &job.workspace, &job.user).await?;
            let held: i64 = match admission.queue_on_limit {
                true => sqlx::query_scalar(*HELD_COUNT).bind(&job.workspace).fetch_one(&mut *self.tx).await?,
                false => 0,
            };
            hold = submission::hold(admission, counts, 1, held.max(0) as u64)?;
        }
        for (queue, cap) in admission.queue_caps.iter().filter(|(q, _)| *q == job.queue) {
            sqlx::query(*DEPTH_LOCK).bind(queue).execute(&mut *self.tx).await?;
            let waiting = count_waiting(&mut self.tx, queue, *cap).await?;
            submission::check_depth(queue, *cap, waiting, 1)?;
        }
        let Some(reason) = hold else {
            self.insert_job(job).await?;
            let state = match job.run_at {
                Some(at) if at > self.now => JobState::Scheduled,
                _ => JobState::Queued,
            };
            return Ok(Submitted { id: job.id, state, created: true });
        };
        // Held until a slot frees: no worker sees it before.
        insert_jobs(&mut self.tx, Some(self.now), std::slice::from_ref(job), &[]).await?;
        sqlx::query(*HOLD_JOBS).bind(vec![job.id]).execute(&mut *self.tx).await?;
        let (kind, data) = transition::held_event(&job.queue, &reason);
        insert_events(&mut self.tx, self.now, vec![(job.id, kind, data)]).await?;
        self.logs.push(Subject::Job(job.id));
        Ok(Submitted { id: job.id, state: JobState::Held, created: true })
    }

    async fn update_schedule(&mut self, r: &ScheduleRow) -> Result<(), StoreError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(*UPDATE_SCHEDULE)
            .bind(r.id)
            .bind(r.next_fire_at)
            .bind(r.last_tick)
            .bind(r.last_start.map(|s| s.kind()))
            .bind(r.last_start.map(|s| s.id()))
            .bind(r.waiting_tick)
            .bind(n(r.started))
            .bind(n(r.skipped))
            .bind(n(r.refused))
            .bind(n(r.missed))
            .bind(&r.last_error)
            .bind(self.now)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
