//! `llm`: one call to an OpenAI-compatible chat-completions endpoint.
//!
//! Input:
//!
//! ```json
//! {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
//!  "messages": [{"role": "system", "content": "Triage the ticket."},
//!               {"role": "user", "content": "The printer is on fire."}],
//!  "tools": [], "temperature": 0.2, "max_tokens": 500, "response_format": {"type": "json_object"},
//!  "api_key": "openai", "timeout_ms": 60000, "connect_timeout_ms": 10000}
//! ```
//!
//! `base_url`, `model` and `messages` (a non-empty array of objects, each with a `role`)
//! are required; any field not listed above is refused, naming it. `tools` and
//! `response_format` are passed on as given. The call is one POST of
//! `{base_url}/chat/completions` (a query of `base_url` is kept) with the model, the
//! messages and the optional fields given. `api_key` names a secret of the server's
//! configuration ([`LlmConfig::secrets`]): the job holds the name, never the key, which
//! goes out as `Authorization: Bearer …` and is cut out of anything the attempt records
//! (its output and its error's message), should a provider echo it back. A secret bound
//! to base URLs goes only to them: a job naming it with another `base_url` is refused on
//! `input.base_url`, when it is submitted and again when it runs (the configuration may
//! have changed since), before anything is sent ([`keys`]).
//!
//! Output: `{"message", "content", "tool_calls", "usage", "finish_reason", "model",
//! "latency_ms"}`: the first choice's assistant message as the provider returned it; its
//! content (a string, or null when it has none); its tool calls as `{"id", "name",
//! "arguments"}`, the arguments parsed from the JSON text providers send (left as that
//! text when it does not parse); the usage's `prompt_tokens`, `completion_tokens` and
//! `total_tokens` (zeros when the provider gave none); the finish reason and the model
//! that answered; and the call's wall time.
//!
//! Outcomes: a 2xx whose body is a chat completion succeeds. 429 is `rate_limited`, and
//! its `Retry-After` (seconds or an HTTP date) replaces the backoff delay; 5xx are
//! `http_status`, retryable; other statuses (3xx included: redirects are not followed,
//! since a redirected POST would be re-sent as a GET) are `http_status`, not retryable.
//! `timeout_ms` bounds the whole call, from connecting to the last byte of the answer, and
//! `connect_timeout_ms` the connection; past either the attempt fails with `timeout`,
//! retryable. A connection that cannot be made or breaks is `network`, retryable. A 2xx
//! whose body is not a chat completion (not JSON, or no `choices[0].message` object) is
//! `internal`, not retried: a complete answer of the wrong shape is a wrong `base_url` or
//! an incompatible provider, and says the same again. An answer over 4 MiB is
//! `resource_limit`. A failed attempt keeps `{"status", "response", "latency_ms"}` as its
//! output, `response` being the first KiB of the answer (`status` and `response` are null
//! when no answer came).
//!
//! Jobs of this kind go to the built-in `llm` queue unless they name another
//! ([`Executor::default_queue`]), whose concurrency (`llm.concurrency`, 100) is its own:
//! a call spends its time waiting on the provider, so many may wait at once without
//! taking `default`'s slots. The breaker in front of a call is the origin of `base_url`.

use super::http::{Clients, classify, origin, retry_after, status_error};
use super::{object, only_fields, opt_u64};
use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use ferry_core::{ErrorType, ExecError, SpecError};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod keys;

use keys::REDACTED;
pub use keys::{BaseUrl, LlmSecret};

/// The default of [`LlmConfig::concurrency`].
const DEFAULT_CONCURRENCY: usize = 100;
/// The default and the largest `timeout_ms` of a call.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The default and the largest `connect_timeout_ms`.
const DEFAULT_CONNECT_MS: u64 = 10_000;
const MAX_CONNECT_MS: u64 = 600_000;
/// The longest answer read; past it the attempt fails with `resource_limit`.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How much of an answer a failed attempt keeps, and of a provider's error message its
/// error's message.
const EXCERPT_BYTES: usize = 1024;
const PROVIDER_MESSAGE_CHARS: usize = 300;
/// The longest `model` name.
const MAX_MODEL_CHARS: usize = 256;

