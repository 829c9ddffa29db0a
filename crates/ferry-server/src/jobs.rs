//! `/v1/jobs`: submit, read, list, cancel, replay, events.

use crate::error::{ApiError, ErrorBody};
use crate::events::{self, EventLog, EventQuery, Page};
use crate::extract::{JsonBody, Path, Query};
use crate::views::{BatchAccepted, BatchRequest, EventList, EventView, JobAccepted, JobPage, JobStateView, JobView};
use crate::wait::WaitQuery;
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::time::now_micros;
use ferry_core::{JobId, JobSpec, JobState};
use ferry_store::{CancelOutcome, DeleteOutcome, JobFilter, ReplayOutcome, Store, StoreError, Subject};
use std::collections::BTreeMap;
use std::time::Duration;

fn parse_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse_str(raw).map_err(|_| ApiError::bad_field("id", format!("`{raw}` is not a job id (a UUID)")))
}

fn status_of(created: bool) -> StatusCode {
    if created { StatusCode::CREATED } else { StatusCode::OK }
}

/// Submit a job.
///
/// Answers 201 with the new job's id, or 200 with the existing job when the idempotency
/// key (body field or `Idempotency-Key` header) was already used with the same spec.
/// With `?wait=30s` it waits for the job to end: 200 with the ended job (as `GET
/// /v1/jobs/{id}` answers it), or 202 with the id and state when the wait ends first.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", operation_id = "submitJob",
    request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]([\t\x20-\x7E]*[\x21-\x7E])?$", description = "Same as the body's `idempotency_key` (give either, or both equal)"),
           ("wait" = Option<String>, Query, pattern = r"^((0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)ms|([0-9]|[1-5][0-9]|60)s|[01]m)$", description = "Wait up to this long (`500ms`, `30s`, `1m`; at most 60 s) for the job to end")),
    responses(
        (status = 201, description = "Created", body = JobAccepted),
        (status = 200, description = "Idempotency key matched an existing job; with `wait`, the job ended within it (the job as `GET /v1/jobs/{id}` answers it)", body = crate::views::JobAnswer),
        (status = 202, description = "With `wait`: the job had not ended when the wait did", body = JobAccepted),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 409, description = "Idempotency key used with another spec", body = ErrorBody),
        (status = 413, description = "Body or input over its limit", body = ErrorBody),
        (status = 429, description = "Beyond a concurrency limit of the workspace or user (`limit_reached`), unless `on_limit` is `queue`", body = ErrorBody),
        (status = 503, description = "The queue holds its most waiting jobs (`queue_full`), or the store is unreachable (`unavailable`)", body = ErrorBody),
    )
)]
pub async fn submit(
    State(st): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(wait): Query<WaitQuery>,
    JsonBody(mut spec): JsonBody<JobSpec>,
) -> Result<Response, ApiError> {
    let wait = wait.duration()?;
    crate::extract::idempotency_key(&headers, &mut spec.idempotency_key)?;
    let may_wait = spec.on_limit == Some(ferry_core::OnLimit::Queue);
    st.learn_kinds(&[spec.kind.as_str()]).await?;
    let (job, check) = st.validate(spec, &caller, now_micros())?;
    let queue = job.queue.clone();
    let jobs = vec![job];
    let mut admission = st.job_admission(&caller, &jobs).await?;
    admission.queue_on_limit = may_wait;
    crate::blobs::store_claim_checks(&st, &caller, check.into_iter().collect()).await?;
    let submitted = st.store.submit_admitted(jobs, admission).await?;
    let accepted = JobAccepted::from(submitted.into_iter().next().ok_or_else(|| {
        ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &"the store returned no job")
    })?);
    if accepted.created {
        metrics::counter!("ferry_jobs_submitted_total", "queue" => queue).increment(1);
    }
    let Some(wait) = wait else { return Ok((status_of(accepted.created), Json(accepted)).into_response()) };
    match ended_within(&st, &caller, accepted.id, wait).await? {
        (job, true) => Ok((StatusCode::OK, Json(job)).into_response()),
        (job, false) => Ok((StatusCode::ACCEPTED, Json(JobAccepted { state: job.state, ..accepted })).into_response()),
    }
}

/// The job once it ended, or as it is when `wait` is over; whether it ended.
async fn ended_within(st: &ApiState, caller: &Caller, id: JobId, wait: Duration) -> Result<(JobView, bool), ApiError> {
    let mut waiter = crate::wait::Waiter::new(&st.store.event_signal(), Subject::Job(id), wait);
    loop {
        let job = st.store.get_job(&caller.workspace, id).await?.ok_or_else(|| ApiError::not_found("job"))?;
        let ended = job.state.is_final();
        if ended || !waiter.next().await {
            return Ok((JobView::new(job, true), ended));
        }
    }
}

