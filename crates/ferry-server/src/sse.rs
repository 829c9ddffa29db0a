//! Event logs as Server-Sent Events: replay from a cursor, then live, with keep-alive
//! comments, closing after the final event.
//!
//! A feed is a function that, given the last id the client has, returns the events after
//! it and whether the subject (a run, a job) has ended. It must read "ended" *before* the
//! events, so that when it says ended, the final event is among what it read (or was read
//! before). [`crate::events`] makes the one feed both event endpoints use.
//!
//! **An idle stream costs nothing.** A stream reads its feed when it opens, then again
//! only when woken: by the store's event signal for its subject ([`ferry_store::EventWatch`],
//! fired after a commit that wrote to the subject's log, on this node or, on PostgreSQL,
//! another), or by a safety-net timer every [`SAFETY_POLL`] in case a signal was missed
//! (a notification lost while the listener reconnected). The watch is taken before the
//! first read, so an event committed in between still wakes it. Wake-ups are coalesced: a
//! stream reads at most once per [`MIN_READ_INTERVAL`] while idle, however often it is
//! woken, so a burst of commits (or the store's "anything may have changed" signal, which
//! wakes every stream of the node) costs each stream a bounded number of reads.
//!
//! **Caps.** [`Streams`] counts the open streams of this node, in all and per caller (per
//! token; per workspace user when the caller has none, in open mode). Past either cap a
//! new stream is refused with 429, `Retry-After` and code `too_many_streams` naming the
//! limit; streams already open are untouched. A stream gives its slot back when the
//! client goes away or the stream ends.
//!
//! **Revocation.** A stream authenticated by a token ends when that token is revoked: on
//! every token change the store reports ([`ferry_store::Store::token_changes`]: on
//! SQLite, this process's own creates and revokes; on PostgreSQL also any other node's),
//! [`Streams`] looks each open stream's token up again, once per distinct token, and a
//! revoked token's streams send one final `revoked` event (`{"error": {"code":
//! "unauthenticated", …}}`) and close. A reconnect is then refused with 401.

use crate::Caller;
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use ferry_core::auth::token_hash;
use ferry_store::{EventWatch, Store};
use futures_util::Stream;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often an idle stream reads its feed without being woken: the safety net for a
/// missed signal, not the way events arrive. No signal is missed on SQLite (the writer
/// fires it in this process after every commit), and on PostgreSQL a listener that lost
/// its connection wakes every stream when it is back; what is left is a notification
/// lost without the connection dropping, which this bounds. Slow on purpose: each read
/// costs a stream two store queries, and a node may hold `sse_max_streams` streams (at
/// 1,000, about 33 reads a second).
pub const SAFETY_POLL: Duration = Duration::from_secs(30);
/// How long a stream waits before it reads again after the store failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a feed's read found.
pub(crate) enum Fetched {
    /// The events after the cursor, and whether the subject has ended with them.
    Items(Vec<Item>, bool),
    /// The subject is gone (deleted under the stream).
    Gone,
    /// The store failed; the stream reads again after [`RETRY_AFTER_FAILURE`].
    Failed,
}

/// The least time between two reads of an idle stream that keeps being woken.
pub const MIN_READ_INTERVAL: Duration = Duration::from_millis(100);

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

/// The caps on open streams (`sse_max_streams`, `sse_max_streams_per_token`).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Open streams on this node, all callers together.
    pub max_streams: usize,
    /// Open streams of one token (or, without one, of one workspace user) on this node.
    pub max_per_token: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits { max_streams: 1_000, max_per_token: 50 }
    }
}

/// The open streams of one server, by caller. See the module docs.
pub struct Streams {
    limits: StreamLimits,
    store: Arc<dyn Store>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_caller: HashMap<String, CallerStreams>,
}

struct CallerStreams {
    count: usize,
    /// The SHA-256 of the caller's token (`None`: open mode, no token).
    token_hash: Option<String>,
    /// Set once the token is found revoked: its streams end.
    revoked: watch::Sender<bool>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Streams {
    /// The registry of one server. When the store reports token changes, a task looks up
    /// the tokens of open streams again and ends the streams of revoked ones.
    pub fn new(store: Arc<dyn Store>, limits: StreamLimits) -> Arc<Streams> {
        let streams = Arc::new(Streams { limits, store: store.clone(), open: Mutex::default() });
        if let Some(changes) = store.token_changes() {
            tokio::spawn(watch_revocations(Arc::downgrade(&streams), changes));
        }
        streams
    }

    /// Takes a slot for a new stream of `caller`, or refuses with 429 past a cap (401 if
    /// its token was revoked since the request was authenticated).
    pub(crate) async fn open(self: &Arc<Self>, headers: &HeaderMap, caller: &Caller) -> Result<Permit, ApiError> {
        let hash = bearer(headers).map(token_hash);
        let key = match &hash {
            Some(h) => format!("token:{h}"),
            None => format!("caller:{}/{}", caller.workspace, caller.user),
        };
        let revoked = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let too_many = |what: &str, n: usize, key: &str| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_streams",
                    format!("{what} at most {n} event streams open at once ({key}); close one or retry later"),
                )
            };
            if open.total >= self.limits.max_streams {
                return Err(too_many("this node serves", self.limits.max_streams, "sse_max_streams"));
            }
            let entry = open.by_caller.entry(key.clone()).or_insert_with(|| CallerStreams {
                count: 0,
                token_hash: hash.clone(),
                revoked: watch::channel(false).0,
            });
            if entry.count >= self.limits.max_per_token {
                return Err(too_many("a token may have", self.limits.max_per_token, "sse_max_streams_per_token"));
            }
            entry.count += 1;
            let revoked = entry.revoked.subscribe();
            open.total += 1;
            metrics::gauge!("ferry_event_streams_open").set(open.total as f64);
            revoked
        };
        let permit = Permit { streams: self.clone(), key, revoked };
        // The token was checked before this stream was counted; a revocation handled in
        // between would not reach it, so look once more now that it is counted.
        let gone = match &hash {
            Some(hash) => self.store.token_by_hash(hash).await?.is_none(),
            None => self.store.auth_closed().await?,
        };
        if gone {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "the token is unknown or revoked"));
        }
        Ok(permit)
    }

    /// How many streams are open on this node.
    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// The secret of an `Authorization: Bearer …` header (the auth middleware checked it).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim).filter(|s| !s.is_empty())
}

