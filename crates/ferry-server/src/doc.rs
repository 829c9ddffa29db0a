//! The OpenAPI document served at `/v1/openapi.json`: what this server really answers, so
//! that a client generated from it works, and a contract test can hold the server to it.
//!
//! The document is built in three layers, each owning one kind of fact:
//!
//! 1. **The handlers' annotations** (`#[utoipa::path]` in `jobs.rs`, `runs.rs`, …) and the
//!    types' `ToSchema` derivations: each operation's id, parameters, body, success answers
//!    and the refusals only it makes (404, 409, 429 `limit_reached`, 503 `queue_full`, …).
//! 2. **[`complete`]**: what follows from rules every operation shares, added by the same
//!    rules the server applies, so no operation can forget one:
//!    - every `/v1` operation but this document needs a bearer token ([`crate::auth`]): it
//!      declares the `bearer` scheme and answers 401, 403 when [`crate::auth::needed`] asks
//!      more than `viewer`, and 500/503 (the store is read for the token);
//!    - an operation with a path parameter, a query or a header parameter, or a body, may
//!      answer 400 (`invalid_field`, `invalid_path`, `invalid_query`, …); one with a body
//!      also 413 (`payload_too_large`), 415 (`unsupported_media_type`) and 408 (a body that
//!      does not arrive in time);
//!    - every operation may answer 414 and 431 (a request line or headers over the HTTP
//!      server's limits);
//!    - every refusal is the one error shape ([`crate::ErrorBody`]), and a 429 or 503
//!      refusal carries `Retry-After`;
//!    - the request fields that the core types check in code (names, ranges, counts, sizes)
//!      get the same bounds in the schema ([`constrain`]).
//! 3. **[`Documents::new`]**: what depends on this server: its configured limits
//!    (`limits.max_attempts`, timeouts, horizon), registered kinds and configured queues; and
//!    [`Documents::get`] answers with bearer auth required or optional depending on whether
//!    a request without a token is refused right now (open mode: no token exists and the
//!    server listens on loopback or runs `--insecure`).
//!
//! Choices the document states and the server keeps:
//! - An integer field is `type: integer` with the range the server accepts. A JSON number
//!   with a fraction or an exponent (`5.0`, `5e0`) is not an integer to the body parser and
//!   is refused with 400 like any other wrong type: clients send integers as integers.
//! - A `serde_json::Value` field is "any JSON" (no `type`), `object` only where the server
//!   requires one.
//! - A rule that spans fields (`soft_timeout_ms` at most `timeout_ms`, not both `run_at`
//!   and `delay_ms`, a workflow's graph) or depends on a kind (its input) is said in the
//!   descriptions, not in the schema: such a request is well-formed and refused with 400.
//!
//! The contract test (`crates/ferry/tests/contract.rs`) runs schemathesis with every check
//! against a live server to keep all of this true.

use crate::ApiConfig;
use ferry_core::auth::Role;
use serde_json::{Map, Value, json};

/// Key names, queue names and label keys: [`ferry_core::job::valid_name`].
const NAME: &str = "^[A-Za-z0-9_.-]{1,64}$";
/// Workflow node ids: letters, digits, `_` or `-`.
const NODE_ID: &str = "^[A-Za-z0-9_-]{1,64}$";
/// User names of tokens and per-user limits.
const USER: &str = "^[A-Za-z0-9_.@-]{1,64}$";
/// Largest `backoff.max_ms` (and so `initial_ms`): seven days.
const MAX_BACKOFF_MS: u64 = 7 * 24 * 3_600_000;
// Most users with limits of their own in one workspace: `PUT /v1/limits` refuses more.
use crate::limits::MAX_LIMIT_USERS;

/// The methods an OpenAPI path item may hold.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The document in its two forms: with bearer auth required on `/v1`, and with it optional
/// (open mode). Built once per router.
#[derive(Debug, Clone)]
pub struct Documents {
    closed: Value,
    open: Value,
}

impl Documents {
    /// The documents of a server with this configuration and these registered kinds.
    pub fn new(cfg: &ApiConfig, kinds: &[&str]) -> Documents {
        let mut closed = serde_json::to_value(crate::openapi()).expect("the OpenAPI document is JSON");
        complete(&mut closed);
        links(&mut closed);
        constrain(&mut closed, cfg, kinds);
        let mut open = closed.clone();
        for_each_operation(&mut open, |path, _, op| {
            if is_guarded(path) {
                op["security"] = json!([{"bearer": []}, {}]);
            }
        });
        Documents { closed, open }
    }

