//! `/v1/schedules`: create, list, read, pause, resume and delete the workspace's
//! schedules (`ferry_core::schedule`), and the [`Starter`] that makes each tick's job or
//! run exactly as `POST /v1/jobs` and `POST /v1/runs` would (the server's kinds, queues
//! and limits; the workspace's admission), for the scheduler (`ferry_worker::scheduler`).
//!
//! A schedule is checked when it is created: its own rules (cron or interval, time zone,
//! policies) and its job against this server as a submission would be, or its workflow
//! (and version) against the workspace's. Its first tick is the first after its creation.
//! A resume starts again from the first tick after the resume: ticks that fell while it
//! was paused are not caught up.

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Path};
use crate::views::{ScheduleList, ScheduleView};
use crate::{ApiState, Caller};
use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::OnLimit;
use ferry_core::schedule::{ScheduleSpec, idempotency_key};
use ferry_core::time::{Micros, now_micros};
use ferry_store::runs::NewRun;
use ferry_store::schedules::Start;
use ferry_store::{NewSchedule, ScheduleRow};
use ferry_worker::scheduler::Starter;
use uuid::Uuid;

/// How many next fire times a view shows.
const SHOWN_TICKS: usize = 5;
/// The most schedules a workspace keeps (`409 too_many_schedules` past it): each tick of
/// each schedule is a transaction of the store's.
pub const MAX_SCHEDULES: usize = 1_000;

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_field("id", format!("`{raw}` is not a schedule id (a UUID)")))
}

/// The view of a stored schedule, with its next ticks.
fn view(row: ScheduleRow) -> Result<ScheduleView, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
    let spec: ScheduleSpec = serde_json::from_value(row.spec.clone()).map_err(|e| bad(&e))?;
    let valid = spec.validate(row.created_at).map_err(|e| bad(&e.message))?;
    let upcoming = match (row.paused, row.next_fire_at) {
        (false, Some(next)) => {
            let mut ticks = vec![next];
            ticks.extend(valid.timing.upcoming(next, SHOWN_TICKS - 1));
            ticks
        }
        _ => Vec::new(),
    };
    Ok(ScheduleView::new(row, spec, upcoming))
}

/// Create a schedule: a cron expression (5 or 6 fields) in an IANA time zone, or a fixed
/// interval, that starts a job or a workflow run at each tick, exactly once across every
/// node (its idempotency key: `schedule:<id>:<tick in µs>`).
#[utoipa::path(
    post, path = "/v1/schedules", tag = "schedules", operation_id = "createSchedule",
    request_body = ScheduleSpec,
    responses(
        (status = 201, body = ScheduleView),
        (status = 400, description = "Bad input, naming the field (`job.kind`, `cron`, `timezone`, `catch_up.max`…)", body = ErrorBody),
        (status = 409, description = "The workspace has a schedule of that name (`name_taken`), or 1000 schedules already (`too_many_schedules`)", body = ErrorBody),
        (status = 413, description = "The job's input over its limit", body = ErrorBody),
    )
)]
pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let now = now_micros();
    let valid = spec.validate(now)?;
    if let Some(job) = &spec.job {
        // The job as this server takes a submission now: kind, queue, input, limits.
        st.validate(job.clone(), &caller, now).map_err(|mut e| {
            e.field = Some(format!("job.{}", e.field.as_deref().unwrap_or("")).trim_end_matches('.').to_string());
            e
        })?;
    }
    if let Some(run) = &spec.run {
        check_run(&st, &caller, run).await?;
    }
    // Counted before the insert: racing creations on several nodes may pass it by a few.
    if st.store.schedules(&caller.workspace).await?.len() >= MAX_SCHEDULES {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_schedules",
            format!("a workspace keeps at most {MAX_SCHEDULES} schedules; delete one first"),
        ));
    }
    let new = NewSchedule {
        id: Uuid::now_v7(),
        workspace: caller.workspace.clone(),
        name: spec.name.clone(),
        spec: serde_json::to_value(&spec)
            .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e))?,
        paused: spec.paused.unwrap_or(false),
        next_fire_at: valid.timing.next_after(now),
        created_by: caller.user.clone(),
        created_at: now,
    };
    let id = new.id;
    if !st.store.create_schedule(new).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            format!("the workspace has a schedule named `{}`", spec.name),
        )
        .field("name"));
    }
    st.schedules.notify_one();
    let row = st.store.schedule(&caller.workspace, id).await?.ok_or_else(|| ApiError::not_found("schedule"))?;
    Ok((StatusCode::CREATED, Json(view(row)?)))
}

/// A run target's workflow (and version) must exist in the workspace, and its input fit.
async fn check_run(st: &ApiState, caller: &Caller, run: &ferry_core::schedule::RunTarget) -> Result<(), ApiError> {
    let size = serde_json::to_vec(&run.input).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > st.cfg.limits.max_input_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("is {size} bytes; the limit is {} bytes", st.cfg.limits.max_input_bytes),
        )
        .field("run.input"));
    }
    if st.store.workflow_version(&caller.workspace, &run.workflow, run.version).await?.is_none() {
        let what = match run.version {
            Some(v) => format!("workflow `{}` has no version {v}", run.workflow),
            None => format!("no workflow `{}` in the workspace", run.workflow),
        };
        let field = if run.version.is_some() { "run.version" } else { "run.workflow" };
        return Err(ApiError::bad_field(field, what));
    }
    Ok(())
}

