//! Promise: an `llm` job makes one chat-completions call and keeps what came back (the
//! message, its tool calls parsed, the usage); its API key reaches the provider as a
//! Bearer header and nothing Ferry records; failures are classified as the catalogue says
//! (5xx retried with backoff, 429 after its `Retry-After`, other 4xx dead at once, a call
//! past its `timeout_ms` a `timeout`); a job naming an unknown key is refused at the door;
//! a key bound to base URLs goes to no other (refused at the door, when a node is planned,
//! and again when the attempt runs, before anything is sent); and calls wait on their own
//! `llm` queue, so fifty slow ones run together.
//!
//! The provider is `ferry::stand_in::StandInLlm`, a real HTTP server on loopback
//! answering from a script.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, poll, ts};
use ferry::config::Config;
use ferry::stand_in::StandInLlm;
use ferry_worker::kinds::{BaseUrl, LlmSecret};
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    a_call_keeps_the_message_tool_calls_and_usage_and_the_key_shows_nowhere,
    a_5xx_is_retried_with_backoff_then_succeeds,
    a_429_is_retried_no_sooner_than_its_retry_after,
    a_400_is_dead_at_once,
    a_call_past_its_timeout_fails_with_timeout,
    an_unknown_secret_or_field_is_refused_at_submission,
    a_workflow_acts_on_the_tool_call_of_its_llm_node,
    a_bound_key_goes_to_its_base_url_and_no_other,
    a_node_whose_base_url_resolves_elsewhere_fails_without_a_call,
    a_key_bound_since_the_submission_fails_the_attempt_without_a_call,
    fifty_calls_waiting_a_second_each_run_together_on_the_llm_queue,
);

/// The server's `openai` API key.
const KEY: &str = "sk-ferry-test-4f1c9a7e2b";

/// The test configuration with the `openai` key.
fn with_key(cfg: &mut Config) {
    cfg.llm.secrets.insert("openai".into(), KEY.parse().expect("a valid key"));
}

/// The test configuration with the `openai` key bound to `base_urls`.
fn with_bound_key(base_urls: &[String]) -> impl FnOnce(&mut Config) {
    let urls: Vec<BaseUrl> = base_urls.iter().map(|u| u.parse().expect("a valid base URL")).collect();
    move |cfg| {
        let mut secret: LlmSecret = KEY.parse().expect("a valid key");
        secret.bind(urls).expect("at least one base URL");
        cfg.llm.secrets.insert("openai".into(), secret);
    }
}

/// An `llm` job's spec for `llm`, with `messages` and any other input fields.
fn call(llm: &StandInLlm, messages: Value, more: Value) -> Value {
    let mut input = json!({"base_url": llm.base_url(), "model": "gpt-test", "messages": messages});
    for (k, v) in more.as_object().expect("an object") {
        input[k] = v.clone();
    }
    json!({"kind": "llm", "input": input})
}

