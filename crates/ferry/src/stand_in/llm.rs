//! A stand-in for an OpenAI-compatible chat-completions API: a real HTTP server on
//! loopback that answers `POST /v1/chat/completions` from a [`Script`], records every
//! request, and answers anything else 404. What it answers, and in which order, is the
//! script's (see [`script`]); a reply's `delay_ms` waits without holding up other requests.
//!
//! ```no_run
//! # async fn demo() {
//! use ferry::stand_in::StandInLlm;
//! let llm = StandInLlm::start(serde_json::json!({"default": {"content": "ok"}}));
//! // An `llm` job with `"base_url": llm.base_url()` gets "ok".
//! assert_eq!(llm.calls(), 0);
//! llm.stop().await;
//! # }
//! ```

pub mod script;

pub use script::Script;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The path it answers, under its base URL's `/v1`.
const PATH: &str = "/v1/chat/completions";

/// A stand-in LLM server, serving until [`StandInLlm::stop`] or until it is dropped.
pub struct StandInLlm {
    base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// One request received.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    authorization: Option<String>,
}

/// What the handler and the owner share.
struct Shared {
    script: Script,
    state: Mutex<Calls>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Calls {
    received: Vec<Received>,
    per_slot: HashMap<script::Slot, usize>,
}

impl StandInLlm {
    /// Serves `script` on a free port of 127.0.0.1. Must be called within a Tokio runtime.
    /// Panics on a bad script (saying what is wrong) or when no port can be bound: it is a
    /// test aid.
    pub fn start(script: Value) -> StandInLlm {
        let script = Script::parse(&script).unwrap_or_else(|e| panic!("a bad stand-in LLM script: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        StandInLlm::serve(script, listener).expect("cannot serve the stand-in LLM")
    }

    /// Serves `script` on `listener`. Must be called within a Tokio runtime.
    pub fn serve(script: Script, listener: std::net::TcpListener) -> std::io::Result<StandInLlm> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared { script, state: Mutex::default(), stop: stop.clone() });
        let app = axum::Router::new()
            .route(PATH, axum::routing::post(complete))
            .fallback(
                |State(shared): State<Arc<Shared>>, method: axum::http::Method, uri: axum::http::Uri| async move {
                    match shared.script.fixture(uri.path()) {
                        Some(fixture) if method == axum::http::Method::GET => answer(200, None, fixture),
                        _ => answer(
                            404,
                            None,
                            &script::error_body(404, "stand-in: only POST /v1/chat/completions and the fixtures"),
                        ),
                    }
                },
            )
            .with_state(shared.clone());
        let until = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(until.cancelled_owned()).await {
                tracing::warn!(error = %e, "the stand-in LLM stopped serving");
            }
        });
        Ok(StandInLlm { base_url, shared, stop, task: Some(task) })
    }

    /// Its base URL, `http://127.0.0.1:PORT/v1`: an `llm` job's `base_url`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Every request body received, in order (a body that is not JSON as a string).
    pub fn requests(&self) -> Vec<Value> {
        self.shared.calls().received.iter().map(|r| r.body.clone()).collect()
    }

    /// Each request's `Authorization` header, in the order of [`StandInLlm::requests`].
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.calls().received.iter().map(|r| r.authorization.clone()).collect()
    }

    /// How many requests it received.
    pub fn calls(&self) -> usize {
        self.shared.calls().received.len()
    }

    /// Stops serving: no new connection is taken, requests waiting out a delay are
    /// answered 503 at once, and open connections close. Waits for that, at most 5 s.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for StandInLlm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `POST /v1/chat/completions`: records the request, picks its reply, waits out the
/// reply's delay, answers.
async fn complete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let picked = {
        let mut calls = shared.calls();
        calls.received.push(Received { body: request.clone(), authorization });
        let call = calls.received.len();
        if !request.get("messages").is_some_and(Value::is_array) {
            let body = script::error_body(400, "stand-in: the body is not a chat completion request (no `messages`)");
            return answer(400, None, &body);
        }
        shared.script.place(&request).map(|place| {
            let reply = shared.script.reply(place, &mut calls.per_slot);
            (place, reply.answer(&request, place.turn, call, chrono::Utc::now().timestamp()), call)
        })
    };
    let Some((place, reply, call)) = picked else {
        let body = script::error_body(404, "stand-in: no conversation of the script matches and it has no default");
        return answer(404, None, &body);
    };
    let conversation = place.conversation.map_or("default", |c| shared.script.matcher(c));
    tracing::info!(
        call,
        conversation,
        turn = place.turn,
        status = reply.status,
        delay_ms = reply.delay.as_millis() as u64,
        "stand-in LLM call"
    );
    if !reply.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(reply.delay) => {}
            _ = shared.stop.cancelled() => return answer(503, None, &script::error_body(503, "stand-in: stopping")),
        }
    }
    answer(reply.status, reply.retry_after.as_deref(), &reply.body)
}

fn answer(status: u16, retry_after: Option<&str>, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|r| HeaderValue::from_str(r).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