/// The input fields; any other is refused.
const FIELDS: [&str; 10] = [
    "base_url",
    "model",
    "messages",
    "tools",
    "temperature",
    "max_tokens",
    "response_format",
    "api_key",
    "timeout_ms",
    "connect_timeout_ms",
];

/// Settings of the `llm` kind (`[llm]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// API keys by name (`openai = "sk-…"`, or a table with `key` and `base_urls`); a job
    /// names the one its calls carry.
    pub secrets: BTreeMap<String, LlmSecret>,
    /// Calls at once per process on the `llm` queue, unless `queues.llm.concurrency` says
    /// otherwise.
    pub concurrency: usize,
    /// Refuse to start while a secret has no `base_urls` (an unbound key may go to any
    /// `base_url` a job gives).
    pub require_base_urls: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig { secrets: BTreeMap::new(), concurrency: DEFAULT_CONCURRENCY, require_base_urls: false }
    }
}

impl LlmConfig {
    /// Checks values that are well-typed but unusable (each key and base URL was checked
    /// when read): every secret has a key, and with `require_base_urls` base URLs too.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err("llm.concurrency must be between 1 and 10000".into());
        }
        for (name, secret) in &self.secrets {
            if !ferry_core::job::valid_name(name) {
                return Err(format!("llm.secrets: the name `{name}` {}", ferry_core::job::NAME_RULE));
            }
            if !secret.has_key() {
                return Err(format!(
                    "llm.secrets.{name} has no key: set `key` in its table or {}",
                    env_name(LLM_SECRET_VAR, name)
                ));
            }
        }
        let unbound: Vec<&str> = self.unbound().collect();
        if self.require_base_urls && !unbound.is_empty() {
            let names: Vec<String> = unbound.iter().map(|n| format!("`{n}`")).collect();
            let vars: Vec<String> = unbound.iter().map(|n| env_name(LLM_BASE_URLS_VAR, n)).collect();
            return Err(format!(
                "llm.require_base_urls is set, but the llm secret {} has no base_urls: bind each \
                 (llm.secrets.NAME.base_urls, or {}) or unset llm.require_base_urls",
                names.join(", "),
                vars.join(", ")
            ));
        }
        Ok(())
    }

    /// The names of the secrets without base URLs, whose keys any job may send to any
    /// `base_url`.
    pub fn unbound(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().filter(|(_, s)| s.base_urls().is_empty()).map(|(n, _)| n.as_str())
    }
}

/// The prefix of the environment variable that holds the key of a secret, and of the one
/// that holds its base URLs (the secret's name, in capitals, follows; the configuration
/// reads them). They differ before the name, so that no secret's name can make one
/// variable read as the other.
pub const LLM_SECRET_VAR: &str = "FERRY_LLM_SECRET_";
pub const LLM_BASE_URLS_VAR: &str = "FERRY_LLM_BASE_URLS_";

/// The variable of `prefix` for the secret `name`.
fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_ascii_uppercase())
}

/// The `llm` kind, with the configured API keys.
pub struct Llm {
    secrets: BTreeMap<String, LlmSecret>,
    clients: Clients,
}

/// A valid input, read.
struct Call<'a> {
    endpoint: Url,
    body: Value,
    key: Option<&'a str>,
    timeout: Duration,
    connect_ms: u64,
}

impl Llm {
    /// The queue `llm` jobs go to when they name none; it exists out of the box.
    pub const QUEUE: &'static str = "llm";

    /// The kind, calling with `cfg`'s keys. Installs rustls' `ring` provider as the
    /// process default if none is.
    pub fn new(cfg: &LlmConfig) -> Self {
        Llm { secrets: cfg.secrets.clone(), clients: Clients::new(false) }
    }