    /// The document to serve: `token_required` when a request without a token is refused.
    pub fn get(&self, token_required: bool) -> &Value {
        if token_required { &self.closed } else { &self.open }
    }
}

/// Whether a path is behind the token check (see [`crate::auth::require`]).
fn is_guarded(path: &str) -> bool {
    path.starts_with("/v1/") && path != "/v1/openapi.json"
}

fn for_each_operation(doc: &mut Value, mut f: impl FnMut(&str, &str, &mut Value)) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            if let Some(op) = item.get_mut(method) {
                f(path, method, op);
            }
        }
    }
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

fn retry_after() -> Value {
    json!({
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "required": true,
            "schema": {"type": "integer", "minimum": 0}
        }
    })
}

/// The refusals shared by many operations, as `components.responses`.
fn shared_responses() -> Value {
    let mut unavailable = error("The store is unreachable (`unavailable`): try again");
    unavailable["headers"] = retry_after();
    json!({
        "BadRequest": error(
            "The request is malformed: a path, query or header parameter, or the body (`invalid_field` naming the \
             `field`, `invalid_path`, `invalid_query`, `invalid_body`, `malformed_json`, `duplicate_key`, …)"
        ),
        "Unauthenticated": error(
            "No token, or one that is unknown or revoked (`unauthenticated`); see the `bearer` security scheme"
        ),
        "Forbidden": error("The token's role may not do this (`forbidden`)"),
        "RequestTimeout": error("The body did not arrive in time (`request_timeout`)"),
        "PayloadTooLarge": error("The body, or a field of it, is over its limit (`payload_too_large`)"),
        "UnsupportedMediaType": error(
            "The body's `Content-Type` is neither JSON nor absent nor `application/x-www-form-urlencoded` \
             (`unsupported_media_type`)"
        ),
        "UriTooLong": error("The request line is over the HTTP server's limit (`uri_too_long`)"),
        "HeadersTooLarge": error("The headers are over the HTTP server's limit (`headers_too_large`)"),
        "Internal": error("The server failed (`internal`); `request_id` names it in the server's log"),
        "Unavailable": unavailable,
    })
}

fn add_ref(responses: &mut Map<String, Value>, status: &str, name: &str) {
    responses.entry(status).or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
}

/// Layer 2: the responses and security that follow from rules every operation shares.
pub fn complete(doc: &mut Value) {
    let components = doc["components"].as_object_mut().expect("the document has components");
    components.insert("responses".into(), shared_responses());
    components.insert(
        "securitySchemes".into(),
        json!({"bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (`ferry token create`, or `POST /v1/tokens` by an admin), as \
                `Authorization: Bearer <token>`. `/healthz`, `/readyz`, `/metrics` and `/v1/openapi.json` \
                need none; neither does anything else while the server is in open mode (no token exists, \
                and it listens on loopback or runs with `--insecure`)."
        }}),
    );
    for_each_operation(doc, |path, method, op| {
        let guarded = is_guarded(path);
        let params: Vec<String> = op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p["in"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        let has_body = op.get("requestBody").is_some();
        // A parameter is text in a path, query or header: never JSON `null`.
        for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(Value::Array(types)) = p.pointer_mut("/schema/type") {
                types.retain(|t| t != "null");
            }
        }
        op["security"] = if guarded { json!([{"bearer": []}]) } else { json!([]) };
        let responses = op["responses"].as_object_mut().expect("an operation has responses");
        if guarded {
            add_ref(responses, "401", "Unauthenticated");
            let m = axum::http::Method::from_bytes(method.to_uppercase().as_bytes()).expect("an HTTP method");
            if crate::auth::needed(&m, path) > Role::Viewer {
                add_ref(responses, "403", "Forbidden");
            }
            add_ref(responses, "500", "Internal");
            add_ref(responses, "503", "Unavailable");
        }
        if has_body || !params.is_empty() {
            add_ref(responses, "400", "BadRequest");
        }
        if has_body {
            add_ref(responses, "408", "RequestTimeout");
            add_ref(responses, "413", "PayloadTooLarge");
            add_ref(responses, "415", "UnsupportedMediaType");
        }
        add_ref(responses, "414", "UriTooLong");
        add_ref(responses, "431", "HeadersTooLarge");
        for (status, response) in responses.iter_mut() {
            if response.get("description").and_then(Value::as_str) == Some("") {
                response["description"] = json!(default_description(status));
            }
            let is_error = response.pointer("/content/application~1json/schema/$ref")
                == Some(&json!("#/components/schemas/ErrorBody"));
            if (status == "429" || status == "503") && is_error {
                response["headers"] = retry_after();
            }
        }
    });
}

