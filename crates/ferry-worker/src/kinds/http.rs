//! `http`: makes one HTTP request.
//!
//! Input: `{"method": "POST", "url": "https://…", "headers": {"k": "v"}, "body": …,
//! "connect_timeout_ms": 5000, "max_response_bytes": 1048576}`. Only `url` is required;
//! `method` defaults to `GET`. A string `body` is sent as is; any other JSON value is sent
//! as JSON with `content-type: application/json`.
//!
//! Output: `{"status", "headers", "body", "truncated"}`; the body is parsed as JSON when
//! the response says it is JSON, otherwise kept as text, and cut at `max_response_bytes`
//! (then `truncated` is true).
//!
//! Classification: 2xx and 3xx succeed (redirects are followed, up to 10). 429 is
//! `rate_limited`, retryable, and its `Retry-After` (seconds or an HTTP date) replaces the
//! backoff delay. Other 4xx are `http_status`, not retryable; 5xx are `http_status`,
//! retryable. Connection failures are `network`, timeouts `timeout`; both retryable. A
//! failed request keeps the response as the job's output, so the caller can read it.
//! The attempt's own timeout bounds the whole request.

use super::{object, opt_u64};
use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use ferry_core::{ErrorType, ExecError, SpecError};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const DEFAULT_CONNECT_MS: u64 = 5_000;
const MAX_CONNECT_MS: u64 = 600_000;
const DEFAULT_MAX_RESPONSE: u64 = 1024 * 1024;
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// The `http` kind.
pub struct Http {
    clients: Clients,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// A new executor. Installs rustls' `ring` provider as the process default if none is.
    pub fn new() -> Self {
        Http { clients: Clients::new(true) }
    }
}

/// Connection-pooling HTTP clients, one per connect timeout in use: the `http` kind's
/// (which follow redirects, up to 10) and the `webhook` kind's (which never do: a POST
/// redirected would be re-sent as a GET, without its signed body).
pub(crate) struct Clients {
    follow_redirects: bool,
    by_connect_ms: Mutex<HashMap<u64, Client>>,
}

impl Clients {
    /// No client yet. Installs rustls' `ring` provider as the process default if none is.
    pub(crate) fn new(follow_redirects: bool) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Clients { follow_redirects, by_connect_ms: Mutex::new(HashMap::new()) }
    }

    /// The client for this connect timeout, built on first use.
    pub(crate) fn get(&self, connect_ms: u64) -> Result<Client, ExecError> {
        let mut clients = self.by_connect_ms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&connect_ms) {
            return Ok(c.clone());
        }
        let redirects = if self.follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = Client::builder()
            .connect_timeout(Duration::from_millis(connect_ms))
            .redirect(redirects)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ExecError::new(ErrorType::Internal, format!("cannot build an HTTP client: {e}")))?;
        clients.insert(connect_ms, client.clone());
        Ok(client)
    }
}

/// The input's `connect_timeout_ms` (1 ms to 10 minutes), or the default, 5 s.
pub(crate) fn connect_timeout_ms(input: &Value) -> Result<u64, SpecError> {
    match opt_u64(input, "connect_timeout_ms", MAX_CONNECT_MS)? {
        Some(0) => Err(SpecError::invalid("input.connect_timeout_ms", "must be at least 1")),
        Some(ms) => Ok(ms),
        None => Ok(DEFAULT_CONNECT_MS),
    }
}

fn method(input: &Value) -> Result<Method, SpecError> {
    match input.get("method") {
        None | Some(Value::Null) => Ok(Method::GET),
        Some(Value::String(m)) => match m.to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::GET),
            "POST" => Ok(Method::POST),
            "PUT" => Ok(Method::PUT),
            "PATCH" => Ok(Method::PATCH),
            "DELETE" => Ok(Method::DELETE),
            "HEAD" => Ok(Method::HEAD),
            "OPTIONS" => Ok(Method::OPTIONS),
            _ => Err(SpecError::invalid("input.method", "must be GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS")),
        },
        Some(_) => Err(SpecError::invalid("input.method", "must be a string")),
    }
}

/// The input's `url`: an http or https URL (`input.url` otherwise).
pub(crate) fn url(input: &Value) -> Result<Url, SpecError> {
    let raw = input
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| SpecError::invalid("input.url", "is required and must be a string"))?;
    let url = Url::parse(raw).map_err(|e| SpecError::invalid("input.url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SpecError::invalid("input.url", "must be an http or https URL"));
    }
    Ok(url)
}

/// The input's `headers`: an object of valid header names and string values.
pub(crate) fn headers(input: &Value) -> Result<Vec<(String, String)>, SpecError> {
    match input.get("headers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let field = format!("input.headers.{k}");
                let v = v.as_str().ok_or_else(|| SpecError::invalid(&field, "must be a string"))?;
                reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| SpecError::invalid(&field, "is not a valid header name"))?;
                reqwest::header::HeaderValue::from_str(v)
                    .map_err(|_| SpecError::invalid(&field, "is not a valid header value"))?;
                Ok((k.clone(), v.to_string()))
            })
            .collect(),
        Some(_) => Err(SpecError::invalid("input.headers", "must be an object of strings")),
    }
}