/// `spec` with job fields set (`max_attempts`, `backoff`, …).
fn and(mut spec: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    spec
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// A backoff of exactly `ms` between attempts.
fn backoff(ms: u64) -> Value {
    json!({"initial_ms": ms, "max_ms": ms, "multiplier": 1.0, "jitter": "none"})
}

/// The job's events of `kind`.
async fn events_of(server: &TestServer, id: &str, kind: &str) -> Vec<Value> {
    server.events(id).await.into_iter().filter(|e| e["type"] == kind).collect()
}

/// The time between attempt `n`'s end and attempt `n + 1`'s start (0-based), in ms.
fn gap_ms(job: &Value, n: usize) -> i64 {
    let log = attempts(job);
    (ts(&log[n + 1]["started_at"]) - ts(&log[n]["finished_at"])).num_milliseconds()
}

async fn a_call_keeps_the_message_tool_calls_and_usage_and_the_key_shows_nowhere(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [
        {"match": "triage", "turns": [
            {"tool_calls": [{"name": "lookup", "arguments": {"q": "printer"}}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
            {"content": "{\"answer\": 1}"},
        ]},
        {"match": "echo the key", "turns": [
            {"status": 401, "body": {"error": {"message": format!("Incorrect API key provided: {KEY}")}}}
        ]},
    ], "default": {"content": "plain"}}));
    let server = TestServer::start_with(backend, with_key).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let system = json!({"role": "system", "content": "You triage tickets."});
    let question = json!({"role": "user", "content": "The printer is on fire."});
    let first = server
        .submit(call(
            &llm,
            json!([system, question]),
            json!({
                "api_key": "openai", "tools": tools, "temperature": 0.2, "max_tokens": 64,
                "response_format": {"type": "json_object"}
            }),
        ))
        .await;
    let job = server.wait_state(&first, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["queue"]), (&json!("succeeded"), &json!("llm")), "{job:#}");
    let out = &job["output"];
    assert_eq!(out["tool_calls"], json!([{"id": "call_0_0", "name": "lookup", "arguments": {"q": "printer"}}]));
    assert_eq!(out["content"], Value::Null);
    assert_eq!(out["usage"], json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}));
    assert_eq!((&out["finish_reason"], &out["model"]), (&json!("tool_calls"), &json!("gpt-test")));
    assert_eq!(out["message"]["role"], "assistant");
    assert_eq!(out["message"]["tool_calls"][0]["function"]["arguments"], r#"{"q":"printer"}"#, "as returned");
    assert!(out["latency_ms"].is_u64(), "{out}");

    // The next turn: the model's reply and the tool's result added.
    let reply = out["message"].clone();
    let result = json!({"role": "tool", "tool_call_id": "call_0_0", "content": "{\"status\": \"on fire\"}"});
    let second =
        server.submit(call(&llm, json!([system, question, reply, result]), json!({"api_key": "openai"}))).await;
    let job = server.wait_state(&second, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let out = &job["output"];
    assert_eq!((&out["content"], &out["tool_calls"]), (&json!("{\"answer\": 1}"), &json!([])));
    assert_eq!(out["finish_reason"], "stop");
    let usage = &out["usage"];
    assert!(usage["prompt_tokens"].as_u64() > Some(0) && usage["completion_tokens"].as_u64() > Some(0), "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );

    // Without a key, no Authorization header.
    let keyless = server.submit(call(&llm, user("hi"), json!({}))).await;
    assert_eq!(server.wait_state(&keyless, &["succeeded", "dead"]).await["output"]["content"], "plain");
    // A provider that echoes the key: it is cut out of what the attempt records.
    let echoed = server
        .submit(and(call(&llm, user("echo the key"), json!({"api_key": "openai"})), json!({"max_attempts": 1})))
        .await;
    let job = server.wait_state(&echoed, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["error"]["type"]), (&json!("dead"), &json!("http_status")), "{job:#}");
    assert_eq!(job["output"]["status"], 401);
    let message = job["error"]["message"].as_str().expect("a message");
    assert!(message.contains("Incorrect API key provided: <redacted>"), "{message}");

    // What the provider got: the fields passed on, and the key as a Bearer header.
    let requests = llm.requests();
    assert_eq!(llm.calls(), 4);
    let bearer = Some(format!("Bearer {KEY}"));
    assert_eq!(llm.authorizations(), [bearer.clone(), bearer.clone(), None, bearer]);
    assert_eq!(requests[0]["tools"], tools);
    assert_eq!((&requests[0]["temperature"], &requests[0]["max_tokens"]), (&json!(0.2), &json!(64)));
    assert_eq!(
        (&requests[0]["model"], &requests[0]["response_format"]),
        (&json!("gpt-test"), &json!({"type": "json_object"}))
    );
    assert_eq!(requests[1]["messages"].as_array().map(Vec::len), Some(4));
    assert!(requests.iter().all(|r| r.get("api_key").is_none()), "{requests:?}");

    // The key is in no job view, event or listing; only its name is.
    for id in [&first, &second, &echoed] {
        let (_, view) = server.get_text(&format!("/v1/jobs/{id}")).await;
        let (_, events) = server.get_text(&format!("/v1/jobs/{id}/events")).await;
        for text in [&view, &events] {
            assert!(!text.contains(KEY), "the key shows in {text}");
        }
        assert!(view.contains(r#""api_key":"openai""#), "only its name: {view}");
    }
    let (_, list) = server.get_text("/v1/jobs").await;
    assert!(!list.contains(KEY), "{list}");
    server.stop().await;
}

async fn a_5xx_is_retried_with_backoff_then_succeeds(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": [{"status": 500}, {"status": 503}, {"content": "fine"}]}));
    let server = TestServer::start(backend).await;
    let id = server
        .submit(and(call(&llm, user("hi"), json!({})), json!({"max_attempts": 3, "backoff": backoff(200)})))
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["output"]["content"]), (&json!("succeeded"), &json!("fine")), "{job:#}");
    let log = attempts(&job);
    assert_eq!(log.len(), 3, "{job:#}");
    for (n, status) in [(0, "500"), (1, "503")] {
        let error = &log[n]["error"];
        assert_eq!((&error["type"], &error["retryable"]), (&json!("http_status"), &json!(true)), "{job:#}");
        let message = error["message"].as_str().expect("a message");
        assert!(message.contains("/v1/chat/completions answered") && message.contains(status), "{message}");
        assert!(message.contains("stand-in: the script answers"), "the provider's words: {message}");
        assert!(gap_ms(&job, n) >= 200, "the backoff was waited out: {job:#}");
    }
    let retries = events_of(&server, &id, "retry_scheduled").await;
    assert_eq!(retries.iter().map(|e| e["data"]["delay_ms"].clone()).collect::<Vec<_>>(), [json!(200), json!(200)]);
    assert_eq!(llm.calls(), 3);
    server.stop().await;
}

async fn a_429_is_retried_no_sooner_than_its_retry_after(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": [{"status": 429, "retry_after": "1"}, {"content": "ok"}]}));
    let server = TestServer::start(backend).await;
    // A 5 ms backoff: only the provider's Retry-After can make the retry wait a second.
    let id =
        server.submit(and(call(&llm, user("hi"), json!({})), json!({"max_attempts": 2, "backoff": backoff(5)}))).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["output"]["content"]), (&json!("succeeded"), &json!("ok")), "{job:#}");
    let error = &attempts(&job)[0]["error"];
    assert_eq!((&error["type"], &error["retryable"]), (&json!("rate_limited"), &json!(true)), "{job:#}");
    let retry = &events_of(&server, &id, "retry_scheduled").await[0]["data"];
    assert_eq!(retry["delay_ms"], 1000, "Retry-After, not the backoff: {retry}");
    assert!(gap_ms(&job, 0) >= 1000, "retried a second after the failure at the earliest: {job:#}");
    assert!(ts(&attempts(&job)[1]["started_at"]) >= ts(&retry["run_at"]), "{job:#}");
    server.stop().await;
}

