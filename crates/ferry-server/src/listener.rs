//! Serving connections: the accept loop and the HTTP/1.1 connections of a Ferry process
//! (`ferry server` and `ferry worker` alike), with the timeouts and the connection cap
//! that `axum::serve` does not have.
//!
//! # What a connection may do, and for how long
//!
//! A connection is always in one of three phases, and each phase but one has a deadline
//! ([`HttpLimits`]):
//!
//! - **head**: from the moment it is accepted, or from the first byte of a next request,
//!   the client has `header_timeout` to send the request line and every header. A client
//!   that sends half a request line and then nothing (a slowloris), or trickles a byte a
//!   second, is disconnected when it runs out. No answer is sent: the connection is closed.
//! - **busy**: a request is being answered. The *connection* has no deadline here, so an
//!   event stream (SSE) or a slow handler is never cut. The request *body* has one: all of
//!   it must arrive within `body_timeout` of the head; a body that stalls makes the handler
//!   that reads it answer `408 request_timeout`, and the connection is then closed.
//! - **idle**: the answer has been sent and the connection is kept alive for a next
//!   request. If none starts within `idle_timeout`, the connection is closed.
//!
//! The deadlines are enforced where the bytes are read ([`Deadlines`] wraps the socket),
//! so they hold whatever hyper's parser does; hyper's own header timer is switched off (it
//! would also run between requests, making the idle timeout the header timeout).
//!
//! # How many connections
//!
//! At most `max_connections` connections are served at once. Past it, Ferry stops
//! accepting: new connections wait in the kernel's accept backlog (they are connected, but
//! not read) and are served in order as served ones close. A client therefore waits
//! rather than being refused; when the backlog itself is full, the kernel drops new
//! connection attempts (the client's connect times out or is retried by its TCP stack).
//! Each connection holds a file descriptor, so [`serve`] first makes room: when the
//! process's soft open-file limit (`ulimit -n`) is below `max_connections` plus
//! [`RESERVED_FDS`], it raises it, up to the hard limit, and warns if that is not enough.
//! Then accepting fails before the cap is reached (Ferry logs the error and retries every
//! second; the header and idle timeouts free descriptors held by idle clients).
//!
//! # Sizes of the request head
//!
//! Ferry answers, in the API's error format, a request target over [`MAX_URI_BYTES`]
//! (`414 uri_too_long`), and more than [`MAX_HEADERS`] header fields or more than
//! [`MAX_HEADER_BYTES`] of header names and values (`431 headers_too_large`). Beneath
//! those, hyper parses the head with limits of its own, set here explicitly: the request
//! line and headers together at most [`HYPER_MAX_HEAD_BYTES`], at most
//! [`HYPER_MAX_HEADERS`] fields, a request target of at most 65,534 bytes. A request past
//! those never reaches Ferry: hyper answers it with a status line and no body (`431
//! Request Header Fields Too Large`, `414 URI Too Long`, or `400 Bad Request` for a head
//! that is not HTTP) and closes the connection.
//!
//! # Stopping
//!
//! When `shutdown` completes, the listener is closed (connections still in the backlog are
//! reset), idle connections are closed at once, and a connection in the middle of a
//! request finishes its answer and then closes; [`serve`] returns when the last one has.

use crate::error::ApiError;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, request};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// The longest request target (path and query) Ferry answers; longer is `414 uri_too_long`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header fields Ferry answers; more is `431 headers_too_large`.
pub const MAX_HEADERS: usize = 64;
/// The most bytes of header names and values Ferry answers; more is
/// `431 headers_too_large`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's limit on the request line and headers together (also its read buffer): past
/// it hyper answers a bare 431 and closes.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's limit on header fields (its built-in default, left unset: setting it moves
/// header parsing from the stack to the heap): past it hyper answers a bare 431 and closes.
pub const HYPER_MAX_HEADERS: usize = 100;

/// Descriptors kept for all but connections (the store, sandboxes' pipes, files) when
/// the open-file limit is fitted to `max_connections`.
pub const RESERVED_FDS: u64 = 1024;

/// The limits of the HTTP server (`[http]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a request's line and headers, from the connection's
    /// start or from the request's first byte.
    pub header_timeout: Duration,
    /// How long a client has to send a request's whole body, from the end of its head.
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The most connections served at once; past it, connections wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    /// 10 s for a head (a few hundred bytes: a slow mobile link needs well under a
    /// second), 60 s for a body (the default 16 MiB body limit at about 2.2 Mbit/s), 60 s
    /// idle (long enough for clients' connection pools to reuse connections between
    /// bursts, short enough that idle sockets do not pile up), 10,000 connections (far
    /// more than an API's clients and proxies keep open, and with the timeouts above a
    /// slowloris must open and keep feeding thousands of connections to fill it; the
    /// open-file limit is raised to fit, see the module docs).
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains (see the module
/// docs). Returns when every connection has closed.
pub async fn serve<F>(listener: TcpListener, app: Router, limits: HttpLimits, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    make_room_for(limits.max_connections);
    let limits = Arc::new(limits);
    // Semaphores count permits in `u32` batches: the configuration keeps the cap below it.
    let cap = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(cap));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        // A free slot first: past the cap, connections wait in the accept backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait for some to free rather than spin.
                tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let conn = connection(tcp, app.clone(), limits.clone(), stop_rx.clone());
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back: every connection has closed.
    let _all = slots.acquire_many(cap as u32).await;
    Ok(())
}

