//! `/v1/workflows` and `/v1/runs`: register versioned workflows, start runs, watch them.

use crate::error::{ApiError, ErrorBody};
use crate::events::{self, EventLog, EventQuery, Page};
use crate::extract::{JsonBody, Path, Query};
use crate::views::{
    RunAccepted, RunEventList, RunEventView, RunPageView, RunRequest, RunStateView, RunView, WorkflowAccepted,
    WorkflowList, WorkflowSummaryView, WorkflowVersionView, WorkflowVersions,
};
use crate::wait::WaitQuery;
use crate::{ApiState, Caller};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::OnLimit;
use ferry_core::run::{RunId, RunState};
use ferry_core::time::to_datetime;
use ferry_core::workflow::WorkflowSpec;
use ferry_store::{CreateRunOutcome, NewRun, RunFilter, Store, StoreError, Subject};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Most events one read of a run's log returns (a stream reads again at once when it got
/// this many).
const EVENT_PAGE: usize = 500;

/// As for a job: only configured queues (which also keeps tenant-chosen names out of the
/// queue label of `/metrics`). `None` is the default queue.
fn parse_run_id(raw: &str) -> Result<RunId, ApiError> {
    RunId::parse_str(raw).map_err(|_| ApiError::bad_field("id", format!("`{raw}` is not a run id (a UUID)")))
}

/// Register a workflow: a new version of its name (the first is 1). Old versions stay
/// runnable.
#[utoipa::path(
    post, path = "/v1/workflows", tag = "workflows", operation_id = "registerWorkflow",
    request_body = WorkflowSpec,
    responses(
        (status = 201, body = WorkflowAccepted),
        (status = 400, description = "Invalid definition, naming the node and field", body = ErrorBody),
    )
)]
pub async fn register(
    State(st): State<ApiState>,
    caller: Caller,
    JsonBody(mut spec): JsonBody<WorkflowSpec>,
) -> Result<(StatusCode, Json<WorkflowAccepted>), ApiError> {
    let mut kinds: Vec<&str> = spec.nodes.iter().map(|n| n.kind.as_str()).collect();
    for agent in spec.agents.values() {
        kinds.extend(agent.tools.iter().map(|t| t.kind.as_str()));
    }
    st.learn_kinds(&kinds).await?;
    let registry = st.registry.clone();
    spec.validate(&|kind| registry.get(kind).is_some(), &st.cfg.limits)?;
    // A node that names no queue or timeout gets its kind's now, as a job would at
    // submission: the stored definition says where its jobs go and how long they may take.
    for node in spec.nodes.iter_mut() {
        if node.queue.is_none() {
            node.queue = st.queue_of_kind(&node.kind);
        }
        if node.timeout_ms.is_none() {
            node.timeout_ms = st.timeout_of_kind(&node.kind);
        }
    }
    // An input without references is final: its kind can check it now. One with
    // references is checked when the node starts (a refusal then fails the node).
    for (i, node) in spec.nodes.iter().enumerate() {
        st.check_queue(&node.kind, node.queue.as_deref(), || format!("nodes[{i}].queue"))?;
        let input = node.input.clone().unwrap_or(Value::Null);
        if ferry_core::workflow::references(&input).is_ok_and(|r| r.is_empty())
            && let Some(executor) = registry.get(&node.kind)
        {
            executor.validate(&input).map_err(|e| e.within(&format!("nodes[{i}]")))?;
        }
    }
    // An agent's steps and tools, likewise: their jobs' queues are stored, and a tool's
    // input without references is checked by its kind now.
    for (name, agent) in spec.agents.iter_mut() {
        if let Some(executor) = registry.get(ferry_core::agent::LLM_KIND) {
            agent_calls(executor.as_ref(), name, agent)?;
        }
        let llm = agent.llm.get_or_insert_with(Default::default);
        if llm.queue.is_none() {
            llm.queue = st.queue_of_kind(ferry_core::agent::LLM_KIND);
        }
        st.check_queue(ferry_core::agent::LLM_KIND, llm.queue.as_deref(), || format!("agents.{name}.llm.queue"))?;
        for (j, tool) in agent.tools.iter_mut().enumerate() {
            if tool.queue.is_none() {
                tool.queue = st.queue_of_kind(&tool.kind);
            }
            if tool.timeout_ms.is_none() {
                tool.timeout_ms = st.timeout_of_kind(&tool.kind);
            }
            st.check_queue(&tool.kind, tool.queue.as_deref(), || format!("agents.{name}.tools[{j}].queue"))?;
            if let Some(input) = &tool.input
                && ferry_core::workflow::references(input).is_ok_and(|r| r.is_empty())
                && let Some(executor) = registry.get(&tool.kind)
            {
                executor.validate(input).map_err(|e| e.within(&format!("agents.{name}.tools[{j}]")))?;
            }
        }
    }
    let definition = serde_json::to_value(&spec)
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e))?;
    let version = st.store.put_workflow(&caller.workspace, &caller.user, &spec.name, definition).await?;
    Ok((StatusCode::CREATED, Json(WorkflowAccepted { name: spec.name, version })))
}