async fn a_400_is_dead_at_once(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"status": 400}}));
    let server = TestServer::start(backend).await;
    let id =
        server.submit(and(call(&llm, user("hi"), json!({})), json!({"max_attempts": 5, "backoff": backoff(5)}))).await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(attempts(&job).len(), 1, "not retried despite attempts left: {job:#}");
    assert_eq!((&job["error"]["type"], &job["error"]["retryable"]), (&json!("http_status"), &json!(false)));
    // The failed attempt keeps the answer's start.
    let out = &job["output"];
    assert_eq!(out["status"], 400, "{out}");
    let response: Value = serde_json::from_str(out["response"].as_str().expect("the answer as text")).expect("JSON");
    assert_eq!(response["error"]["type"], "invalid_request_error", "{out}");
    assert!(out["latency_ms"].is_u64(), "{out}");
    assert_eq!(llm.calls(), 1);
    server.stop().await;
}

async fn a_call_past_its_timeout_fails_with_timeout(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [
        {"match": "quick", "turns": [{"content": "in time", "delay_ms": 300}]},
        {"match": "slow", "turns": [{"content": "too late", "delay_ms": 5000}]},
    ]}));
    let server = TestServer::start(backend).await;
    let limit = json!({"timeout_ms": 1000});
    let quick = server.submit(call(&llm, user("quick"), limit.clone())).await;
    let slow = server.submit(and(call(&llm, user("slow"), limit), json!({"max_attempts": 1}))).await;
    let job = server.wait_state(&quick, &["succeeded", "dead"]).await;
    assert_eq!((&job["state"], &job["output"]["content"]), (&json!("succeeded"), &json!("in time")), "{job:#}");
    assert!(job["output"]["latency_ms"].as_u64() >= Some(300), "{job:#}");
    let job = server.wait_state(&slow, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!((&job["error"]["type"], &job["error"]["retryable"]), (&json!("timeout"), &json!(true)), "{job:#}");
    // Cut at the call's timeout, long before the answer would have come.
    let latency = job["output"]["latency_ms"].as_u64().expect("the attempt's record");
    assert!((1000..4000).contains(&latency), "{job:#}");
    assert_eq!(job["output"]["status"], Value::Null, "no answer came");
    server.stop().await;
}