    /// Reads a call out of an input, or says which field is wrong.
    fn call<'a>(&'a self, input: &'a Value) -> Result<Call<'a>, SpecError> {
        object(input, false)?;
        only_fields(input, &FIELDS, "an llm call")?;
        let base_url = base_url(input)?;
        let endpoint = endpoint(&base_url);
        let mut body = Map::new();
        match input.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.chars().count() <= MAX_MODEL_CHARS => {
                body.insert("model".into(), json!(m));
            }
            _ => return Err(SpecError::invalid("input.model", "is required: the model's name, 1 to 256 characters")),
        }
        body.insert("messages".into(), messages(input)?.clone());
        if let Some(tools) = present(input, "tools") {
            if !tools.is_array() {
                return Err(SpecError::invalid("input.tools", "must be an array of tools"));
            }
            body.insert("tools".into(), tools.clone());
        }
        if let Some(t) = present(input, "temperature") {
            if !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
                return Err(SpecError::invalid("input.temperature", "must be a number from 0 to 2"));
            }
            body.insert("temperature".into(), t.clone());
        }
        if let Some(n) = opt_u64(input, "max_tokens", 100_000_000)? {
            if n == 0 {
                return Err(SpecError::invalid("input.max_tokens", "must be at least 1"));
            }
            body.insert("max_tokens".into(), json!(n));
        }
        if let Some(format) = present(input, "response_format") {
            if !format.is_object() {
                return Err(SpecError::invalid("input.response_format", "must be an object"));
            }
            body.insert("response_format".into(), format.clone());
        }
        let key = match present(input, "api_key") {
            None => None,
            Some(Value::String(name)) => match self.secrets.get(name) {
                Some(secret) => {
                    secret.allows(name, &base_url).map_err(|why| SpecError::invalid("input.base_url", why))?;
                    let key = secret.key().ok_or_else(|| {
                        SpecError::invalid("input.api_key", format!("the secret `{name}` has no key configured"))
                    })?;
                    Some(key)
                }
                None => return Err(SpecError::invalid("input.api_key", self.unknown_secret(name))),
            },
            Some(_) => {
                return Err(SpecError::invalid(
                    "input.api_key",
                    "must be the name of a configured secret (llm.secrets)",
                ));
            }
        };
        let timeout = millis(input, "timeout_ms", DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS)?;
        let connect_ms = millis(input, "connect_timeout_ms", DEFAULT_CONNECT_MS, MAX_CONNECT_MS)?;
        Ok(Call { endpoint, body: Value::Object(body), key, timeout: Duration::from_millis(timeout), connect_ms })
    }

    fn unknown_secret(&self, name: &str) -> String {
        if self.secrets.is_empty() {
            return format!("unknown secret `{name}`; none is configured (llm.secrets)");
        }
        let names: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        format!("unknown secret `{name}`; configured: {}", names.join(", "))
    }
}

/// A field that is there and not null.
fn present<'a>(input: &'a Value, field: &str) -> Option<&'a Value> {
    input.get(field).filter(|v| !v.is_null())
}

/// The input's `base_url`, an http or https URL.
fn base_url(input: &Value) -> Result<Url, SpecError> {
    let raw = input
        .get("base_url")
        .and_then(Value::as_str)
        .ok_or_else(|| SpecError::invalid("input.base_url", "is required and must be a string"))?;
    let url = Url::parse(raw).map_err(|e| SpecError::invalid("input.base_url", format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SpecError::invalid("input.base_url", "must be an http or https URL"));
    }
    Ok(url)
}