/// Checks the `llm` calls an agent's steps (and its summaries) will make with the kind's
/// own validation, as each step's job is checked when it is planned: a secret that does
/// not exist, or whose key is bound to other base URLs than the agent's, is refused now
/// rather than failing every run. A refusal names the agent's field.
fn agent_calls(
    llm: &dyn ferry_worker::Executor,
    name: &str,
    agent: &ferry_core::agent::AgentSpec,
) -> Result<(), ferry_core::SpecError> {
    let call = |base_url: &str, model: &str, api_key: Option<&String>| serde_json::json!({"base_url": base_url, "model": model, "messages": [{"role": "system"}], "api_key": api_key});
    let at = |e: ferry_core::SpecError, prefix: &str| {
        let field = format!("{prefix}.{}", e.field.strip_prefix("input.").unwrap_or(&e.field));
        ferry_core::SpecError { field, ..e }
    };
    let agent_at = format!("agents.{name}");
    llm.validate(&call(&agent.base_url, &agent.model, agent.api_key.as_ref())).map_err(|e| at(e, &agent_at))?;
    if let Some(s) = agent.context.as_ref().and_then(|c| c.summarize.as_ref()) {
        let base_url = s.base_url.as_ref().unwrap_or(&agent.base_url);
        let api_key = s.api_key.as_ref().or(agent.api_key.as_ref());
        llm.validate(&call(base_url, &s.model, api_key)).map_err(|e| {
            // A field the summary inherits is the agent's.
            let own = match e.field.as_str() {
                "input.base_url" => s.base_url.is_some(),
                "input.api_key" => s.api_key.is_some(),
                _ => true,
            };
            at(e, &if own { format!("{agent_at}.context.summarize") } else { agent_at.clone() })
        })?;
    }
    Ok(())
}

/// The workspace's workflows, by name, with their latest versions.
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows", operation_id = "listWorkflows",
    responses((status = 200, body = WorkflowList))
)]
pub async fn list_workflows(State(st): State<ApiState>, caller: Caller) -> Result<Json<WorkflowList>, ApiError> {
    let workflows = st.store.workflows(&caller.workspace).await?;
    Ok(Json(WorkflowList {
        workflows: workflows
            .into_iter()
            .map(|w| WorkflowSummaryView {
                name: w.name,
                latest_version: w.latest_version,
                updated_at: to_datetime(w.created_at),
            })
            .collect(),
    }))
}

/// A workflow's versions, oldest first, with their definitions.
#[utoipa::path(
    get, path = "/v1/workflows/{name}", tag = "workflows", operation_id = "getWorkflow",
    params(("name" = String, Path, description = "Workflow name")),
    responses((status = 200, body = WorkflowVersions), (status = 404, body = ErrorBody))
)]
pub async fn get_workflow(
    State(st): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<WorkflowVersions>, ApiError> {
    let versions = st.store.workflow_versions(&caller.workspace, &name).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found("workflow"));
    }
    Ok(Json(WorkflowVersions {
        name,
        versions: versions
            .into_iter()
            .map(|v| WorkflowVersionView {
                version: v.version,
                created_at: to_datetime(v.created_at),
                created_by: v.created_by,
                definition: v.definition,
            })
            .collect(),
    }))
}