async fn an_unknown_secret_or_field_is_refused_at_submission(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "ok"}}));
    let server = TestServer::start_with(backend, with_key).await;
    let spec = call(&llm, user("hi"), json!({"api_key": "anthropic"}));
    let got = server.post("/v1/jobs", spec.clone()).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.api_key"));
    assert_eq!(got.1["error"]["message"], "unknown secret `anthropic`; configured: openai", "{}", got.1);
    let got = server.post("/v1/jobs/batch", json!({"jobs": [spec.clone()]})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("jobs[0].input.api_key"));
    let def = json!({"name": "w", "nodes": [{"id": "a", "kind": "llm", "input": spec["input"]}]});
    let got = server.post("/v1/workflows", def).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("nodes[0].input.api_key"));
    let got = server.post("/v1/jobs", call(&llm, user("hi"), json!({"temprature": 0.1}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.temprature"));
    let got = server.post("/v1/jobs", call(&llm, json!([{"content": "no role"}]), json!({}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.messages[0].role"));
    assert_eq!(server.count_jobs().await, 0, "nothing was stored");
    let (_, list) = server.get("/v1/workflows").await;
    assert_eq!(list["workflows"], json!([]), "nothing was registered");
    assert_eq!(llm.calls(), 0);
    server.stop().await;
}

async fn a_workflow_acts_on_the_tool_call_of_its_llm_node(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "route", "turns": [
        {"tool_calls": [{"name": "assign", "arguments": {"team": "facilities", "urgent": true}}]}
    ]}]}));
    let server = TestServer::start(backend).await;
    let def = json!({"name": "route", "nodes": [
        {"id": "ask", "kind": "llm", "input": {"base_url": llm.base_url(), "model": "m",
            "messages": [{"role": "system", "content": "route tickets"}, {"role": "user", "content": "{{ input.ticket }}"}]}},
        {"id": "act", "kind": "noop", "depends_on": ["ask"], "input": "{{ nodes.ask.output.tool_calls[0].arguments }}"},
    ]});
    let (status, body) = server.post("/v1/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/v1/runs", json!({"workflow": "route", "input": {"ticket": "smoke"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path = format!("/v1/runs/{}", body["id"].as_str().expect("a run id"));
    let run = poll("the run to end", async || {
        let (_, run) = server.get(&path).await;
        (run["state"] != "running").then_some(run)
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let node = |id: &str| run["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).expect("the node").clone();
    assert_eq!(node("act")["output"], json!({"team": "facilities", "urgent": true}), "{run:#}");
    let ask = server.job(node("ask")["jobs"][0]["id"].as_str().expect("its job")).await;
    assert_eq!(ask["queue"], "llm", "a node without a queue takes its kind's: {ask:#}");
    assert_eq!(llm.requests()[0]["messages"][1]["content"], "smoke", "the template was resolved");
    server.stop().await;
}

async fn a_bound_key_goes_to_its_base_url_and_no_other(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "ok"}}));
    let evil = StandInLlm::start(json!({"default": {"content": "thanks for the key"}}));
    let server = TestServer::start_with(backend, with_bound_key(&[llm.base_url()])).await;
    // The base URL as bound, and with a trailing `/`: the same after normalising.
    for base_url in [llm.base_url(), format!("{}/", llm.base_url())] {
        let spec = json!({"kind": "llm", "input": {"base_url": base_url, "model": "gpt-test",
            "messages": user("hi"), "api_key": "openai"}});
        let id = server.submit(spec).await;
        let job = server.wait_state(&id, &["succeeded", "dead"]).await;
        assert_eq!((&job["state"], &job["output"]["content"]), (&json!("succeeded"), &json!("ok")), "{job:#}");
    }
    let bearer = Some(format!("Bearer {KEY}"));
    assert_eq!(llm.authorizations(), [bearer.clone(), bearer], "the key arrived where it is bound");

    // Another server, the bound one's path with a suffix, another port of the same host,
    // the bound host and port as a user name: each refused on `input.base_url`.
    let port = llm.base_url().rsplit(':').next().and_then(|p| p.split('/').next()).expect("a port").to_string();
    let refused = [
        evil.base_url(),
        format!("{}.evil.example", llm.base_url()),
        format!("{}0", llm.base_url()),
        format!("http://127.0.0.1:{}/v1", port.parse::<u16>().expect("a port") ^ 1),
        format!("http://127.0.0.1:{port}@localhost:{port}/v1"),
        format!("https://127.0.0.1:{port}/v1"),
    ];
    for base_url in &refused {
        let spec = json!({"kind": "llm", "input": {"base_url": base_url, "model": "gpt-test",
            "messages": user("send the key"), "api_key": "openai"}});
        let got = server.post("/v1/jobs", spec.clone()).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.base_url"));
        let message = got.1["error"]["message"].as_str().expect("a message");
        let bound = format!("may not receive the secret `openai`: it goes only to {}", llm.base_url());
        assert!(message.contains(&bound), "{base_url}: {message}");
        assert!(!message.contains(KEY), "{message}");
        let got = server.post("/v1/jobs/batch", json!({"jobs": [spec.clone()]})).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("jobs[0].input.base_url"));
    }
    // A workflow's node and an agent (whose steps are `llm` calls) likewise, at registration.
    let input = json!({"base_url": evil.base_url(), "model": "m", "messages": user("x"), "api_key": "openai"});
    let def = json!({"name": "w", "nodes": [{"id": "a", "kind": "llm", "input": input}]});
    let got = server.post("/v1/workflows", def).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("nodes[0].input.base_url"));
    let agent = json!({"model": "m", "base_url": evil.base_url(), "api_key": "openai"});
    let def = json!({"name": "w", "agents": {"helper": agent},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "helper", "input": "hi"}]});
    let got = server.post("/v1/workflows", def.clone()).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("agents.helper.base_url"));
    let mut summarized = def.clone();
    summarized["agents"]["helper"]["base_url"] = json!(llm.base_url());
    summarized["agents"]["helper"]["context"] = json!({"summarize": {"model": "small", "base_url": evil.base_url()}});
    let got = server.post("/v1/workflows", summarized).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("agents.helper.context.summarize.base_url"));

    assert_eq!(server.count_jobs().await, 2, "nothing refused was stored");
    let (_, list) = server.get("/v1/workflows").await;
    assert_eq!(list["workflows"], json!([]), "nothing was registered");
    assert_eq!(evil.calls(), 0, "the other server received nothing");
    assert_eq!(llm.calls(), 2);
    server.stop().await;
}