/// On every token change, ends the streams of tokens that are now revoked, and the
/// tokenless streams of open mode once the store has had a token.
async fn watch_revocations(streams: Weak<Streams>, mut changes: tokio::sync::broadcast::Receiver<()>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        // A lagged receiver missed changes: looking again covers them all.
        if let Err(RecvError::Closed) = changes.recv().await {
            return;
        }
        let Some(streams) = streams.upgrade() else { return };
        let (hashes, tokenless): (Vec<String>, bool) = {
            let open = streams.open.lock().unwrap_or_else(|e| e.into_inner());
            let hashes = open.by_caller.values().filter_map(|c| c.token_hash.clone()).collect();
            (hashes, open.by_caller.values().any(|c| c.token_hash.is_none()))
        };
        // Streams opened in open mode (no token) end once the store has had a token: from
        // then on every caller needs one, and these callers have none.
        if tokenless {
            match streams.store.auth_closed().await {
                Ok(false) => {}
                Ok(true) => {
                    let open = streams.open.lock().unwrap_or_else(|e| e.into_inner());
                    for c in open.by_caller.values().filter(|c| c.token_hash.is_none()) {
                        c.revoked.send_replace(true);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot check whether the store left open mode"),
            }
        }
        for hash in hashes {
            match streams.store.token_by_hash(&hash).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let open = streams.open.lock().unwrap_or_else(|e| e.into_inner());
                    for c in open.by_caller.values().filter(|c| c.token_hash.as_deref() == Some(hash.as_str())) {
                        c.revoked.send_replace(true);
                    }
                }
                // The next change, or the reconnect that follows a failure, looks again.
                Err(e) => tracing::warn!(error = %e, "cannot check the tokens of open event streams"),
            }
        }
    }
}

/// One open stream's slot; given back on drop.
pub(crate) struct Permit {
    streams: Arc<Streams>,
    key: String,
    revoked: watch::Receiver<bool>,
}

impl Permit {
    fn is_revoked(&self) -> bool {
        *self.revoked.borrow()
    }

    /// Waits until the caller's token is revoked.
    async fn revocation(&mut self) {
        // The sender lives while this permit counts in its entry.
        if self.revoked.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        metrics::gauge!("ferry_event_streams_open").set(open.total as f64);
        if let Some(c) = open.by_caller.get_mut(&self.key) {
            c.count -= 1;
            if c.count == 0 {
                open.by_caller.remove(&self.key);
            }
        }
    }
}

struct State<F> {
    cursor: i64,
    pending: VecDeque<Item>,
    /// The subject ended: close once `pending` is sent.
    ended: bool,
    /// The token was revoked and the final event sent.
    closed: bool,
    /// The last read found nothing new: wait to be woken before the next.
    idle: bool,
    last_read: Option<Instant>,
    watch: EventWatch,
    permit: Permit,
    fetch: F,
}

/// The final event of a stream whose token was revoked (or, opened without a token, whose
/// server has had its first token created since).
fn revoked_event() -> Event {
    let body = serde_json::json!({"error": {"code": "unauthenticated", "message": "the token was revoked, or the server now requires one; this stream is closed"}});
    Event::default().event("revoked").data(body.to_string())
}

/// The SSE response for a feed, starting after `cursor`. `watch` must have been taken
/// before this is called (it is: the first read happens in the stream).
pub(crate) fn stream<F, Fut>(
    cursor: i64,
    keep_alive: Duration,
    watch: EventWatch,
    permit: Permit,
    fetch: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    F: FnMut(i64) -> Fut + Send + 'static,
    Fut: Future<Output = Fetched> + Send,
{
    let state = State {
        cursor,
        pending: VecDeque::new(),
        ended: false,
        closed: false,
        idle: false,
        last_read: None,
        watch,
        permit,
        fetch,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.closed {
                return None;
            }
            if st.permit.is_revoked() {
                st.closed = true;
                return Some((Ok(revoked_event()), st));
            }
            if let Some(item) = st.pending.pop_front() {
                let event = Event::default().id(item.id.to_string()).event(item.event_type).data(item.data);
                return Some((Ok(event), st));
            }
            if st.ended {
                return None;
            }
            if st.idle {
                tokio::select! {
                    _ = st.watch.changed() => {}
                    _ = tokio::time::sleep(SAFETY_POLL) => {}
                    _ = st.permit.revocation() => continue,
                }
                if let Some(last) = st.last_read {
                    tokio::time::sleep_until(last + MIN_READ_INTERVAL).await;
                }
            }
            st.last_read = Some(Instant::now());
            match (st.fetch)(st.cursor).await {
                // The subject is gone (deleted): end the stream.
                Fetched::Gone => return None,
                // The store failed (a blip, a pool under load): the stream stays open and
                // reads again a little later, keep-alives flowing meanwhile.
                Fetched::Failed => {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        _ = st.permit.revocation() => {}
                    }
                }
                Fetched::Items(items, ended) => {
                    if let Some(last) = items.last() {
                        st.cursor = last.id;
                    }
                    st.idle = items.is_empty() && !ended;
                    st.pending.extend(items);
                    st.ended = ended;
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}
