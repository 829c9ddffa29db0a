//! Schedules as stored, and how a tick is fired, once for both backends.
//!
//! The rules of a schedule are `ferry_core::schedule`'s; the schedulers
//! (`ferry_worker::scheduler`, one per `ferry server` node) read the schedules that are
//! due ([`ScheduleStore::due_schedules`], by the store's clock), decide with
//! `ferry_core::schedule::due` which ticks fire, make each tick's job or run the way the
//! API makes them (validation, admission limits) and propose a [`ScheduleFiring`].
//!
//! [`ScheduleStore::fire_schedule`] is the rule `rules::schedules::fire`, in one
//! transaction: it locks the schedule's row (PostgreSQL: `FOR UPDATE`; SQLite: its one
//! writer) and goes on only if the row is still as the proposal read it (not paused,
//! `next_fire_at` and `waiting_tick` unchanged: a compare-and-set on the tick). Then, for
//! each tick, the overlap rule (`ferry_core::schedule::overlap`, over whether the last
//! start is still going) starts, queues or skips it; a start goes through the same
//! admission as the API's (`submit_admitted`'s rule for a job, `rules::runs::create` for
//! a run), under the idempotency key `schedule:<id>:<tick micros>`. A start the limits
//! refuse is counted (`refused`, `last_error`) and the schedule moves on. Last, the row
//! gets its new `next_fire_at`. So two nodes racing for one tick start exactly one job or
//! run: the second finds `next_fire_at` moved and does nothing (and were it to get past,
//! the key would find the first one's job).

use crate::runs::{Advanced, NewRun, Planner};
use crate::{Admission, StoreError};
use async_trait::async_trait;
use ferry_core::schedule::Overlap;
use ferry_core::time::Micros;
use ferry_core::{JobId, NewJob};
use serde_json::Value;
use uuid::Uuid;

/// A schedule to store.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub id: Uuid,
    pub workspace: String,
    pub name: String,
    /// The `ScheduleSpec` as created.
    pub spec: Value,
    pub paused: bool,
    /// Its first tick (`None`: it never ticks).
    pub next_fire_at: Option<Micros>,
    pub created_by: String,
    /// Its interval's anchor.
    pub created_at: Micros,
}

/// What a schedule started last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRef {
    Job(JobId),
    Run(Uuid),
}

impl StartRef {
    pub fn kind(&self) -> &'static str {
        match self {
            StartRef::Job(_) => "job",
            StartRef::Run(_) => "run",
        }
    }

    pub fn id(&self) -> Uuid {
        match self {
            StartRef::Job(id) | StartRef::Run(id) => *id,
        }
    }

    pub(crate) fn from_parts(kind: Option<String>, id: Option<Uuid>) -> Option<StartRef> {
        match (kind.as_deref(), id) {
            (Some("run"), Some(id)) => Some(StartRef::Run(id)),
            (Some(_), Some(id)) => Some(StartRef::Job(id)),
            _ => None,
        }
    }
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub workspace: String,
    pub name: String,
    pub spec: Value,
    pub paused: bool,
    pub next_fire_at: Option<Micros>,
    pub last_tick: Option<Micros>,
    pub last_start: Option<StartRef>,
    /// A tick waiting for the last start to end (`overlap: queue`).
    pub waiting_tick: Option<Micros>,
    /// Ticks that started a job or run.
    pub started: u64,
    /// Ticks the overlap policy skipped.
    pub skipped: u64,
    /// Starts the limits (or a gone workflow, kind or queue) refused.
    pub refused: u64,
    /// Ticks the catch-up policy dropped.
    pub missed: u64,
    pub last_error: Option<String>,
    pub created_by: String,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// What [`ScheduleStore::due_schedules`] found.
#[derive(Debug, Clone, Default)]
pub struct DueSchedules {
    /// The store's clock when it read.
    pub now: Micros,
    /// Unpaused schedules whose next tick is at or before `now`, or with a tick waiting,
    /// soonest first.
    pub due: Vec<ScheduleRow>,
    /// The earliest next tick of the other unpaused schedules.
    pub next: Option<Micros>,
}

/// A tick's start, made by the scheduler as the API would make it.
#[derive(Debug, Clone)]
pub enum Start {
    Job {
        job: Box<NewJob>,
        admission: Admission,
    },
    Run(Box<NewRun>),
    /// It could not be made (the kind, queue or workflow is gone…): counted as refused.
    Refused(String),
}

/// A scheduler's proposal to fire a schedule (see the module doc).
#[derive(Debug, Clone)]
pub struct ScheduleFiring {
    pub id: Uuid,
    /// `next_fire_at` as read: the firing goes on only if it is unchanged.
    pub expect_next: Option<Micros>,
    /// `waiting_tick` as read, with its start: it starts if the last start has ended.
    pub waiting: Option<(Micros, Start)>,
    /// The ticks to fire, oldest first, each with its start.
    pub ticks: Vec<(Micros, Start)>,
    /// Ticks the catch-up policy dropped.
    pub missed: u64,
    pub overlap: Overlap,
    /// The next tick after these.
    pub next_fire_at: Option<Micros>,
}

/// What a firing did.
#[derive(Debug, Clone, Default)]
pub struct FireReport {
    /// `false`: the row had moved (another node fired, a pause, a delete): nothing done.
    pub applied: bool,
    pub started: Vec<(Micros, StartRef)>,
    pub skipped: u64,
    pub refused: Vec<(Micros, String)>,
    /// A tick that now waits.
    pub waiting: Option<Micros>,
    /// What the runs started did (their first advance).
    pub advanced: Advanced,
}

/// The schedules' part of the store (a supertrait of [`crate::Store`], so every backend
/// has it; each implements it in its `schedules.rs`).
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a schedule; `false` (nothing stored) when its workspace has one of that name.
    async fn create_schedule(&self, schedule: NewSchedule) -> Result<bool, StoreError>;

    /// The workspace's schedules, by name.
    async fn schedules(&self, workspace: &str) -> Result<Vec<ScheduleRow>, StoreError>;

    /// One schedule of the workspace.
    async fn schedule(&self, workspace: &str, id: Uuid) -> Result<Option<ScheduleRow>, StoreError>;

    /// Pauses (`next_fire_at` kept, nothing fires) or resumes a schedule with its next
    /// tick (ticks missed while paused are not caught up). `None`: no such schedule.
    async fn pause_schedule(
        &self,
        workspace: &str,
        id: Uuid,
        paused: bool,
        next_fire_at: Option<Micros>,
    ) -> Result<Option<ScheduleRow>, StoreError>;

    /// Deletes a schedule (what it started stays); `false`: no such schedule.
    async fn delete_schedule(&self, workspace: &str, id: Uuid) -> Result<bool, StoreError>;

    /// Every workspace's schedules due by the store's clock (at most `limit`), and the
    /// earliest next tick of the rest.
    async fn due_schedules(&self, limit: usize) -> Result<DueSchedules, StoreError>;

    /// Fires a schedule as proposed, in one transaction (see the module doc).
    async fn fire_schedule(&self, firing: ScheduleFiring, planner: Planner) -> Result<FireReport, StoreError>;
}