/// Refuses (413, naming the node's field) a run whose first nodes' inputs, built from
/// `input`, would pass the input limit, before anything is created (see
/// `ferry_core::workflow::oversized_first_input`). The expansion is bounded by the limit
/// and runs on a blocking thread. A missing workflow or version is left to the store,
/// which answers it; so is a version registered between this read and the run's creation
/// (its nodes are still bounded when they start, and fail instead).
async fn first_inputs_fit(st: &ApiState, workspace: &str, req: &RunRequest, input: Value) -> Result<Value, ApiError> {
    let Some(found) = st.store.workflow_version(workspace, &req.workflow, req.version).await? else {
        return Ok(input);
    };
    let Ok(spec) = serde_json::from_value::<WorkflowSpec>(found.definition) else { return Ok(input) };
    let max = st.cfg.limits.max_input_bytes;
    let (input, over) = tokio::task::spawn_blocking(move || {
        let over = ferry_core::workflow::oversized_first_input(&spec, &input, max);
        (input, over)
    })
    .await
    .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e))?;
    match over {
        None => Ok(input),
        Some(e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{} {}: the node would start with an input over the limit", e.reference, e.message),
        )
        .field(e.field)),
    }
}

/// Start a run of a workflow (its latest version unless one is named). A missing workflow
/// is answered 404, a version it does not have 400 `unknown_version` (naming the latest),
/// and nothing starts. The first nodes' jobs exist when this answers. With `?wait=30s` it
/// waits for the run to end: 200 with the ended run (as `GET /v1/runs/{id}` answers it),
/// or 202 with the id and state when the wait ends first.
#[utoipa::path(
    post, path = "/v1/runs", tag = "workflows", operation_id = "startRun",
    request_body = RunRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]([\t\x20-\x7E]*[\x21-\x7E])?$", description = "Same as the body's `idempotency_key` (give either, or both equal)"),
           ("wait" = Option<String>, Query, pattern = r"^((0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)ms|([0-9]|[1-5][0-9]|60)s|[01]m)$", description = "Wait up to this long (`500ms`, `30s`, `1m`; at most 60 s) for the run to end")),
    responses(
        (status = 201, body = RunAccepted),
        (status = 200, description = "Idempotency key matched an existing run; with `wait`, the run ended within it (the run as `GET /v1/runs/{id}` answers it)", body = crate::views::RunAnswer),
        (status = 202, description = "With `wait`: the run had not ended when the wait did", body = RunAccepted),
        (status = 400, description = "Bad input, naming the field (an `input` that is not an object included); a `version` the workflow does not have is `unknown_version`, its message naming the latest", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 409, description = "Idempotency key used with another request", body = ErrorBody),
        (status = 413, description = "Input over its limit, or a first node's input built from it would be (the field names the node)", body = ErrorBody),
        (status = 429, description = "Beyond a concurrency limit of the workspace or user (`limit_reached`), unless `on_limit` is `queue`", body = ErrorBody),
    )
)]
pub async fn start(
    State(st): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(wait): Query<WaitQuery>,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<Response, ApiError> {
    let wait = wait.duration()?;
    let (status, Json(accepted)) = start_run(&st, &caller, headers, req).await?;
    let Some(wait) = wait else { return Ok((status, Json(accepted)).into_response()) };
    match ended_within(&st, &caller, accepted.id, wait).await? {
        (run, true) => Ok((StatusCode::OK, Json(run)).into_response()),
        (run, false) => Ok((StatusCode::ACCEPTED, Json(RunAccepted { state: run.state, ..accepted })).into_response()),
    }
}

/// The run once it ended, or as it is when `wait` is over; whether it ended.
async fn ended_within(st: &ApiState, caller: &Caller, id: RunId, wait: Duration) -> Result<(RunView, bool), ApiError> {
    let mut waiter = crate::wait::Waiter::new(&st.store.event_signal(), ferry_store::Subject::Run(id), wait);
    loop {
        let run = st.store.get_run(&caller.workspace, id).await?.ok_or_else(|| ApiError::not_found("run"))?;
        let ended = run.run.state.is_terminal();
        if ended || !waiter.next().await {
            return Ok((RunView::detail(run), ended));
        }
    }
}

async fn start_run(
    st: &ApiState,
    caller: &Caller,
    headers: HeaderMap,
    mut req: RunRequest,
) -> Result<(StatusCode, Json<RunAccepted>), ApiError> {
    let st = st.clone();
    crate::extract::idempotency_key(&headers, &mut req.idempotency_key)?;
    if let Some(key) = &req.idempotency_key
        && (key.is_empty() || key.len() > 255)
    {
        return Err(ApiError::bad_field("idempotency_key", "must be 1 to 255 bytes"));
    }
    // An object, or nothing (absent or `null`: the run has no input).
    if req.input.as_ref().is_some_and(|i| !i.is_object() && !i.is_null()) {
        return Err(ApiError::bad_field("input", "must be a JSON object (or absent)"));
    }
    let input = req.input.clone().unwrap_or(Value::Null);
    let size = serde_json::to_vec(&input).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > st.cfg.limits.max_input_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("is {size} bytes; the limit is {} bytes", st.cfg.limits.max_input_bytes),
        )
        .field("input"));
    }
    let input = first_inputs_fit(&st, &caller.workspace, &req, input).await?;
    let request_hash = req.idempotency_key.as_ref().map(|_| {
        let unkeyed = RunRequest { idempotency_key: None, ..req.clone() };
        format!("{:x}", Sha256::digest(serde_json::to_vec(&unkeyed).unwrap_or_default()))
    });
    let limits = st.limits_of(&caller.workspace).await?;
    let run = NewRun {
        id: Uuid::now_v7(),
        workspace: caller.workspace.clone(),
        user: caller.user.clone(),
        workflow: req.workflow.clone(),
        version: req.version,
        input,
        idempotency_key: req.idempotency_key.clone(),
        request_hash,
        admission: limits.runs_for(&caller.user),
        queue_on_limit: req.on_limit == Some(OnLimit::Queue),
        tokens_per_day: limits.tokens_per_day,
        depth: 0,
    };
    let (outcome, advanced) = st.store.create_run(run, st.planner.clone()).await?;
    st.stop_attempts(&advanced.stopped);
    let accepted =
        |id, version, state, created| RunAccepted { id, workflow: req.workflow.clone(), version, state, created };
    match outcome {
        CreateRunOutcome::Created { id, version, state } => {
            // No `workflow` label: `/metrics` is open to all, and workflow names are chosen
            // by tenants (see the README's Metrics section).
            metrics::counter!("ferry_runs_started_total").increment(1);
            Ok((StatusCode::CREATED, Json(accepted(id, version, state, true))))
        }
        CreateRunOutcome::Existing { id, version, state } => {
            Ok((StatusCode::OK, Json(accepted(id, version, state, false))))
        }
        CreateRunOutcome::Conflict { id } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!("the idempotency key was used for run {id} with a different request"),
        )
        .field("idempotency_key")),
        CreateRunOutcome::NoWorkflow => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("workflow `{}` not found", req.workflow))
                .field("workflow"))
        }
        // The workflow exists, so the request, not the path to a resource, is wrong: a 400
        // that names the version asked for and the one that would run.
        CreateRunOutcome::NoVersion { latest } => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_version",
            format!("workflow `{}` has no version {}; the latest is {latest}", req.workflow, req.version.unwrap_or(0)),
        )
        .field("version")),
    }
}