/// A link from a created resource's answer: the source operation, the statuses that
/// create or find it, the parameter and where its value is in the answer, the operations
/// it feeds.
type Link = (&'static str, &'static [&'static str], &'static str, &'static str, &'static [&'static str]);

/// What a created resource's answer leads to.
const LINKS: [Link; 4] = [
    (
        "submitJob",
        &["200", "201"],
        "id",
        "$response.body#/id",
        &["getJob", "listJobEvents", "cancelJob", "replayJob", "deleteJob"],
    ),
    ("startRun", &["200", "201"], "id", "$response.body#/id", &["getRun", "listRunEvents", "cancelRun"]),
    ("registerWorkflow", &["201"], "name", "$response.body#/name", &["getWorkflow"]),
    ("createToken", &["201"], "id", "$response.body#/id", &["revokeToken"]),
];

/// OpenAPI links from the answers that create resources to the operations on them.
fn links(doc: &mut Value) {
    let mut ops = Vec::new();
    for_each_operation(doc, |path, method, op| {
        if let Some(id) = op["operationId"].as_str() {
            ops.push((id.to_string(), path.to_string(), method.to_string()));
        }
    });
    let find = |id: &str| ops.iter().find(|(i, ..)| i == id).unwrap_or_else(|| panic!("no operation {id}")).clone();
    for (source, statuses, param, value, targets) in LINKS {
        let (_, path, method) = find(source);
        let mut links = Map::new();
        for target in targets {
            find(target);
            let mut name = target.to_string();
            name[..1].make_ascii_uppercase();
            links.insert(name, json!({"operationId": target, "parameters": {param: value}}));
        }
        for status in statuses {
            let pointer = format!("/paths/{}/{method}/responses/{status}", path.replace('~', "~0").replace('/', "~1"));
            let response = doc.pointer_mut(&pointer).unwrap_or_else(|| panic!("no response at {pointer}"));
            response["links"] = Value::Object(links.clone());
        }
    }
}

/// A response's description where its annotation gives none.
fn default_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "204" => "Done; no content",
        "400" => "The request is malformed or a field is invalid (`field` names it)",
        "403" => "The token's role may not do this (`forbidden`)",
        "404" => "No such object in the caller's workspace (`not_found`)",
        "409" => "The object's state does not allow this",
        _ => "See the error's `code`",
    }
}

/// Merges `extra` into the schema of `schema`'s property `prop` (panics if there is none:
/// a renamed field must be renamed here too, and the tests say so).
fn set(doc: &mut Value, schema: &str, prop: &str, extra: Value) {
    let target = doc
        .pointer_mut(&format!("/components/schemas/{schema}/properties/{prop}"))
        .unwrap_or_else(|| panic!("the document has no property {schema}.{prop}"));
    merge(target, extra);
}

fn set_schema(doc: &mut Value, schema: &str, extra: Value) {
    let target = doc
        .pointer_mut(&format!("/components/schemas/{schema}"))
        .unwrap_or_else(|| panic!("the document has no schema {schema}"));
    merge(target, extra);
}

fn merge(target: &mut Value, extra: Value) {
    let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) else { panic!("schemas are objects") };
    for (k, v) in e {
        t.insert(k, v);
    }
}

fn range(min: impl Into<Value>, max: impl Into<Value>) -> Value {
    json!({"minimum": min.into(), "maximum": max.into()})
}

/// An enum of `values`, and `null` when the field may be null.
fn one_of_names<S: AsRef<str>>(values: &[S], nullable: bool) -> Value {
    let mut v: Vec<Value> = values.iter().map(|s| json!(s.as_ref())).collect();
    if nullable {
        v.push(Value::Null);
    }
    json!({"enum": v})
}