/// The URL of a base URL's chat completions.
fn endpoint(base_url: &Url) -> Url {
    let mut url = base_url.clone();
    let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// The input's `messages`: a non-empty array of objects, each with a string `role`.
fn messages(input: &Value) -> Result<&Value, SpecError> {
    let Some(list) = input.get("messages").and_then(Value::as_array).filter(|l| !l.is_empty()) else {
        return Err(SpecError::invalid("input.messages", "is required: a non-empty array of messages"));
    };
    for (i, m) in list.iter().enumerate() {
        if !m.is_object() {
            return Err(SpecError::invalid(format!("input.messages[{i}]"), "must be an object with a `role`"));
        }
        if m.get("role").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(SpecError::invalid(
                format!("input.messages[{i}].role"),
                "is required: `system`, `user`, `assistant` or `tool`",
            ));
        }
    }
    Ok(&input["messages"])
}

/// An optional duration in milliseconds, 1 to `max`.
fn millis(input: &Value, field: &str, default: u64, max: u64) -> Result<u64, SpecError> {
    match opt_u64(input, field, max)? {
        Some(0) => Err(SpecError::invalid(format!("input.{field}"), "must be at least 1")),
        Some(ms) => Ok(ms),
        None => Ok(default),
    }
}

/// `text` with every occurrence of `key` cut out.
fn redact_str(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if text.contains(k) => text.replace(k, REDACTED),
        _ => text.to_string(),
    }
}

/// `value` with every occurrence of `key` cut out of its strings (and keys).
fn redact(value: Value, key: Option<&str>) -> Value {
    let Some(k) = key else { return value };
    match value {
        Value::String(s) => Value::String(redact_str(&s, Some(k))),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| redact(v, key)).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(n, v)| (redact_str(&n, key), redact(v, key))).collect())
        }
        other => other,
    }
}

/// The first `limit` bytes of `bytes` as text (cut at a character boundary).
fn excerpt(bytes: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned();
    text.trim_end_matches('\u{FFFD}').to_string()
}

/// Reads an answer's body, up to `limit` bytes; `true` when there was more.
async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            bytes.extend_from_slice(&chunk[..limit - bytes.len()]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}

/// The output of a successful call, read out of a chat completion; `Err` says why the body
/// is not one.
fn completion(body: &Value, requested_model: &Value) -> Result<Value, &'static str> {
    let choice =
        body.get("choices").and_then(Value::as_array).and_then(|c| c.first()).ok_or("it has no `choices[0]`")?;
    let message = choice.get("message").filter(|m| m.is_object()).ok_or("its `choices[0].message` is not an object")?;
    let content = match message.get("content") {
        Some(Value::String(s)) => json!(s),
        // Some providers answer content parts: their text, joined.
        Some(Value::Array(parts)) => {
            json!(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<String>())
        }
        _ => Value::Null,
    };
    let tool_calls: Vec<Value> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let function = call.get("function").unwrap_or(&Value::Null);
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            json!({"id": call.get("id"), "name": function.get("name"), "arguments": arguments})
        })
        .collect();
    let usage = body.get("usage").unwrap_or(&Value::Null);
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (count("prompt_tokens"), count("completion_tokens"));
    let total = usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(prompt + completion);
    Ok(json!({
        "message": message,
        "content": content,
        "tool_calls": tool_calls,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total},
        "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null),
        "model": body.get("model").filter(|m| m.is_string()).unwrap_or(requested_model),
    }))
}

/// What a provider's error answer says, in its own words (OpenAI's `error.message`), cut
/// short; `None` when it says nothing readable.
fn provider_message(bytes: &[u8]) -> Option<String> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let said = body.get("error").and_then(|e| e.get("message").or(Some(e))).and_then(Value::as_str)?;
    let mut cut: String = said.chars().take(PROVIDER_MESSAGE_CHARS).collect();
    if cut.len() < said.len() {
        cut.push('…');
    }
    Some(cut)
}

