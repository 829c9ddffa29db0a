//! `webhook`: delivers an event to an endpoint the way [Standard Webhooks] says, signed
//! with a secret of the server's configuration.
//!
//! Input:
//!
//! ```json
//! {"url": "https://partner.example/hooks", "payload": {"type": "invoice.paid", "data": {}},
//!  "secret": "partner", "headers": {"x-tenant": "acme"}, "event_type": "invoice.paid",
//!  "id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "connect_timeout_ms": 5000}
//! ```
//!
//! With `"ordered": true`, a workspace's deliveries to one endpoint (origin and path) go
//! one at a time, in the order they were submitted: each waits until the one before it
//! has succeeded, died or been cancelled (the job's `ordering_key`, see
//! [`ferry_core::JobSpec::ordering_key`]).
//!
//! Only `url` and `payload` are required; any other field is refused, so that a misspelt
//! `secret` cannot turn into an unsigned delivery. `secret` names one of
//! [`WebhookConfig::secrets`]: the job holds the name, never the key, so no job, output,
//! event or log line can show it. Without a `secret` the delivery is sent unsigned.
//!
//! A delivery is one POST of the payload, serialised once: the bytes signed are the bytes
//! sent. Headers: `content-type: application/json`; `webhook-id`, the input's `id` or else
//! the job's id, so that every retry and replay of a job carries the id the receiver
//! deduplicates by; `webhook-timestamp`, this attempt's Unix time in seconds; with a
//! secret, `webhook-signature: v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`));
//! with an `event_type`, `ferry-event-type` (Ferry's own: the standard has none); and the
//! input's `headers` (none of them may be one of the above).
//!
//! Outcomes: a 2xx succeeds. 5xx, timeouts and connection failures are retryable; 429 is
//! `rate_limited` and its `Retry-After` replaces the backoff delay; 410 Gone means the
//! endpoint is gone for good: `http_status`, not retried, and it disables the endpoint's
//! breaker ([`ExecError::disables_target`]). Other statuses, redirects included (never
//! followed: a redirected POST would be re-sent as a GET, without its body), are
//! `http_status`, not retried. The breaker in front of a delivery is its URL's origin.
//!
//! The output of every attempt, succeeded or failed, is its delivery record:
//! `{"status", "latency_ms", "response", "webhook_id", "timestamp"}` (`response`: the first
//! KiB of the answer's body, as text; `status` and `response` are null when no answer
//! came). A failed attempt's error message says the same in words, so a job's `attempts`
//! are its delivery log.
//!
//! Jobs of this kind go to the built-in `webhook` queue unless they name another
//! ([`Executor::default_queue`]), so that slow endpoints never take `default`'s slots.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use super::http::{Clients, classify, connect_timeout_ms, headers, origin, retry_after, status_error, url};
use super::{object, only_fields};
use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_core::{ErrorType, ExecError, SpecError};
use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

/// The default of [`WebhookConfig::concurrency`].
const DEFAULT_CONCURRENCY: usize = 20;

/// The Standard Webhooks prefix of a secret.
const SECRET_PREFIX: &str = "whsec_";

/// The shortest key accepted: the 24 bytes (192 bits) Standard Webhooks recommends at
/// least.
const MIN_KEY_BYTES: usize = 24;

/// How much of an answer's body a delivery record keeps.
const RESPONSE_KEPT: usize = 1024;

/// The input fields; any other is refused.
const FIELDS: [&str; 8] = ["url", "payload", "secret", "headers", "event_type", "id", "connect_timeout_ms", "ordered"];

/// Headers the kind sets itself, which a job's `headers` may not.
const OWN_HEADERS: [&str; 5] = ["content-type", "webhook-id", "webhook-timestamp", "webhook-signature", EVENT_TYPE];

/// The header that carries a delivery's `event_type`.
const EVENT_TYPE: &str = "ferry-event-type";

/// The longest `id` and `event_type`.
const MAX_TEXT: usize = 255;

/// A signing secret as Standard Webhooks writes it: `whsec_` and the key in base64, at
/// least 24 bytes of key. Checked when read, so a held one is always usable. It never
/// leaves the process: its `Debug` and its serialised form are `<redacted>` (so `ferry
/// config show` prints that), and a refusal never quotes it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookSecret {
    key: Vec<u8>,
}

/// What a secret is shown as.
const REDACTED: &str = "<redacted>";