/// The workspace's schedules, by name, each with its next fire times.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules", operation_id = "listSchedules",
    responses((status = 200, body = ScheduleList))
)]
pub async fn list(State(st): State<ApiState>, caller: Caller) -> Result<Json<ScheduleList>, ApiError> {
    let rows = st.store.schedules(&caller.workspace).await?;
    Ok(Json(ScheduleList { schedules: rows.into_iter().map(view).collect::<Result<_, _>>()? }))
}

/// One schedule, with its next fire times, counters and last refusal.
#[utoipa::path(
    get, path = "/v1/schedules/{id}", tag = "schedules", operation_id = "getSchedule",
    params(("id" = uuid::Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = st.store.schedule(&caller.workspace, parse_id(&id)?).await?;
    Ok(Json(view(row.ok_or_else(|| ApiError::not_found("schedule"))?)?))
}

/// Delete a schedule; what it started goes on.
#[utoipa::path(
    delete, path = "/v1/schedules/{id}", tag = "schedules", operation_id = "deleteSchedule",
    params(("id" = uuid::Uuid, Path, description = "Schedule id")),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub async fn delete(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match st.store.delete_schedule(&caller.workspace, parse_id(&id)?).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found("schedule")),
    }
}

/// Pause a schedule: no tick fires until it is resumed (a tick waiting under `overlap:
/// queue` waits on).
#[utoipa::path(
    post, path = "/v1/schedules/{id}/pause", tag = "schedules", operation_id = "pauseSchedule",
    params(("id" = uuid::Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn pause(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = st.store.pause_schedule(&caller.workspace, parse_id(&id)?, true, None).await?;
    Ok(Json(view(row.ok_or_else(|| ApiError::not_found("schedule"))?)?))
}

/// Resume a schedule from its first tick after now: ticks that fell while it was paused
/// are not caught up.
#[utoipa::path(
    post, path = "/v1/schedules/{id}/resume", tag = "schedules", operation_id = "resumeSchedule",
    params(("id" = uuid::Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody))
)]
pub async fn resume(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = parse_id(&id)?;
    let Some(row) = st.store.schedule(&caller.workspace, id).await? else {
        return Err(ApiError::not_found("schedule"));
    };
    let spec: ScheduleSpec = serde_json::from_value(row.spec.clone())
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e))?;
    let valid = spec.validate(row.created_at)?;
    let next = valid.timing.next_after(now_micros());
    let row = st.store.pause_schedule(&caller.workspace, id, false, next).await?;
    st.schedules.notify_one();
    Ok(Json(view(row.ok_or_else(|| ApiError::not_found("schedule"))?)?))
}

#[async_trait]
impl Starter for ApiState {
    async fn start(&self, row: &ScheduleRow, spec: &ScheduleSpec, tick: Micros) -> Start {
        // The schedule's creator, with the rights a schedule needs (it was created by a
        // submitter at least).
        let caller = Caller {
            workspace: row.workspace.clone(),
            user: row.created_by.clone(),
            role: ferry_core::auth::Role::Submitter,
        };
        let key = idempotency_key(row.id, tick);
        let made = match (&spec.job, &spec.run) {
            (Some(job), _) => self.scheduled_job(&caller, &row.name, job.clone(), key).await,
            (None, Some(run)) => self.limits_of(&caller.workspace).await.map(|limits| {
                Start::Run(Box::new(NewRun {
                    id: Uuid::now_v7(),
                    workspace: caller.workspace.clone(),
                    user: caller.user.clone(),
                    workflow: run.workflow.clone(),
                    version: run.version,
                    input: run.input.clone().unwrap_or(serde_json::Value::Null),
                    idempotency_key: Some(key),
                    request_hash: None,
                    admission: limits.runs_for(&caller.user),
                    queue_on_limit: false,
                    tokens_per_day: limits.tokens_per_day,
                    depth: 0,
                }))
            }),
            (None, None) => Ok(Start::Refused("the schedule starts nothing".into())),
        };
        made.unwrap_or_else(|e| Start::Refused(e.message))
    }
}

impl ApiState {
    /// A tick's job, as `POST /v1/jobs` makes it, labelled `schedule: <name>`.
    async fn scheduled_job(
        &self,
        caller: &Caller,
        name: &str,
        mut spec: ferry_core::JobSpec,
        key: String,
    ) -> Result<Start, ApiError> {
        let may_wait = spec.on_limit == Some(OnLimit::Queue);
        spec.labels.get_or_insert_default().entry("schedule".into()).or_insert_with(|| name.to_string());
        let (mut job, check) = self.validate(spec, caller, now_micros())?;
        job.idempotency_key = Some(key);
        let jobs = vec![job];
        let mut admission = self.job_admission(caller, &jobs).await?;
        admission.queue_on_limit = may_wait;
        crate::blobs::store_claim_checks(self, caller, check.into_iter().collect()).await?;
        let job = jobs.into_iter().next().map(Box::new).ok_or_else(|| ApiError::not_found("job"))?;
        Ok(Start::Job { job, admission })
    }
}