/// A run: its state, and every node's state, attempts, output and error. With
/// `?wait=30s`, answered as soon as the run has ended, or as it is when the wait is over.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "workflows", operation_id = "getRun",
    params(("id" = uuid::Uuid, Path, description = "Run id"),
           ("wait" = Option<String>, Query, pattern = r"^((0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)ms|([0-9]|[1-5][0-9]|60)s|[01]m)$", description = "Wait up to this long (`500ms`, `30s`, `1m`; at most 60 s) for the run to end")),
    responses((status = 200, body = RunView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get_run(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(wait): Query<WaitQuery>,
) -> Result<Json<RunView>, ApiError> {
    let id = parse_run_id(&id)?;
    if let Some(wait) = wait.duration()? {
        return Ok(Json(ended_within(&st, &caller, id, wait).await?.0));
    }
    let run = st.store.get_run(&caller.workspace, id).await?.ok_or_else(|| ApiError::not_found("run"))?;
    Ok(Json(RunView::detail(run)))
}

/// Runs, newest first, with optional filters.
#[utoipa::path(
    get, path = "/v1/runs", tag = "workflows", operation_id = "listRuns",
    params(
        ("state" = Option<RunState>, Query, description = "Only runs in this state"),
        ("workflow" = Option<String>, Query, description = "Only runs of this workflow"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1 to 1000 (default 50)"),
        ("cursor" = Option<uuid::Uuid>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = RunPageView), (status = 400, body = ErrorBody))
)]
pub async fn list_runs(
    State(st): State<ApiState>,
    caller: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<RunPageView>, ApiError> {
    let mut filter = RunFilter { limit: 50, ..RunFilter::default() };
    for (key, value) in q {
        match key.as_str() {
            "state" => filter.state = Some(value.parse().map_err(|e: String| ApiError::bad_field("state", e))?),
            "workflow" => filter.workflow = Some(value),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_field("limit", "must be an integer from 1 to 1000"))?;
            }
            "cursor" => {
                filter.cursor = Some(
                    RunId::parse_str(&value)
                        .map_err(|_| ApiError::bad_field("cursor", "is not a cursor from a previous page"))?,
                );
            }
            other => return Err(ApiError::bad_field(other, "unknown query parameter")),
        }
    }
    let page = st.store.list_runs(&caller.workspace, filter).await?;
    Ok(Json(RunPageView {
        items: page.items.into_iter().map(RunView::summary).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Cancel a run: running nodes stop, waiting ones never start.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "workflows", operation_id = "cancelRun",
    params(("id" = uuid::Uuid, Path, description = "Run id")),
    responses(
        (status = 200, body = RunStateView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The run already ended", body = ErrorBody),
    )
)]
pub async fn cancel_run(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunStateView>, ApiError> {
    let id = parse_run_id(&id)?;
    let (state, advanced) = st.store.cancel_run(&caller.workspace, id, st.planner.clone()).await?;
    st.stop_attempts(&advanced.stopped);
    match state {
        None => Err(ApiError::not_found("run")),
        Some(RunState::Cancelled) if advanced.finished.iter().any(|f| f.0 == id) => {
            Ok(Json(RunStateView { id, state: RunState::Cancelled }))
        }
        Some(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("the run already ended: it is {}", state.as_str()),
        )),
    }
}

/// A run's events in order: JSON, or Server-Sent Events when asked for
/// `text/event-stream` (replay after `Last-Event-ID` or `?after=`, then live, closing
/// after `run_finished`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "workflows", operation_id = "listRunEvents",
    params(
        ("id" = uuid::Uuid, Path, description = "Run id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Only events after this id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this event id (a reconnecting event stream sends it); wins over `after`"),
    ),
    responses(
        (status = 200, description = "The events: JSON by default; Server-Sent Events (each event's data is a `RunEventView`) when the request's `Accept` names `text/event-stream`", content(
            (RunEventList = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 429, description = "Too many event streams open (`too_many_streams`)", body = ErrorBody),
    )
)]
pub async fn run_events(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    events::answer::<RunLog>(&st, &caller, parse_run_id(&id)?, &headers, q).await
}

/// A run's event log, for [`events::answer`]: read from the store a page at a time.
pub(crate) struct RunLog;

impl EventLog for RunLog {
    type Id = RunId;
    type View = RunEventView;
    type List = RunEventList;
    const NAME: &'static str = "run";

    fn subject(id: RunId) -> Subject {
        Subject::Run(id)
    }

    async fn ended(store: &dyn Store, workspace: &str, id: RunId) -> Result<Option<bool>, StoreError> {
        Ok(store.run_state(workspace, id).await?.map(|s| s.is_terminal()))
    }

    async fn read(
        store: &dyn Store,
        workspace: &str,
        id: RunId,
        after: i64,
    ) -> Result<Option<Page<RunEventView>>, StoreError> {
        let Some(events) = store.run_events(workspace, id, after, EVENT_PAGE).await? else { return Ok(None) };
        let complete = events.len() < EVENT_PAGE;
        Ok(Some(Page { events: events.into_iter().map(RunEventView::from).collect(), complete }))
    }

    fn list(events: Vec<RunEventView>) -> RunEventList {
        RunEventList { events }
    }

    fn id_and_type(view: &RunEventView) -> (i64, &str) {
        (view.id, &view.event_type)
    }
}