impl FromStr for WebhookSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some(encoded) = s.strip_prefix(SECRET_PREFIX) else {
            return Err(format!("must start with `{SECRET_PREFIX}` (a Standard Webhooks secret)"));
        };
        let key = BASE64
            .decode(encoded)
            .map_err(|_| format!("must be `{SECRET_PREFIX}` followed by the key in standard base64"))?;
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("holds a key of {} bytes; at least {MIN_KEY_BYTES} are needed", key.len()));
        }
        Ok(WebhookSecret { key })
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Settings of the `webhook` kind (`[webhooks]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Signing secrets by name (`partner = "whsec_…"`); a job names the one it is signed
    /// with.
    pub secrets: BTreeMap<String, WebhookSecret>,
    /// Deliveries at once per process on the `webhook` queue, unless
    /// `queues.webhook.concurrency` says otherwise.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { secrets: BTreeMap::new(), concurrency: DEFAULT_CONCURRENCY }
    }
}

impl WebhookConfig {
    /// Checks values that are well-typed but unusable (each secret was checked when read).
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err("webhooks.concurrency must be between 1 and 10000".into());
        }
        for name in self.secrets.keys() {
            if !ferry_core::job::valid_name(name) {
                return Err(format!("webhooks.secrets: the name `{name}` {}", ferry_core::job::NAME_RULE));
            }
        }
        Ok(())
    }
}

/// The `webhook` kind, with the configured secrets.
pub struct Webhook {
    secrets: BTreeMap<String, WebhookSecret>,
    clients: Clients,
}

impl Webhook {
    /// The queue `webhook` jobs go to when they name none; it exists out of the box.
    pub const QUEUE: &'static str = "webhook";

    /// The kind, signing with `cfg`'s secrets. Installs rustls' `ring` provider as the
    /// process default if none is.
    pub fn new(cfg: &WebhookConfig) -> Self {
        Webhook { secrets: cfg.secrets.clone(), clients: Clients::new(false) }
    }

    /// Reads a delivery out of an input, or says which field is wrong.
    fn delivery<'a>(&'a self, input: &'a Value) -> Result<Delivery<'a>, SpecError> {
        object(input, false)?;
        only_fields(input, &FIELDS, "a webhook")?;
        let url = url(input)?;
        let payload = match input.get("payload") {
            None | Some(Value::Null) => {
                return Err(SpecError::invalid("input.payload", "is required (any JSON value but null)"));
            }
            Some(p) => p,
        };
        let key = match input.get("secret") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => match self.secrets.get(name) {
                Some(secret) => Some(secret.key.as_slice()),
                None => return Err(SpecError::invalid("input.secret", self.unknown_secret(name))),
            },
            Some(_) => return Err(SpecError::invalid("input.secret", "must be the name of a configured secret")),
        };
        let extra = headers(input)?;
        if let Some((name, _)) = extra.iter().find(|(k, _)| OWN_HEADERS.contains(&k.to_ascii_lowercase().as_str())) {
            return Err(SpecError::invalid(format!("input.headers.{name}"), "is set by the webhook kind itself"));
        }
        let (id, event_type) = (header_text(input, "id")?, header_text(input, "event_type")?);
        if !matches!(input.get("ordered"), None | Some(Value::Null | Value::Bool(_))) {
            return Err(SpecError::invalid("input.ordered", "must be true or false"));
        }
        Ok(Delivery { url, payload, key, headers: extra, id, event_type, connect_ms: connect_timeout_ms(input)? })
    }

    fn unknown_secret(&self, name: &str) -> String {
        if self.secrets.is_empty() {
            return format!("unknown secret `{name}`; none is configured (webhooks.secrets)");
        }
        let names: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        format!("unknown secret `{name}`; configured: {}", names.join(", "))
    }
}

/// A valid input, read.
struct Delivery<'a> {
    url: reqwest::Url,
    payload: &'a Value,
    key: Option<&'a [u8]>,
    headers: Vec<(String, String)>,
    id: Option<&'a str>,
    event_type: Option<&'a str>,
    connect_ms: u64,
}

/// An optional string field that goes into a header: 1 to 255 visible ASCII characters.
fn header_text<'a>(input: &'a Value, field: &str) -> Result<Option<&'a str>, SpecError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TEXT && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s))
        }
        Some(_) => Err(SpecError::invalid(format!("input.{field}"), "must be 1 to 255 visible ASCII characters")),
    }
}

/// The `webhook-signature` of a delivery: `v1,` and the base64 HMAC-SHA256, under `key`,
/// of `{id}.{timestamp}.{body}`.
fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Reads up to `limit` bytes of an answer's body, as text. A body that breaks off keeps
/// what came: the status is the delivery's outcome, the body only its record.
async fn response_text(resp: &mut reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(limit - bytes.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_trait]
impl Executor for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        self.delivery(input).map(drop)
    }

    /// Per endpoint: the origin and path (no query), so that one partner's endpoint that
    /// fails or says it is gone (410) holds back only its own deliveries. A key that would
    /// be longer than a breaker key may be (255 bytes) is the origin's.
    fn breaker_key(&self, input: &Value) -> Option<String> {
        let u = url(input).ok()?;
        let endpoint = format!("{}{}", origin(&u), u.path());
        Some(if endpoint.len() <= 255 { endpoint } else { origin(&u) })
    }

    /// With `"ordered": true`, the endpoint's deliveries of a workspace go one at a time,
    /// in the order they were submitted: the endpoint (its breaker's key) is the ordering
    /// key.
    fn ordering_key(&self, input: &Value) -> Option<String> {
        match input.get("ordered") {
            Some(Value::Bool(true)) => self.breaker_key(input),
            _ => None,
        }
    }

    fn default_queue(&self) -> Option<&'static str> {
        Some(Self::QUEUE)
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        // A secret removed from the configuration since the submission is refused here.
        let d = self.delivery(&input).map_err(|e| ExecError::new(ErrorType::Validation, e.to_string()))?;
        let id = d.id.map_or_else(|| attempt.job_id.to_string(), str::to_string);
        let body = serde_json::to_vec(d.payload)
            .map_err(|e| ExecError::new(ErrorType::Internal, format!("cannot serialise the payload: {e}")))?;
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self.clients.get(d.connect_ms)?.post(d.url.clone());
        for (k, v) in &d.headers {
            req = req.header(k, v);
        }
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = d.key {
            req = req.header("webhook-signature", signature(key, &id, timestamp, &body));
        }
        if let Some(event_type) = d.event_type {
            req = req.header(EVENT_TYPE, event_type);
        }
        let started = Instant::now();
        let record = |status: Option<u16>, response: Option<String>| {
            json!({
                "status": status,
                "latency_ms": started.elapsed().as_millis() as u64,
                "response": response,
                "webhook_id": id,
                "timestamp": timestamp,
            })
        };
        let mut resp = match req.body(body).send().await {
            Ok(resp) => resp,
            Err(e) => return Err(classify(e).with_output(record(None, None))),
        };
        let status = resp.status();
        let wait = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let response = response_text(&mut resp, RESPONSE_KEPT).await;
        let output = record(Some(status.as_u16()), Some(response));
        if status.is_success() {
            return Ok(output);
        }
        let answered = format!("{} answered {status} in {} ms", d.url, output["latency_ms"]);
        // As the `http` kind's, but for a 410 (gone for good) and a redirect (never followed).
        let err = match status {
            StatusCode::GONE => ExecError::new(ErrorType::HttpStatus, format!("{answered}: the endpoint is gone"))
                .retryable(false)
                .disabling_target(),
            s if s.is_redirection() => {
                let to = location.map_or_else(String::new, |l| format!(" to {l}"));
                ExecError::new(ErrorType::HttpStatus, format!("{answered}{to}; a webhook never follows redirects"))
                    .retryable(false)
            }
            s => status_error(s, answered, wait),
        };
        Err(err.with_output(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret of the Standard Webhooks test vector.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn kind(names: &[&str]) -> Webhook {
        let secrets = names.iter().map(|n| (n.to_string(), VECTOR_SECRET.parse().unwrap())).collect();
        Webhook::new(&WebhookConfig { secrets, ..WebhookConfig::default() })
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let secret: WebhookSecret = VECTOR_SECRET.parse().unwrap();
        let got = signature(&secret.key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_must_be_whsec_and_base64_of_enough_key_and_is_never_shown() {
        let err = |s: &str| s.parse::<WebhookSecret>().unwrap_err();
        assert!(err("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").contains("whsec_"));
        assert!(err("whsec_not base64!").contains("base64"));
        assert!(err("whsec_c2hvcnQ=").contains("5 bytes"), "{}", err("whsec_c2hvcnQ="));
        let secret: WebhookSecret = VECTOR_SECRET.parse().unwrap();
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(serde_json::to_value(&secret).unwrap(), json!(REDACTED));
        let read: WebhookConfig = serde_json::from_value(json!({"secrets": {"a": VECTOR_SECRET}})).unwrap();
        assert_eq!(read.secrets["a"], secret);
    }

    #[test]
    fn validates_fields_by_name() {
        let k = kind(&["a", "b"]);
        let refusal = |v: Value| k.validate(&v).unwrap_err();
        let field = |v: Value| refusal(v).field;
        let ok = json!({"url": "https://example.com/h", "payload": {"x": 1}});
        k.validate(&ok).unwrap();
        assert_eq!(field(json!({"payload": 1})), "input.url");
        assert_eq!(field(json!({"url": "ftp://x", "payload": 1})), "input.url");
        assert_eq!(field(json!({"url": "http://x"})), "input.payload");
        assert_eq!(field(json!({"url": "http://x", "payload": null})), "input.payload");
        let unknown = refusal(json!({"url": "http://x", "payload": 1, "secret": "c"}));
        assert_eq!(
            (unknown.field.as_str(), unknown.message.as_str()),
            ("input.secret", "unknown secret `c`; configured: a, b")
        );
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "secret": 3})), "input.secret");
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "secert": "a"})), "input.secert");
        assert_eq!(
            field(json!({"url": "http://x", "payload": 1, "headers": {"Webhook-Id": "x"}})),
            "input.headers.Webhook-Id"
        );
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "headers": {"a": 1}})), "input.headers.a");
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "id": "a b"})), "input.id");
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "id": ""})), "input.id");
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "event_type": 7})), "input.event_type");
        assert_eq!(
            field(json!({"url": "http://x", "payload": 1, "connect_timeout_ms": 0})),
            "input.connect_timeout_ms"
        );
        assert_eq!(field(json!({"url": "http://x", "payload": 1, "ordered": "yes"})), "input.ordered");
        assert_eq!(field(json!([1])), "input");
        let none = kind(&[]).validate(&json!({"url": "http://x", "payload": 1, "secret": "a"})).unwrap_err();
        assert!(none.message.contains("none is configured"), "{}", none.message);
        k.validate(&json!({"url": "http://x", "payload": false, "secret": "a", "id": "msg_1", "event_type": "a.b",
            "headers": {"x-tenant": "t"}, "connect_timeout_ms": 100, "ordered": true}))
            .unwrap();
    }

    #[test]
    fn an_ordered_delivery_is_ordered_by_its_endpoint() {
        let k = kind(&[]);
        let key = |v: Value| k.ordering_key(&v);
        let url = "https://hooks.example.com/a?x=1";
        assert_eq!(key(json!({"url": url, "payload": 1})), None);
        assert_eq!(key(json!({"url": url, "payload": 1, "ordered": false})), None);
        assert_eq!(
            key(json!({"url": url, "payload": 1, "ordered": true})).as_deref(),
            Some("https://hooks.example.com:443/a")
        );
    }

    #[test]
    fn goes_to_the_webhook_queue_behind_the_endpoints_breaker() {
        let k = kind(&[]);
        assert_eq!(k.default_queue(), Some("webhook"));
        let key = |url: String| k.breaker_key(&json!({"url": url, "payload": 1}));
        assert_eq!(
            key("https://hooks.example.com/a/b?c=d".into()).as_deref(),
            Some("https://hooks.example.com:443/a/b")
        );
        let long = format!("https://hooks.example.com/{}", "x".repeat(300));
        assert_eq!(key(long).as_deref(), Some("https://hooks.example.com:443"), "too long for a key: the origin");
    }

    #[test]
    fn the_config_checks_names_and_concurrency() {
        WebhookConfig::default().validate().unwrap();
        let zero = WebhookConfig { concurrency: 0, ..WebhookConfig::default() };
        assert!(zero.validate().unwrap_err().contains("webhooks.concurrency"));
        let secrets = BTreeMap::from([("a b".to_string(), VECTOR_SECRET.parse().unwrap())]);
        let bad = WebhookConfig { secrets, ..WebhookConfig::default() };
        assert!(bad.validate().unwrap_err().contains("`a b`"));
    }
}