/// A URL's origin, `scheme://host:port` with the port always written: the default key
/// of the breaker in front of a remote.
pub(crate) fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[async_trait]
impl Executor for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        object(input, false)?;
        method(input)?;
        url(input)?;
        headers(input)?;
        connect_timeout_ms(input)?;
        opt_u64(input, "max_response_bytes", MAX_RESPONSE)?;
        Ok(())
    }

    fn breaker_key(&self, input: &Value) -> Option<String> {
        url(input).ok().map(|u| origin(&u))
    }

    async fn run(&self, _attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let invalid = |e: SpecError| ExecError::new(ErrorType::Validation, e.to_string());
        let connect_ms = connect_timeout_ms(&input).map_err(invalid)?;
        let limit =
            opt_u64(&input, "max_response_bytes", MAX_RESPONSE).map_err(invalid)?.unwrap_or(DEFAULT_MAX_RESPONSE);
        let mut req =
            self.clients.get(connect_ms)?.request(method(&input).map_err(invalid)?, url(&input).map_err(invalid)?);
        for (k, v) in headers(&input).map_err(invalid)? {
            req = req.header(k, v);
        }
        match input.get("body") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => req = req.body(s.clone()),
            Some(other) => req = req.json(other),
        }
        let mut resp = req.send().await.map_err(classify)?;
        let status = resp.status();
        let mut head = Map::new();
        for (k, v) in resp.headers() {
            head.insert(k.as_str().to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        }
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let wait = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let mut bytes = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            let room = (limit as usize).saturating_sub(bytes.len());
            if chunk.len() > room {
                bytes.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = match (is_json && !truncated).then(|| serde_json::from_slice::<Value>(&bytes).ok()).flatten() {
            Some(v) => v,
            None => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        let output = json!({ "status": status.as_u16(), "headers": head, "body": body, "truncated": truncated });
        if status.is_success() || status.is_redirection() || status.is_informational() {
            return Ok(output);
        }
        let message = format!("{} answered {status}", input.get("url").and_then(Value::as_str).unwrap_or("the server"));
        Err(status_error(status, message, wait).with_output(output))
    }
}

/// The error of an unsuccessful answer: a 429 is `rate_limited`, retried after its
/// `Retry-After` (`retry_after`) instead of the backoff; any other status is
/// `http_status`, retryable for a 5xx.
pub(crate) fn status_error(status: StatusCode, message: String, retry_after: Option<Duration>) -> ExecError {
    if status == StatusCode::TOO_MANY_REQUESTS {
        let mut err = ExecError::new(ErrorType::RateLimited, message);
        err.retry_after = retry_after;
        err
    } else {
        ExecError::new(ErrorType::HttpStatus, message).retryable(status.is_server_error())
    }
}

/// What a failed request was: `timeout`, `validation` (a request that could not be
/// built) or `network`, with the whole chain of causes in the message.
pub(crate) fn classify(e: reqwest::Error) -> ExecError {
    if e.is_timeout() {
        ExecError::new(ErrorType::Timeout, format!("request timed out: {e}"))
    } else if e.is_builder() {
        ExecError::new(ErrorType::Validation, format!("bad request: {e}"))
    } else {
        // Walk the source chain: reqwest's own message alone ("error sending request")
        // does not say what went wrong.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        ExecError::new(ErrorType::Network, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_fields() {
        let h = Http::new();
        let field = |v: Value| h.validate(&v).unwrap_err().field;
        assert_eq!(field(json!({})), "input.url");
        assert_eq!(field(json!({"url": "ftp://x"})), "input.url");
        assert_eq!(field(json!({"url": "http://x", "method": "BREW"})), "input.method");
        assert_eq!(field(json!({"url": "http://x", "headers": {"a": 1}})), "input.headers.a");
        assert_eq!(field(json!({"url": "http://x", "connect_timeout_ms": 0})), "input.connect_timeout_ms");
        assert!(h.validate(&json!({"url": "http://127.0.0.1:1/x", "method": "post"})).is_ok());
    }

    #[test]
    fn the_breaker_key_is_the_origin_with_its_port() {
        let h = Http::new();
        let key = |u: &str| h.breaker_key(&json!({ "url": u }));
        assert_eq!(key("https://api.example.com/v1/x?y=1").as_deref(), Some("https://api.example.com:443"));
        assert_eq!(key("http://127.0.0.1:8080/").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(key("http://[::1]/a").as_deref(), Some("http://[::1]:80"));
        assert_eq!(key("ftp://x"), None);
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after("soon"), None);
    }
}