/// Raises the soft open-file limit, up to the hard one, to fit `max_connections` plus
/// [`RESERVED_FDS`]; warns when it cannot. (The sandbox sets its own limit per job.)
fn make_room_for(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = max_connections as u64 + RESERVED_FDS;
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    let raised = want.min(limit.maximum.unwrap_or(u64::MAX));
    if raised > soft && setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum: limit.maximum }).is_ok() {
        tracing::info!(from = soft, to = raised, "raised the open-file limit to fit http.max_connections");
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if soft < want {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below http.max_connections plus {RESERVED_FDS} kept for the rest: \
             accepting may fail before the cap is reached (raise `ulimit -n` or lower http.max_connections)"
        );
    }
}

/// Errors of one connection that the listener shrugs off.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, or, once `stop` says so, until its current
/// answer is sent.
async fn connection(tcp: TcpStream, app: Router, limits: Arc<HttpLimits>, mut stop: watch::Receiver<bool>) {
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(Deadlines::new(tcp, phase.clone(), limits.clone()));
    let service = ConnService { app, phase, limits };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None).max_buf_size(HYPER_MAX_HEAD_BYTES).max_header_size(HYPER_MAX_HEAD_BYTES);
    let mut conn = pin!(builder.serve_connection(io, service));
    let stopping = async move {
        // Stop, or the listener is gone (it never is without saying stop first).
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended");
    }
}

/// Where a connection is (see the module docs), and since when.
#[derive(Debug, Clone, Copy)]
enum State {
    Head(Instant),
    Busy,
    Idle(Instant),
}

/// A connection's phase, shared by its socket and its service. A change of phase wakes
/// the socket's pending read, which then arms the new phase's deadline: hyper may already
/// be waiting for the next request while the answer is still going out (no deadline then),
/// and without that wake-up the idle deadline would never be armed.
#[derive(Debug)]
struct Phase(Mutex<(State, Option<Waker>)>);

impl Phase {
    fn new() -> Phase {
        Phase(Mutex::new((State::Head(Instant::now()), None)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, Option<Waker>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: State) {
        let waker = {
            let mut phase = self.lock();
            phase.0 = state;
            phase.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Bytes arrived: on an idle connection, a request starts.
    fn bytes_arrived(&self) {
        let mut phase = self.lock();
        if let State::Idle(_) = phase.0 {
            phase.0 = State::Head(Instant::now());
        }
    }

    /// When reading must have ended, if it must; `waker` is woken when the phase changes.
    fn deadline(&self, limits: &HttpLimits, waker: &Waker) -> Option<Instant> {
        let mut phase = self.lock();
        if !phase.1.as_ref().is_some_and(|w| w.will_wake(waker)) {
            phase.1 = Some(waker.clone());
        }
        match phase.0 {
            State::Head(since) => Some(since + limits.header_timeout),
            State::Idle(since) => Some(since + limits.idle_timeout),
            State::Busy => None,
        }
    }
}

/// The socket, failing reads with `TimedOut` past the phase's deadline.
struct Deadlines {
    io: TcpStream,
    phase: Arc<Phase>,
    limits: Arc<HttpLimits>,
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set to.
    armed: Instant,
}

impl Deadlines {
    fn new(io: TcpStream, phase: Arc<Phase>, limits: Arc<HttpLimits>) -> Deadlines {
        let now = Instant::now();
        Deadlines { io, phase, limits, sleep: Box::pin(tokio::time::sleep_until(now)), armed: now }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "the client sent no request, or too slowly, within its deadline")
    }
}

impl AsyncRead for Deadlines {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let deadline = this.phase.deadline(&this.limits, cx.waker());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Poll::Ready(Err(this.timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(deadline) = deadline {
                    if this.armed != deadline {
                        this.sleep.as_mut().reset(deadline);
                        this.armed = deadline;
                    }
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(this.timed_out()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Deadlines {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router as hyper's service for one connection: marks the phases, checks the head's
/// sizes, and puts the body deadline on the request.
struct ConnService {
    app: Router,
    phase: Arc<Phase>,
    limits: Arc<HttpLimits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Answer>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.phase.set(State::Busy);
        let phase = self.phase.clone();
        let (parts, body) = req.into_parts();
        if let Some(refusal) = check_head(&parts) {
            use axum::response::IntoResponse as _;
            let resp = refusal.into_response().map(|b| Answer::new(b, phase));
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let body = Body::new(DeadlineBody::new(body, self.limits.body_timeout));
        let req = Request::from_parts(parts, body);
        let app = self.app.clone();
        Box::pin(async move {
            let resp = app.oneshot(req).await.unwrap_or_else(|never| match never {});
            Ok(resp.map(|b| Answer::new(b, phase)))
        })
    }
}

/// Ferry's own limits on the head (see the module docs).
fn check_head(parts: &request::Parts) -> Option<ApiError> {
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES} bytes"),
        ));
    }
    let count = parts.headers.len();
    if count > MAX_HEADERS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request has {count} header fields; the limit is {MAX_HEADERS}"),
        ));
    }
    let bytes: usize = parts.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers are {bytes} bytes; the limit is {MAX_HEADER_BYTES} bytes"),
        ));
    }
    None
}

/// The error of a request body that did not arrive within `body_timeout`; the body
/// extractor answers it with `408 request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimedOut(pub Duration);

/// A request body that fails with [`BodyTimedOut`] past its deadline.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Set the first time the body waits: a body that is already there needs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody { inner, timeout, deadline: Instant::now() + timeout, sleep: None }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if Instant::now() >= this.deadline {
            return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body: when it ends (or is dropped), the connection is idle.
struct Answer {
    inner: Body,
    phase: Option<Arc<Phase>>,
}

impl Answer {
    fn new(inner: Body, phase: Arc<Phase>) -> Answer {
        Answer { inner, phase: Some(phase) }
    }

    fn done(&mut self) {
        if let Some(phase) = self.phase.take() {
            phase.set(State::Idle(Instant::now()));
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.done();
    }
}

impl hyper::body::Body for Answer {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