/// Layer 2 and 3: the bounds the server checks in code, with this server's limits.
pub fn constrain(doc: &mut Value, cfg: &ApiConfig, kinds: &[&str]) {
    let l = &cfg.limits;
    let labels = json!({
        "maxProperties": 32,
        "propertyNames": {"pattern": NAME},
        "additionalProperties": {"type": "string", "maxLength": 256},
        "description": "Up to 32 labels: keys are names (1 to 64 letters, digits, `_`, `-` or `.`), \
            values at most 256 bytes"
    });
    let key = json!({"minLength": 1, "maxLength": 255, "description": "1 to 255 bytes"});
    // A workflow node may also be an `agent` (ferry_core::agent), which is no job kind.
    let mut node_kinds = kinds.to_vec();
    node_kinds.push(ferry_core::agent::KIND);
    set(doc, "NodeSpec", "kind", one_of_names(&node_kinds, false));
    set(doc, "JobSpec", "kind", one_of_names(kinds, false));
    set(doc, "ToolSpec", "kind", one_of_names(kinds, false));
    set(doc, "AgentSpec", "max_steps", range(1, ferry_core::agent::MAX_STEPS));
    set(doc, "RunLimits", "max_steps", range(1, ferry_core::agent::MAX_STEPS));
    set(doc, "RunLimits", "max_handoffs", range(0, ferry_core::agent::MAX_HANDOFFS));
    set(doc, "RunLimits", "max_tokens_total", json!({"minimum": 1}));
    set(doc, "AgentSpec", "base_url", json!({"pattern": "^https?://"}));
    set(doc, "AgentSpec", "model", json!({"minLength": 1}));
    set(doc, "ToolSpec", "name", json!({"pattern": "^[A-Za-z0-9_-]{1,64}$"}));
    set(doc, "ToolSpec", "timeout_ms", range(1, l.max_timeout_ms));
    for spec in ["JobSpec", "NodeSpec"] {
        set(doc, spec, "priority", range(i32::MIN, i32::MAX));
        set(doc, spec, "max_attempts", range(1, l.max_attempts));
        set(doc, spec, "timeout_ms", range(1, l.max_timeout_ms));
        set(doc, spec, "soft_timeout_ms", range(1, l.max_timeout_ms));
        set(doc, spec, "labels", labels.clone());
    }
    set(doc, "JobSpec", "queue", one_of_names(&cfg.queues, true));
    set(doc, "NodeSpec", "queue", json!({"pattern": NAME}));
    set(doc, "JobSpec", "total_timeout_ms", range(1, l.max_horizon_ms));
    set(doc, "JobSpec", "delay_ms", range(0, l.max_horizon_ms));
    set(doc, "JobSpec", "idempotency_key", key.clone());
    set(doc, "NodeSpec", "id", json!({"pattern": NODE_ID}));
    set(doc, "NodeSpec", "depends_on", json!({"items": {"type": "string", "pattern": NODE_ID}, "uniqueItems": true}));
    set(doc, "NodeSpec", "concurrency", range(1, ferry_core::workflow::MAX_CONCURRENCY));
    set(doc, "WorkflowSpec", "name", json!({"pattern": NAME}));
    set(doc, "WorkflowSpec", "nodes", json!({"minItems": 1, "maxItems": ferry_core::workflow::MAX_NODES}));
    set(doc, "WorkflowSpec", "timeout_ms", range(1, l.max_timeout_ms));
    set(doc, "Backoff", "initial_ms", range(0, MAX_BACKOFF_MS));
    set(doc, "Backoff", "max_ms", range(0, MAX_BACKOFF_MS));
    set(doc, "Backoff", "multiplier", range(1, 100));
    set(doc, "BatchRequest", "jobs", json!({"minItems": 1, "maxItems": cfg.max_batch}));
    set(doc, "RunRequest", "version", range(0, u32::MAX));
    set(doc, "RunRequest", "idempotency_key", key);
    set(doc, "TokenRequest", "user", json!({"pattern": USER}));
    set(doc, "ScheduleSpec", "name", json!({"pattern": "^[A-Za-z0-9._-]{1,100}$"}));
    set(doc, "ScheduleSpec", "every_ms", range(ferry_core::schedule::MIN_EVERY_MS, ferry_core::schedule::MAX_EVERY_MS));
    set(doc, "CatchUp", "max", range(1, ferry_core::schedule::MAX_CATCH_UP));
    set(doc, "RunTarget", "version", range(0, u32::MAX));
    set(doc, "WorkspaceLimits", "tokens_per_day", range(0, i64::MAX));
    set(doc, "WorkspaceLimits", "tokens_today", json!({"minimum": 0, "maximum": i64::MAX, "readOnly": true}));
    set(doc, "WorkspaceLimits", "users", json!({"propertyNames": {"pattern": USER}, "maxProperties": MAX_LIMIT_USERS}));
    for prop in ["runs", "jobs"] {
        set(doc, "LimitPair", prop, range(0, u64::MAX));
    }
    let job_rules = format!(
        "A job as a client submits it. Only `kind` is required. Rules across fields, refused with 400: \
         `soft_timeout_ms` is at most `timeout_ms`; `run_at` and `delay_ms` are not both given; `run_at` is \
         at most {} ms ahead; `backoff.initial_ms` is at most `backoff.max_ms`; `input` is what the kind \
         accepts. `input` serialized over {} bytes is kept as a blob and the job holds a reference \
         (`{{\"$blob\": {{\"hash\", \"size\"}}}}`, a reserved key); it is at most {} bytes, and {} bytes \
         inline (413).",
        l.max_horizon_ms, cfg.blobs.claim_check_bytes, cfg.blobs.max_bytes, l.max_input_bytes
    );
    set_schema(doc, "JobSpec", json!({ "description": job_rules }));
    // A share's answer is also a valid queue-settings object (every field of those is
    // optional), so "exactly one of" would be false: the answer is one or the other.
    if let Some(change) = doc.pointer_mut("/components/schemas/QueueChange").and_then(Value::as_object_mut)
        && let Some(one_of) = change.remove("oneOf")
    {
        change.insert("anyOf".into(), one_of);
    }
    unsigned_formats(doc);
}