#[async_trait]
impl Executor for Llm {
    fn kind(&self) -> &'static str {
        "llm"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        self.call(input).map(drop)
    }

    /// Two minutes: the default call's minute, with room for connecting and a slow start.
    fn default_timeout_ms(&self) -> Option<u64> {
        Some(120_000)
    }

    fn breaker_key(&self, input: &Value) -> Option<String> {
        base_url(input).ok().map(|u| origin(&endpoint(&u)))
    }

    fn default_queue(&self) -> Option<&'static str> {
        Some(Self::QUEUE)
    }

    async fn run(&self, _attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        // A secret removed from the configuration since the submission, or bound since to
        // base URLs this call's is not under, is refused here, before anything is sent.
        let call = self.call(&input).map_err(|e| ExecError::new(ErrorType::Validation, e.to_string()))?;
        let key = call.key;
        let mut req =
            self.clients.get(call.connect_ms)?.post(call.endpoint.clone()).timeout(call.timeout).json(&call.body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let started = Instant::now();
        let record = |status: Option<u16>, response: Option<String>| {
            let response = response.map(|r| redact_str(&r, key));
            json!({"status": status, "response": response, "latency_ms": started.elapsed().as_millis() as u64})
        };
        let failed = |e: reqwest::Error, status: Option<u16>| {
            let mut err = classify(e);
            err.message = redact_str(&err.message, key);
            err.with_output(record(status, None))
        };
        let mut resp = req.send().await.map_err(|e| failed(e, None))?;
        let status = resp.status();
        let wait = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let (bytes, over) =
            read_body(&mut resp, MAX_RESPONSE_BYTES).await.map_err(|e| failed(e, Some(status.as_u16())))?;
        let latency_ms = started.elapsed().as_millis() as u64;
        let kept = || record(Some(status.as_u16()), Some(excerpt(&bytes, EXCERPT_BYTES)));
        let answered = format!("{} answered {status} in {latency_ms} ms", call.endpoint);
        if !status.is_success() {
            let said = provider_message(&bytes).map_or_else(String::new, |m| format!(": {m}"));
            return Err(status_error(status, redact_str(&format!("{answered}{said}"), key), wait).with_output(kept()));
        }
        if over {
            let message = format!("{answered} with more than {} MiB", MAX_RESPONSE_BYTES >> 20);
            return Err(ExecError::new(ErrorType::ResourceLimit, message).with_output(kept()));
        }
        let parsed = serde_json::from_slice::<Value>(&bytes).map_err(|_| "it is not JSON");
        match parsed.and_then(|body| completion(&body, &call.body["model"])) {
            Ok(mut output) => {
                output["latency_ms"] = json!(latency_ms);
                Ok(redact(output, key))
            }
            Err(why) => {
                let message = format!("{answered} with a body that is not a chat completion: {why}");
                Err(ExecError::new(ErrorType::Internal, message).retryable(false).with_output(kept()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(names: &[&str]) -> Llm {
        let secrets = names.iter().map(|n| (n.to_string(), "sk-test-0123456789".parse().unwrap())).collect();
        Llm::new(&LlmConfig { secrets, ..LlmConfig::default() })
    }

    fn ok() -> Value {
        json!({"base_url": "https://api.example.com/v1", "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut input = ok();
        input[field] = value;
        input
    }

    #[test]
    fn validates_fields_by_name() {
        let k = kind(&["openai", "other"]);
        let refusal = |v: Value| k.validate(&v).unwrap_err();
        let field = |v: Value| refusal(v).field;
        k.validate(&ok()).unwrap();
        let mut missing = ok();
        missing.as_object_mut().unwrap().remove("base_url");
        assert_eq!(field(missing), "input.base_url");
        assert_eq!(field(with("base_url", json!("ftp://x"))), "input.base_url");
        assert_eq!(field(with("model", json!(""))), "input.model");
        assert_eq!(field(with("messages", json!([]))), "input.messages");
        assert_eq!(field(with("messages", json!([{"role": "user"}, 3]))), "input.messages[1]");
        assert_eq!(field(with("messages", json!([{"content": "x"}]))), "input.messages[0].role");
        assert_eq!(field(with("tools", json!({}))), "input.tools");
        assert_eq!(field(with("temperature", json!(3))), "input.temperature");
        assert_eq!(field(with("max_tokens", json!(0))), "input.max_tokens");
        assert_eq!(field(with("response_format", json!("json"))), "input.response_format");
        assert_eq!(field(with("timeout_ms", json!(0))), "input.timeout_ms");
        assert_eq!(field(with("connect_timeout_ms", json!(-1))), "input.connect_timeout_ms");
        let typo = refusal(with("temprature", json!(1)));
        assert_eq!(typo.field, "input.temprature");
        assert!(typo.message.contains("the fields are base_url, model"), "{}", typo.message);
        let unknown = refusal(with("api_key", json!("nope")));
        assert_eq!(
            (unknown.field.as_str(), unknown.message.as_str()),
            ("input.api_key", "unknown secret `nope`; configured: openai, other")
        );
        let none = kind(&[]).validate(&with("api_key", json!("openai"))).unwrap_err();
        assert!(none.message.contains("none is configured (llm.secrets)"), "{}", none.message);
        assert_eq!(field(json!([1])), "input");
        let all = json!({"base_url": "http://127.0.0.1:1/v1/", "model": "m", "messages": [{"role": "system"}],
            "tools": [], "temperature": 0.5, "max_tokens": 10, "response_format": {"type": "json_object"},
            "api_key": "openai", "timeout_ms": 100, "connect_timeout_ms": 100});
        k.validate(&all).unwrap();
    }

    #[test]
    fn calls_base_url_chat_completions_behind_its_origin() {
        let k = kind(&[]);
        let url = |base: &str| endpoint(&base_url(&json!({ "base_url": base })).unwrap()).to_string();
        assert_eq!(url("https://api.example.com/v1"), "https://api.example.com/v1/chat/completions");
        assert_eq!(url("https://api.example.com/v1/"), "https://api.example.com/v1/chat/completions");
        assert_eq!(
            url("http://h:8080/openai/v1?api-version=2"),
            "http://h:8080/openai/v1/chat/completions?api-version=2"
        );
        assert_eq!(k.breaker_key(&ok()).as_deref(), Some("https://api.example.com:443"));
        assert_eq!(k.default_queue(), Some("llm"));
    }

    #[test]
    fn reads_a_completion() {
        let body = json!({"id": "x", "model": "m-2024", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "raw", "arguments": "{not json"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        let out = completion(&body, &json!("m")).unwrap();
        assert_eq!(out["content"], Value::Null);
        assert_eq!(out["tool_calls"][0], json!({"id": "c1", "name": "lookup", "arguments": {"q": "x"}}));
        assert_eq!(out["tool_calls"][1]["arguments"], "{not json", "kept as text when it does not parse");
        assert_eq!(out["usage"], json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}));
        assert_eq!((&out["finish_reason"], &out["model"]), (&json!("tool_calls"), &json!("m-2024")));
        assert_eq!(out["message"], body["choices"][0]["message"]);

        let bare = json!({"choices": [{"message": {"role": "assistant", "content": "hi"}}]});
        let out = completion(&bare, &json!("asked")).unwrap();
        assert_eq!((&out["content"], &out["tool_calls"]), (&json!("hi"), &json!([])));
        assert_eq!(out["usage"], json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}));
        assert_eq!((&out["model"], &out["finish_reason"]), (&json!("asked"), &Value::Null));
        assert!(completion(&json!({"choices": []}), &json!("m")).is_err());
        assert!(completion(&json!({"choices": [{"message": "hi"}]}), &json!("m")).is_err());
    }

    #[test]
    fn a_key_is_never_shown() {
        let secret: LlmSecret = "sk-live-abc".parse().unwrap();
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(serde_json::to_value(&secret).unwrap(), json!(REDACTED));
        assert!("has space".parse::<LlmSecret>().unwrap_err().contains("visible ASCII"));
        assert!(!"".parse::<LlmSecret>().unwrap_err().contains("sk-"));
        let echoed = json!({"a": ["key sk-live-abc here"], "sk-live-abc": 1});
        assert_eq!(redact(echoed, Some("sk-live-abc")), json!({"a": ["key <redacted> here"], "<redacted>": 1}));
        assert_eq!(provider_message(br#"{"error": {"message": "bad key sk-1"}}"#).as_deref(), Some("bad key sk-1"));
        assert_eq!(provider_message(br#"{"error": "slow down"}"#).as_deref(), Some("slow down"));
        assert_eq!(provider_message(b"<html>"), None);
    }

    #[test]
    fn the_config_checks_names_and_concurrency() {
        LlmConfig::default().validate().unwrap();
        assert_eq!(LlmConfig::default().concurrency, 100);
        let zero = LlmConfig { concurrency: 0, ..LlmConfig::default() };
        assert!(zero.validate().unwrap_err().contains("llm.concurrency"));
        let secrets = BTreeMap::from([("a b".to_string(), "k".parse().unwrap())]);
        assert!(LlmConfig { secrets, ..LlmConfig::default() }.validate().unwrap_err().contains("`a b`"));
        let keyless = BTreeMap::from([("openai".to_string(), LlmSecret::default())]);
        let err = LlmConfig { secrets: keyless, ..LlmConfig::default() }.validate().unwrap_err();
        assert_eq!(err, "llm.secrets.openai has no key: set `key` in its table or FERRY_LLM_SECRET_OPENAI");
    }

    #[test]
    fn require_base_urls_refuses_every_unbound_secret() {
        let mut bound: LlmSecret = "sk-1".parse().unwrap();
        bound.bind(vec!["https://api.openai.com/v1".parse().unwrap()]).unwrap();
        let secrets = BTreeMap::from([
            ("openai".to_string(), bound),
            ("azure_eu".to_string(), "sk-2".parse().unwrap()),
            ("local".to_string(), "sk-3".parse().unwrap()),
        ]);
        let mut cfg = LlmConfig { secrets, ..LlmConfig::default() };
        assert!(!cfg.require_base_urls, "off by default: unbound keys keep working");
        cfg.validate().unwrap();
        assert_eq!(cfg.unbound().collect::<Vec<_>>(), ["azure_eu", "local"]);
        cfg.require_base_urls = true;
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("the llm secret `azure_eu`, `local` has no base_urls"), "{err}");
        assert!(err.contains("FERRY_LLM_BASE_URLS_AZURE_EU, FERRY_LLM_BASE_URLS_LOCAL"), "{err}");
        cfg.secrets.retain(|name, _| name == "openai");
        cfg.validate().unwrap();
        assert_eq!(cfg.unbound().count(), 0);
    }

    #[test]
    fn a_bound_secret_refuses_other_base_urls() {
        let mut secret: LlmSecret = "sk-test-0123456789".parse().unwrap();
        secret.bind(vec!["https://api.example.com/v1".parse().unwrap()]).unwrap();
        let k = Llm::new(&LlmConfig { secrets: BTreeMap::from([("openai".into(), secret)]), ..LlmConfig::default() });
        let keyed = |base: &str| {
            let mut input = with("api_key", json!("openai"));
            input["base_url"] = json!(base);
            input
        };
        k.validate(&keyed("https://API.example.com:443/v1/")).unwrap();
        k.validate(&keyed("https://api.example.com/v1/deployments/d?api-version=2")).unwrap();
        // Without a key, any base_url: the binding is the key's, not the provider's.
        k.validate(&with("base_url", json!("https://elsewhere.example/v1"))).unwrap();
        for refused in ["https://api.example.com/v1.evil.example", "https://api.example.com:8443/v1", "http://x/v1"] {
            let err = k.validate(&keyed(refused)).unwrap_err();
            assert_eq!(err.field, "input.base_url", "{refused}");
            assert!(
                err.message.contains("may not receive the secret `openai`: it goes only to https://api.example.com/v1"),
                "{}",
                err.message
            );
        }
    }
}
