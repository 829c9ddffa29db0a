//! `GET /v1/jobs/{id}/events` and `GET /v1/runs/{id}/events`, written once.
//!
//! A job's log and a run's log are served by the same rules; each subject only says how
//! its log is read, by implementing [`EventLog`] (`jobs::JobLog`, `runs::RunLog`), and its
//! handler is one call to [`answer`]. The rules:
//!
//! - **Resume.** The cursor is the `Last-Event-ID` header (a reconnecting event stream
//!   sends it), else `?after=`, else 0 (the whole log); only events with a larger id are
//!   answered. Ids follow commit order, so resuming is exact on any node.
//! - **JSON by default**: the whole log after the cursor, read a page at a time; 404 when
//!   the caller's workspace has no such subject.
//! - **Server-Sent Events** when the request's `Accept` names `text/event-stream`: the 404
//!   comes before the stream opens, then a slot within the caps, then the subject's watch
//!   (taken before the first read, so nothing committed in between is missed). Coalesced
//!   wake-ups, the safety-net poll, keep-alives and revocation are [`crate::sse`]'s.
//! - **End of stream.** A read asks whether the subject is final *before* reading its
//!   events, so when it is, its final event is among what was read; unless that read was
//!   a full page, in which case the stream reads again before it ends. A subject deleted
//!   under an open stream ends the stream; a store failure does not: the stream reads
//!   again a second later (keep-alives go on meanwhile).

use crate::error::ApiError;
use crate::sse::{self, Fetched, Item};
use crate::{ApiState, Caller};
use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse as _, Response};
use ferry_store::{Store, StoreError, Subject};
use serde::Serialize;
use std::future::Future;

/// The query of an events request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    after: Option<i64>,
}

/// Events of one log after a cursor, in order.
pub(crate) struct Page<V> {
    pub events: Vec<V>,
    /// Nothing followed the last event when it was read (a full page may have more).
    pub complete: bool,
}

/// A subject with an event log: what [`answer`] needs to know of it.
pub(crate) trait EventLog {
    type Id: Copy + Send + Sync + 'static;
    /// One event as the API shows it: in the JSON listing, and as each SSE event's data.
    type View: Serialize + Send + 'static;
    /// The JSON answer.
    type List: Serialize;
    /// What a 404 names: `job`, `run`.
    const NAME: &'static str;

    /// Whose changes wake a stream.
    fn subject(id: Self::Id) -> Subject;

    /// Whether the subject is final (no event will follow its last); `None`: the
    /// workspace has no such subject.
    fn ended(
        store: &dyn Store,
        workspace: &str,
        id: Self::Id,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send;

    /// The events after `after`, in order, at most a page of them; `None`: the workspace
    /// has no such subject.
    fn read(
        store: &dyn Store,
        workspace: &str,
        id: Self::Id,
        after: i64,
    ) -> impl Future<Output = Result<Option<Page<Self::View>>, StoreError>> + Send;

    /// The JSON answer for these events.
    fn list(events: Vec<Self::View>) -> Self::List;

    /// An event's id (the cursor after it) and type.
    fn id_and_type(view: &Self::View) -> (i64, &str);
}

/// Answers an events request for the subject `id` of the caller's workspace: JSON, or an
/// event stream. See the module docs.
pub(crate) async fn answer<L: EventLog>(
    st: &ApiState,
    caller: &Caller,
    id: L::Id,
    headers: &HeaderMap,
    query: EventQuery,
) -> Result<Response, ApiError> {
    let after = resume_from(headers, query.after)?;
    let store = st.store.as_ref();
    let workspace = caller.workspace.as_str();
    if !wants_stream(headers) {
        let mut events = Vec::new();
        let mut cursor = after;
        loop {
            let page = L::read(store, workspace, id, cursor).await?.ok_or_else(|| ApiError::not_found(L::NAME))?;
            cursor = page.events.last().map(|e| L::id_and_type(e).0).unwrap_or(cursor);
            events.extend(page.events);
            if page.complete {
                break;
            }
        }
        return Ok(Json(L::list(events)).into_response());
    }
    // 404 before the stream starts, not as an empty stream.
    L::ended(store, workspace, id).await?.ok_or_else(|| ApiError::not_found(L::NAME))?;
    let permit = st.streams.open(headers, caller).await?;
    let watch = st.store.event_signal().watch(L::subject(id));
    let (store, workspace) = (st.store.clone(), caller.workspace.clone());
    let fetch = move |cursor: i64| {
        let (store, workspace) = (store.clone(), workspace.clone());
        async move {
            let failed = |e: StoreError| {
                tracing::warn!(error = %e, "an event stream's read failed; it reads again shortly");
                Fetched::Failed
            };
            // "Ended" first: then the final event is in what is read next.
            let ended = match L::ended(store.as_ref(), &workspace, id).await {
                Ok(Some(ended)) => ended,
                Ok(None) => return Fetched::Gone,
                Err(e) => return failed(e),
            };
            let page = match L::read(store.as_ref(), &workspace, id, cursor).await {
                Ok(Some(page)) => page,
                Ok(None) => return Fetched::Gone,
                Err(e) => return failed(e),
            };
            let items = page
                .events
                .iter()
                .map(|view| {
                    let (id, event_type) = L::id_and_type(view);
                    Item::new(id, event_type, view)
                })
                .collect();
            Fetched::Items(items, ended && page.complete)
        }
    };
    Ok(sse::stream(after, st.cfg.sse_keep_alive, watch, permit, fetch).into_response())
}

/// Whether the client asked for an event stream.
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|part| part.trim().starts_with("text/event-stream")))
}

/// The cursor to resume from: the `Last-Event-ID` header (sent by a reconnecting
/// client), else `?after=`, else 0 (the whole log).
fn resume_from(headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    // `after` is checked even when the header wins, so a bad request is refused whatever
    // else it carries.
    if after.is_some_and(|n| n < 0) {
        return Err(ApiError::bad_field("after", "must be an event id (an integer, 0 or more)"));
    }
    if let Some(v) = headers.get("last-event-id") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_field("Last-Event-ID", "must be an event id (an integer)"));
    }
    Ok(after.unwrap_or(0))
}