/// Drops an `int32`/`int64` format from an integer whose declared range is an unsigned
/// one beyond it (a `u32`, `u64`): the range is the truth.
fn unsigned_formats(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let limit = match o.get("format").and_then(Value::as_str) {
                Some("int32") => Some(i32::MAX as u64),
                Some("int64") => Some(i64::MAX as u64),
                _ => None,
            };
            if let (Some(limit), Some(max)) = (limit, o.get("maximum").and_then(Value::as_u64))
                && max > limit
            {
                o.remove("format");
            }
            o.values_mut().for_each(unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Documents {
        Documents::new(&ApiConfig::default(), &["noop", "sleep"])
    }

    #[test]
    fn operation_ids_are_unique_and_every_operation_has_one() {
        let mut doc = docs().get(true).clone();
        let mut ids = Vec::new();
        for_each_operation(&mut doc, |path, method, op| {
            ids.push(op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no id")).to_string());
        });
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn open_mode_makes_the_token_optional_and_only_there() {
        let d = docs();
        let jobs = |doc: &Value| doc["paths"]["/v1/jobs"]["get"]["security"].clone();
        assert_eq!(jobs(d.get(true)), json!([{"bearer": []}]));
        assert_eq!(jobs(d.get(false)), json!([{"bearer": []}, {}]));
        assert_eq!(d.get(true)["paths"]["/healthz"]["get"]["security"], json!([]));
        assert_eq!(d.get(false)["paths"]["/v1/openapi.json"]["get"]["security"], json!([]));
    }

    #[test]
    fn every_refusal_has_the_error_shape() {
        let mut doc = docs().get(true).clone();
        let shared = doc["components"]["responses"].clone();
        for_each_operation(&mut doc, |path, method, op| {
            for (status, r) in op["responses"].as_object().expect("responses") {
                if status.starts_with('2') || (path == "/readyz" && status == "503") {
                    continue;
                }
                let r = match r["$ref"].as_str() {
                    Some(name) => &shared[name.trim_start_matches("#/components/responses/")],
                    None => r,
                };
                assert_eq!(
                    r.pointer("/content/application~1json/schema/$ref"),
                    Some(&json!("#/components/schemas/ErrorBody")),
                    "{method} {path} {status}: {r}"
                );
            }
        });
    }
}