/// Submit up to 1000 jobs at once, all or nothing.
///
/// Every spec is validated first; one bad spec refuses the whole batch, naming it
/// (`jobs[3].kind`), and nothing is stored. Answers in the order given.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs", operation_id = "submitJobBatch",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Created", body = BatchAccepted),
        (status = 200, description = "Every job matched an existing idempotency key", body = BatchAccepted),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 409, description = "Idempotency key used with another spec", body = ErrorBody),
        (status = 413, description = "Body or an input over its limit", body = ErrorBody),
        (status = 429, description = "Beyond a concurrency limit of the workspace or user (`limit_reached`), unless every job's `on_limit` is `queue`", body = ErrorBody),
        (status = 503, description = "A queue would hold more than its most waiting jobs (`queue_full`), or the store is unreachable (`unavailable`)", body = ErrorBody),
    )
)]
pub async fn submit_batch(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let max = st.cfg.max_batch;
    if batch.jobs.is_empty() {
        return Err(ApiError::bad_field("jobs", "must hold at least one job"));
    }
    if batch.jobs.len() > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            format!("a batch holds at most {max} jobs; this one has {}", batch.jobs.len()),
        )
        .field("jobs"));
    }
    st.learn_kinds(&batch.jobs.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>()).await?;
    let now = now_micros();
    let mut jobs = Vec::with_capacity(batch.jobs.len());
    // A batch waits for a slot only if every job in it may.
    let may_wait = batch.jobs.iter().all(|s| s.on_limit == Some(ferry_core::OnLimit::Queue));
    let mut checks = Vec::new();
    for (i, spec) in batch.jobs.into_iter().enumerate() {
        let (job, check) = st.validate(spec, &caller, now).map_err(|mut e| {
            e.field = Some(format!("jobs[{i}].{}", e.field.as_deref().unwrap_or("")).trim_end_matches('.').to_string());
            e
        })?;
        jobs.push(job);
        checks.extend(check);
    }
    let mut per_queue: BTreeMap<String, u64> = BTreeMap::new();
    for j in &jobs {
        *per_queue.entry(j.queue.clone()).or_default() += 1;
    }
    let mut admission = st.job_admission(&caller, &jobs).await?;
    admission.queue_on_limit = may_wait;
    crate::blobs::store_claim_checks(&st, &caller, checks).await?;
    let submitted = st.store.submit_admitted(jobs, admission).await.map_err(|e| match e {
        StoreError::IdempotencyConflict { index, .. } => {
            let mut err = ApiError::from(e);
            err.field = Some(format!("jobs[{index}].idempotency_key"));
            err
        }
        other => ApiError::from(other),
    })?;
    let any_created = submitted.iter().any(|s| s.created);
    if any_created {
        for (queue, n) in per_queue {
            metrics::counter!("ferry_jobs_submitted_total", "queue" => queue).increment(n);
        }
    }
    let jobs = submitted.into_iter().map(JobAccepted::from).collect();
    Ok((status_of(any_created), Json(BatchAccepted { jobs })))
}

/// One job with its attempts, output and error. With `?wait=30s`, answered as soon as
/// the job has ended, or as it is when the wait is over.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "getJob",
    params(("id" = uuid::Uuid, Path, description = "Job id"),
           ("wait" = Option<String>, Query, pattern = r"^((0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)ms|([0-9]|[1-5][0-9]|60)s|[01]m)$", description = "Wait up to this long (`500ms`, `30s`, `1m`; at most 60 s) for the job to end")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(wait): Query<WaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_id(&id)?;
    let wait = wait.duration()?;
    if let Some(wait) = wait {
        return Ok(Json(ended_within(&st, &caller, id, wait).await?.0));
    }
    let job = st.store.get_job(&caller.workspace, id).await?.ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(JobView::new(job, true)))
}

