//! Event logs as Server-Sent Events: replay from a cursor, then live, with keep-alive
//! comments, closing after the final event.
//!
//! A feed is a function that, given the last id the client has, returns the events after
//! it and whether the subject (a run, a job) has ended. It must read "ended" *before* the
//! events, so that when it says ended, the final event is among what it read (or was read
//! before). The stream asks again every [`POLL`] while nothing is new: that is also how an
//! event written by another node reaches this one.

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

/// How often an idle stream looks for new events.
pub const POLL: Duration = Duration::from_millis(50);

/// One event, ready to send.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub event_type: String,
    /// The event as JSON (the same view as the JSON listing).
    pub data: String,
}

impl Item {
    /// An event whose data is `view` as JSON.
    pub fn new(id: i64, event_type: &str, view: &impl serde::Serialize) -> Item {
        Item { id, event_type: event_type.to_string(), data: serde_json::to_string(view).unwrap_or_default() }
    }
}

/// Whether the client asked for an event stream.
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|part| part.trim().starts_with("text/event-stream")))
}

/// The cursor to resume from: the `Last-Event-ID` header (sent by a reconnecting
/// client), else `?after=`, else 0 (the whole log).
pub fn resume_from(headers: &HeaderMap, after: Option<i64>) -> Result<i64, crate::error::ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| crate::error::ApiError::bad_field("Last-Event-ID", "must be an event id (an integer)"));
    }
    match after {
        Some(n) if n < 0 => {
            Err(crate::error::ApiError::bad_field("after", "must be an event id (an integer, 0 or more)"))
        }
        _ => Ok(after.unwrap_or(0)),
    }
}

struct State<F> {
    cursor: i64,
    pending: VecDeque<Item>,
    ended: bool,
    fetch: F,
}

/// The SSE response for a feed, starting after `cursor`.
pub fn stream<F, Fut>(cursor: i64, keep_alive: Duration, fetch: F) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: FnMut(i64) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Vec<Item>, bool)>> + Send,
{
    let state = State { cursor, pending: VecDeque::new(), ended: false, fetch };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                let event = Event::default().id(item.id.to_string()).event(item.event_type).data(item.data);
                return Some((Ok(event), st));
            }
            if st.ended {
                return None;
            }
            match (st.fetch)(st.cursor).await {
                // The subject is gone (deleted) or the store failed: end the stream; the
                // client reconnects with its last id.
                None => return None,
                Some((items, ended)) => {
                    if let Some(last) = items.last() {
                        st.cursor = last.id;
                    }
                    let nothing_new = items.is_empty();
                    st.pending.extend(items);
                    st.ended = ended;
                    if nothing_new && !ended {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}