async fn a_node_whose_base_url_resolves_elsewhere_fails_without_a_call(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "ok"}}));
    let evil = StandInLlm::start(json!({"default": {"content": "thanks for the key"}}));
    let server = TestServer::start_with(backend, with_bound_key(&[llm.base_url()])).await;
    // A template: checked when the node starts, with the run's input.
    let def = json!({"name": "ask", "nodes": [{"id": "ask", "kind": "llm", "input": {
        "base_url": "{{ input.base_url }}", "model": "m", "messages": user("hi"), "api_key": "openai"}}]});
    let (status, body) = server.post("/v1/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut runs = Vec::new();
    for base_url in [llm.base_url(), evil.base_url()] {
        let (status, body) = server.post("/v1/runs", json!({"workflow": "ask", "input": {"base_url": base_url}})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        runs.push(format!("/v1/runs/{}", body["id"].as_str().expect("a run id")));
    }
    let mut ended = Vec::new();
    for path in &runs {
        ended.push(
            poll("the run to end", async || {
                let (_, run) = server.get(path).await;
                (run["state"] != "running").then_some(run)
            })
            .await,
        );
    }
    assert_eq!(ended[0]["state"], "succeeded", "{:#}", ended[0]);
    assert_eq!(ended[1]["state"], "failed", "{:#}", ended[1]);
    let node = &ended[1]["nodes"][0];
    assert_eq!(node["jobs"], json!([]), "no job was made: {node:#}");
    let message = ended[1]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("input.base_url") && message.contains("may not receive the secret `openai`"), "{message}");
    assert_eq!(evil.calls(), 0, "the other server received nothing");
    assert_eq!(llm.calls(), 1);
    server.stop().await;
}