/// Jobs, newest first, with optional filters. The dead-letter queue is `state=dead`.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", operation_id = "listJobs",
    params(
        ("state" = Option<JobState>, Query, description = "Only jobs in this state"),
        ("queue" = Option<String>, Query, description = "Only jobs of this queue"),
        ("kind" = Option<String>, Query, description = "Only jobs of this kind"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<uuid::Uuid>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody))
)]
pub async fn list(
    State(st): State<ApiState>,
    caller: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    let mut filter = JobFilter { limit: 50, ..JobFilter::default() };
    for (key, value) in q {
        match key.as_str() {
            "state" => {
                filter.state = Some(value.parse().map_err(|e: String| ApiError::bad_field("state", e))?);
            }
            "queue" => filter.queue = Some(value),
            "kind" => filter.kind = Some(value),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_field("limit", "must be an integer from 1 to 1000"))?;
            }
            "cursor" => {
                filter.cursor = Some(
                    JobId::parse_str(&value)
                        .map_err(|_| ApiError::bad_field("cursor", "is not a cursor from a previous page"))?,
                );
            }
            other => return Err(ApiError::bad_field(other, "unknown query parameter")),
        }
    }
    let page = st.store.list_jobs(&caller.workspace, filter).await?;
    Ok(Json(JobPage {
        items: page.items.into_iter().map(|j| JobView::new(j, false)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Cancel a job. A queued or scheduled job never runs; a running attempt is stopped.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 200, body = JobStateView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStateView>, ApiError> {
    let id = parse_id(&id)?;
    match st.store.cancel(&caller.workspace, id).await? {
        CancelOutcome::Cancelled { was_running, queue, kind } => {
            if was_running && let Some(engine) = &st.engine {
                engine.stop_attempt(id);
            }
            // A job of a queue no longer configured is counted without naming it: labels
            // take operator-set values only.
            let queue = if st.cfg.queues.contains(&queue) { queue } else { "other".to_string() };
            metrics::counter!("ferry_jobs_finished_total", "queue" => queue, "kind" => kind, "state" => "cancelled")
                .increment(1);
            Ok(Json(JobStateView { id, state: JobState::Cancelled }))
        }
        CancelOutcome::NotFound => Err(ApiError::not_found("job")),
        CancelOutcome::AlreadyFinal(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("the job is already {state} and cannot be cancelled"),
        )),
    }
}

/// Run a dead or cancelled job again, with fresh attempts and a fresh retry budget.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/replay", tag = "jobs", operation_id = "replayJob",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 200, body = JobStateView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The job is not dead or cancelled", body = ErrorBody),
    )
)]
pub async fn replay(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStateView>, ApiError> {
    let id = parse_id(&id)?;
    match st.store.replay(&caller.workspace, id).await? {
        ReplayOutcome::Replayed => Ok(Json(JobStateView { id, state: JobState::Queued })),
        ReplayOutcome::NotFound => Err(ApiError::not_found("job")),
        ReplayOutcome::NotReplayable(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("only dead or cancelled jobs can be replayed; this one is {state}"),
        )),
    }
}

/// Delete a finished job (succeeded, dead or cancelled) and its events: how a dead job
/// leaves the dead-letter queue without a replay. An unfinished job must be cancelled
/// first.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "deleteJob",
    params(("id" = uuid::Uuid, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The job has not finished", body = ErrorBody),
    )
)]
pub async fn delete(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    match st.store.delete(&caller.workspace, id).await? {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found("job")),
        DeleteOutcome::NotFinished(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("only finished jobs can be deleted; this one is {state} (cancel it first)"),
        )),
    }
}

/// A job's events, oldest first: JSON, or Server-Sent Events when asked for
/// `text/event-stream` (replay after `Last-Event-ID` or `?after=`, then live, closing
/// after the job's final event: `succeeded`, `dead` or `cancelled`).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "listJobEvents",
    params(
        ("id" = uuid::Uuid, Path, description = "Job id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Only events after this id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this event id (a reconnecting event stream sends it); wins over `after`"),
    ),
    responses(
        (status = 200, description = "The events: JSON by default; Server-Sent Events (each event's data is an `EventView`) when the request's `Accept` names `text/event-stream`", content(
            (EventList = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 429, description = "Too many event streams open (`too_many_streams`)", body = ErrorBody),
    )
)]
pub async fn events(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<axum::response::Response, ApiError> {
    events::answer::<JobLog>(&st, &caller, parse_id(&id)?, &headers, q).await
}

/// A job's event log, for [`events::answer`]. The store reads a job's log whole (a job has
/// a few events per attempt), so a read is always one complete page.
pub(crate) struct JobLog;

impl EventLog for JobLog {
    type Id = JobId;
    type View = EventView;
    type List = EventList;
    const NAME: &'static str = "job";

    fn subject(id: JobId) -> Subject {
        Subject::Job(id)
    }

    async fn ended(store: &dyn Store, workspace: &str, id: JobId) -> Result<Option<bool>, StoreError> {
        Ok(store.get_job(workspace, id).await?.map(|j| j.state.is_final()))
    }

    async fn read(
        store: &dyn Store,
        workspace: &str,
        id: JobId,
        after: i64,
    ) -> Result<Option<Page<EventView>>, StoreError> {
        let Some(events) = store.job_events(workspace, id).await? else { return Ok(None) };
        let events = events.into_iter().filter(|e| e.id > after).map(EventView::from).collect();
        Ok(Some(Page { events, complete: true }))
    }

    fn list(events: Vec<EventView>) -> EventList {
        EventList { events }
    }

    fn id_and_type(view: &EventView) -> (i64, &str) {
        (view.id, &view.event_type)
    }
}
