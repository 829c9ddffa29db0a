//! What `/v1/schedules` answers.

use chrono::{DateTime, Utc};
use ferry_core::schedule::ScheduleSpec;
use ferry_core::time::to_datetime;
use ferry_store::{ScheduleRow, StartRef};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A schedule, with its next fire times.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: Uuid,
    pub name: String,
    /// The schedule as created.
    pub spec: ScheduleSpec,
    pub paused: bool,
    /// The next tick (kept while paused: a resume starts from the first tick after it);
    /// absent when the schedule never ticks again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The next few ticks from `next_fire_at` on (none while paused).
    pub next_fire_times: Vec<DateTime<Utc>>,
    /// The last tick fired (started, skipped or refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<DateTime<Utc>>,
    /// The job or run the schedule started last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start: Option<StartView>,
    /// A tick waiting for the last start to end (`overlap: queue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_tick: Option<DateTime<Utc>>,
    /// Ticks that started a job or run.
    pub started: u64,
    /// Ticks the overlap policy skipped.
    pub skipped: u64,
    /// Starts refused (limits, or a kind, queue or workflow gone).
    pub refused: u64,
    /// Ticks the catch-up policy dropped after a downtime.
    pub missed: u64,
    /// The last refusal, with its tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A job or run a schedule started.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartView {
    /// `job` or `run`.
    pub kind: String,
    pub id: Uuid,
}

impl ScheduleView {
    /// `row` with its `upcoming` ticks (after `next_fire_at`).
    pub fn new(row: ScheduleRow, spec: ScheduleSpec, upcoming: Vec<i64>) -> ScheduleView {
        ScheduleView {
            id: row.id,
            name: row.name,
            spec,
            paused: row.paused,
            next_fire_at: row.next_fire_at.map(to_datetime),
            next_fire_times: upcoming.into_iter().map(to_datetime).collect(),
            last_tick: row.last_tick.map(to_datetime),
            last_start: row.last_start.map(|s: StartRef| StartView { kind: s.kind().into(), id: s.id() }),
            waiting_tick: row.waiting_tick.map(to_datetime),
            started: row.started,
            skipped: row.skipped,
            refused: row.refused,
            missed: row.missed,
            last_error: row.last_error,
            created_by: row.created_by,
            created_at: to_datetime(row.created_at),
            updated_at: to_datetime(row.updated_at),
        }
    }
}

/// The workspace's schedules, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}