async fn a_key_bound_since_the_submission_fails_the_attempt_without_a_call(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "ok"}}));
    // Submitted while the key may go anywhere, with no worker to run it yet.
    let server = TestServer::start_with(backend, |cfg| {
        with_key(cfg);
        cfg.workers = 0;
    })
    .await;
    let id = server.submit(and(call(&llm, user("hi"), json!({"api_key": "openai"})), json!({"max_attempts": 3}))).await;
    // The operator binds the key elsewhere; the job runs under the new configuration.
    let server = server
        .restart_with(|cfg| {
            with_bound_key(&["https://api.openai.com/v1".to_string()])(cfg);
            cfg.workers = Config::default().workers;
        })
        .await;
    let job = server.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(attempts(&job).len(), 1, "not retried despite attempts left: {job:#}");
    let error = &job["error"];
    assert_eq!((&error["type"], &error["retryable"]), (&json!("validation"), &json!(false)), "{job:#}");
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.contains("input.base_url")
            && message.contains("may not receive the secret `openai`: it goes only to https://api.openai.com/v1"),
        "{message}"
    );
    assert_eq!(llm.calls(), 0, "nothing was sent");
    server.stop().await;
}

async fn fifty_calls_waiting_a_second_each_run_together_on_the_llm_queue(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "slow", "delay_ms": 1000}}));
    // `default` has two slots: were the calls there, they would take 25 seconds.
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.get_mut("default").expect("default").concurrency = Some(2);
    })
    .await;
    let ids = server.submit_batch((0..50).map(|n| call(&llm, user(&format!("call {n}")), json!({}))).collect()).await;
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(server.wait_state(id, &["succeeded", "dead"]).await);
    }
    assert!(jobs.iter().all(|j| j["state"] == "succeeded" && j["queue"] == "llm"), "{:#}", jobs[0]);
    // Every call started before any ended: all fifty waited at once.
    let last_start = jobs.iter().map(|j| ts(&attempts(j)[0]["started_at"])).max().expect("fifty");
    let first_end = jobs.iter().map(|j| ts(&attempts(j)[0]["finished_at"])).min().expect("fifty");
    assert!(last_start < first_end, "the last call started at {last_start}, after the first ended at {first_end}");
    assert_eq!(llm.calls(), 50);
    server.stop().await;
}
