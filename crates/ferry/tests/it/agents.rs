//! Agent runs through the API against the stand-in LLM server (real HTTP on loopback,
//! replies scripted per conversation and turn), on both backends: one test per failure
//! mode of the checklist, each asserting what the engine enforced (the error type, the
//! transcript kept, the attempts made, what the provider was sent), never a timing.

use crate::harness::{Backend, TestServer, assert_error, both, poll};
use crate::workflows::{Sse, read_sse};
use axum::routing::get;
use ferry::stand_in::StandInLlm;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

both!(
    a_tool_call_runs_as_a_job_and_the_answer_ends_the_run,
    a_tool_that_times_out_is_retried_twice_then_the_model_gets_the_error,
    a_schema_failure_is_repaired_on_the_second_attempt,
    a_schema_failure_after_two_repairs_fails_the_run_and_keeps_the_raw_output,
    provider_5xx_is_retried_with_backoff,
    provider_429_waits_for_its_retry_after,
    a_runaway_loop_ends_with_step_limit,
    the_run_token_budget_ends_the_run,
    the_workspace_token_budget_stops_running_agents_and_refuses_new_runs,
    a_hand_off_cycle_ends_with_routing_exhausted_at_depth_5,
    a_cancel_stops_the_llm_call_and_ends_the_run_cancelled,
    the_run_timeout_ends_an_agent_run,
    the_event_stream_resumes_after_a_disconnect_without_a_gap,
    an_unknown_version_is_400_and_starts_nothing,
    an_idempotency_key_returns_the_same_run,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_run_on_postgres_loses_nothing() {
    if crate::harness::postgres_available().await {
        database_outage_mid_run(Backend::Postgres).await;
    }
}

/// A tool target: `GET /lookup?q=…` answers `{"order": …, "status": "shipped"}`, counting.
struct Target {
    base: String,
    hits: Arc<AtomicUsize>,
}

impl Target {
    async fn start() -> Target {
        let hits = Arc::new(AtomicUsize::new(0));
        let n = hits.clone();
        let app = axum::Router::new().route(
            "/lookup",
            get(move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                n.fetch_add(1, Ordering::SeqCst);
                let order = q.get("q").cloned().unwrap_or_default();
                async move { axum::Json(json!({"order": order, "status": "shipped"})) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Target { base, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The `lookup` tool, an `http` GET of the target.
fn lookup(target: &Target) -> Value {
    json!({"name": "lookup", "description": "Looks an order up.", "kind": "http",
           "parameters": {"type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}},
           "input": {"url": format!("{}/lookup?q={{{{ args.q }}}}", target.base)},
           "backoff": {"initial_ms": 10, "max_ms": 10}})
}

/// An agent of the stand-in, with `extra` fields.
fn agent(llm: &StandInLlm, instructions: &str, extra: Value) -> Value {
    let mut a = json!({"model": "stand-in", "base_url": llm.base_url(), "instructions": instructions,
                       "llm": {"backoff": {"initial_ms": 20, "max_ms": 20}}});
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

/// A workflow `name` of one agent node `chat` with `agents` (the first named starts).
fn workflow(name: &str, first: &str, agents: Value, extra: Value) -> Value {
    let mut w = json!({"name": name, "agents": agents,
                       "nodes": [{"id": "chat", "kind": "agent", "agent": first, "input": "{{ input.question }}"}]});
    for (k, v) in extra.as_object().unwrap() {
        w[k] = v.clone();
    }
    w
}

async fn register(srv: &TestServer, def: Value) {
    let (status, body) = srv.post("/v1/workflows", def.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "registering {def} answered {body}");
}

async fn start(srv: &TestServer, workflow: &str, question: &str) -> String {
    let (status, body) = srv.post("/v1/runs", json!({"workflow": workflow, "input": {"question": question}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn run(srv: &TestServer, id: &str) -> Value {
    srv.get(&format!("/v1/runs/{id}")).await.1
}

/// Polls the run until it ended (an answer that is no run, as while the database is
/// away, is polled again).
async fn wait_run(srv: &TestServer, id: &str) -> Value {
    poll("the run's end", async || {
        let r = run(srv, id).await;
        matches!(r["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "timed_out")).then_some(r)
    })
    .await
}

async fn run_events(srv: &TestServer, id: &str) -> Vec<Value> {
    srv.get(&format!("/v1/runs/{id}/events")).await.1["events"].as_array().cloned().unwrap_or_default()
}

fn chat(r: &Value) -> &Value {
    r["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "chat").expect("the chat node")
}

/// The jobs of the chat node with the given kind, by their ids, as the API shows them.
async fn jobs_of_kind(srv: &TestServer, r: &Value, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for j in chat(r)["jobs"].as_array().unwrap() {
        let job = srv.job(j["id"].as_str().unwrap()).await;
        if job["kind"] == kind {
            out.push(job);
        }
    }
    out
}

/// A reply that calls `name` with `args`.
fn call(name: &str, args: Value) -> Value {
    json!({"tool_calls": [{"name": name, "arguments": args}]})
}

async fn a_tool_call_runs_as_a_job_and_the_answer_ends_the_run(backend: Backend) {
    let target = Target::start().await;
    let llm = StandInLlm::start(json!({"conversations": [{"match": "order desk", "turns": [
        call("lookup", json!({"q": "A-7"})),
        {"content": "Order A-7 has shipped.", "usage": {"prompt_tokens": 40, "completion_tokens": 8}},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You are the order desk.", json!({"tools": [lookup(&target)]}));
    register(&srv, workflow("desk", "desk", json!({"desk": a}), json!({}))).await;
    let id = start(&srv, "desk", "where is A-7?").await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    let node = chat(&r);
    assert_eq!(node["output"]["answer"], "Order A-7 has shipped.");
    assert_eq!((node["output"]["steps"].as_u64(), node["agent"]["steps"].as_u64()), (Some(2), Some(2)));
    assert_eq!(target.hits(), 1, "the tool ran once, as an http job");
    // The provider got the tool's result in the second step, answering the call.
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let sent = requests[1]["messages"].as_array().unwrap();
    let result = sent.iter().find(|m| m["role"] == "tool").expect("the tool's result");
    assert!(result["content"].as_str().unwrap().contains("shipped"), "{result}");
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "lookup");
    // Every step, call and result is on the run's stream; the tokens are counted.
    let types: Vec<String> =
        run_events(&srv, &id).await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    for t in ["agent_step", "agent_reply", "tool_call", "tool_result", "agent_finished", "run_finished"] {
        assert!(types.iter().any(|x| x == t), "no {t} in {types:?}");
    }
    let used = node["output"]["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used >= 48, "{used}");
    let (_, limits) = srv.get("/v1/limits").await;
    assert_eq!(limits["tokens_today"].as_u64(), Some(used), "{limits}");
    srv.stop().await;
}

async fn a_tool_that_times_out_is_retried_twice_then_the_model_gets_the_error(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "patient", "turns": [
        call("slow", json!({})),
        {"content": "The lookup timed out; try later."},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let slow = json!({"name": "slow", "kind": "sleep", "input": {"ms": 5000}, "timeout_ms": 100,
                      "backoff": {"initial_ms": 10, "max_ms": 10}});
    let a = agent(&llm, "You are patient.", json!({"tools": [slow]}));
    register(&srv, workflow("patient", "p", json!({"p": a}), json!({}))).await;
    let id = start(&srv, "patient", "look it up").await;
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "the tool's failure is the model's to handle: {r:#}");
    let sleeps = jobs_of_kind(&srv, &r, "sleep").await;
    assert_eq!(sleeps.len(), 1);
    let attempts = sleeps[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "two retries: {attempts:#?}");
    assert!(attempts.iter().all(|a| a["error"]["type"] == "timeout"));
    let second = &llm.requests()[1]["messages"];
    let result = second.as_array().unwrap().iter().find(|m| m["role"] == "tool").unwrap();
    assert!(result["content"].as_str().unwrap().contains("timeout"), "{result}");
    srv.stop().await;
}

fn schema() -> Value {
    json!({"type": "object", "required": ["priority"], "properties": {"priority": {"enum": ["low", "high"]}}})
}

async fn a_schema_failure_is_repaired_on_the_second_attempt(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "strict", "turns": [
        {"content": "{\"priority\": \"urgent\"}"},
        {"content": "{\"priority\": \"high\"}"},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You are strict.", json!({"output_schema": schema()}));
    register(&srv, workflow("strict", "s", json!({"s": a}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "strict", "rate this").await).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(chat(&r)["output"]["answer"], json!({"priority": "high"}));
    assert_eq!(chat(&r)["agent"]["repairs"], 1);
    let repair = llm.requests()[1]["messages"].as_array().unwrap().last().unwrap().clone();
    assert!(repair["content"].as_str().unwrap().contains("/priority"), "the errors went back: {repair}");
    srv.stop().await;
}

async fn a_schema_failure_after_two_repairs_fails_the_run_and_keeps_the_raw_output(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "stubborn", "turns": [
        {"content": "not json at all"},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You are stubborn.", json!({"output_schema": schema()}));
    register(&srv, workflow("stubborn", "s", json!({"s": a}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "stubborn", "rate this").await).await;
    assert_eq!(
        (r["state"].as_str(), r["error"]["type"].as_str()),
        (Some("failed"), Some("schema_validation")),
        "{r:#}"
    );
    assert_eq!(chat(&r)["output"]["raw"], "not json at all");
    assert_eq!(llm.calls(), 3, "the answer and two repairs");
    srv.stop().await;
}

async fn provider_5xx_is_retried_with_backoff(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "flaky", "turns": [
        [{"status": 503}, {"status": 500}, {"content": "done"}],
    ]}]}));
    let srv = TestServer::start(backend).await;
    register(&srv, workflow("flaky", "f", json!({"f": agent(&llm, "You are flaky.", json!({}))}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "flaky", "go").await).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    let step = &jobs_of_kind(&srv, &r, "llm").await[0];
    let attempts = step["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert_eq!(attempts[0]["error"]["type"], "http_status");
    assert_eq!(attempts[0]["error"]["retryable"], true);
    srv.stop().await;
}

async fn provider_429_waits_for_its_retry_after(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "busy", "turns": [
        [{"status": 429, "retry_after": "1"}, {"content": "done"}],
    ]}]}));
    let srv = TestServer::start(backend).await;
    register(&srv, workflow("busy", "b", json!({"b": agent(&llm, "You are busy.", json!({}))}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "busy", "go").await).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    let step = &jobs_of_kind(&srv, &r, "llm").await[0];
    let attempts = step["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error"]["type"], "rate_limited");
    let waited = crate::harness::ts(&attempts[1]["started_at"]) - crate::harness::ts(&attempts[0]["finished_at"]);
    assert!(waited >= chrono::TimeDelta::seconds(1), "the retry came {waited} after the 429, not after Retry-After");
    srv.stop().await;
}

async fn a_runaway_loop_ends_with_step_limit(backend: Backend) {
    let target = Target::start().await;
    // Every turn asks for the tool again: it never answers.
    let llm =
        StandInLlm::start(json!({"conversations": [{"match": "loops", "turns": [call("lookup", json!({"q": "1"}))]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You loops.", json!({"tools": [lookup(&target)], "max_steps": 4}));
    register(&srv, workflow("loop", "l", json!({"l": a}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "loop", "go").await).await;
    assert_eq!((r["state"].as_str(), r["error"]["type"].as_str()), (Some("failed"), Some("step_limit")), "{r:#}");
    assert_eq!(llm.calls(), 4);
    assert_eq!(target.hits(), 4, "each step's call ran");
    let transcript = chat(&r)["agent"]["transcript"].as_array().unwrap().len();
    assert_eq!(transcript, 1 + 4 * 2, "the partial transcript is kept");
    srv.stop().await;
}

async fn the_run_token_budget_ends_the_run(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "spender", "turns": [
        {"tool_calls": [{"name": "missing", "arguments": {}}], "usage": {"prompt_tokens": 60, "completion_tokens": 0}},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You are a spender.", json!({}));
    register(&srv, workflow("spend", "s", json!({"s": a}), json!({"agent_limits": {"max_tokens_total": 100}}))).await;
    let r = wait_run(&srv, &start(&srv, "spend", "go").await).await;
    assert_eq!(r["error"]["type"], "token_budget", "{r:#}");
    assert_eq!(llm.calls(), 2, "60 tokens, then 120: no third step");
    srv.stop().await;
}

async fn the_workspace_token_budget_stops_running_agents_and_refuses_new_runs(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "daily", "turns": [
        {"tool_calls": [{"name": "missing", "arguments": {}}], "usage": {"prompt_tokens": 300, "completion_tokens": 0}},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let (status, limits) = srv.put("/v1/limits", json!({"tokens_per_day": 500})).await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    register(&srv, workflow("daily", "d", json!({"d": agent(&llm, "You are daily.", json!({}))}), json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "daily", "go").await).await;
    assert_eq!(r["error"]["type"], "token_budget", "{r:#}");
    assert!(r["error"]["message"].as_str().unwrap().contains("tokens_per_day"), "{r:#}");
    assert_eq!(llm.calls(), 2, "300, then 600 of 500: stopped at the next step");
    let (_, limits) = srv.get("/v1/limits").await;
    assert_eq!(limits["tokens_today"], 600);
    let refused = srv.post("/v1/runs", json!({"workflow": "daily", "input": {"question": "again"}})).await;
    assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, "token_budget", None);
    let (_, runs) = srv.get("/v1/runs?workflow=daily").await;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1, "the refused run was not stored");
    srv.stop().await;
}

async fn a_hand_off_cycle_ends_with_routing_exhausted_at_depth_5(backend: Backend) {
    // Triage hands to billing, billing back to triage, for ever.
    let llm = StandInLlm::start(json!({"conversations": [
        {"match": "Triage", "turns": [call("transfer_to_billing", json!({}))]},
    ], "default": call("transfer_to_triage", json!({}))}));
    let srv = TestServer::start(backend).await;
    let agents = json!({
        "triage": agent(&llm, "Triage: route the customer.", json!({"handoffs": ["billing"]})),
        "billing": agent(&llm, "Billing: settle invoices.", json!({"handoffs": ["triage"]})),
    });
    register(&srv, workflow("cycle", "triage", agents, json!({}))).await;
    let r = wait_run(&srv, &start(&srv, "cycle", "help").await).await;
    assert_eq!(r["error"]["type"], "routing_exhausted", "{r:#}");
    let chain = chat(&r)["agent"]["chain"].as_array().unwrap().clone();
    assert_eq!(chain.len(), 6, "five hand-offs, the sixth refused: {chain:?}");
    assert_eq!(chain[0], "triage");
    assert_eq!(chain[1], "billing");
    srv.stop().await;
}

async fn a_cancel_stops_the_llm_call_and_ends_the_run_cancelled(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "slowpoke", "turns": [
        {"content": "finally", "delay_ms": 60000},
    ]}]}));
    let srv = TestServer::start(backend).await;
    register(&srv, workflow("slow", "s", json!({"s": agent(&llm, "You are a slowpoke.", json!({}))}), json!({}))).await;
    let id = start(&srv, "slow", "go").await;
    poll("the LLM call under way", async || (llm.calls() == 1).then_some(())).await;
    let (status, body) = srv.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "cancelled");
    let step = &jobs_of_kind(&srv, &r, "llm").await[0];
    let step = srv.wait_state(step["id"].as_str().unwrap(), &["cancelled"]).await;
    assert_eq!(step["state"], "cancelled", "the in-flight call was stopped: {step:#}");
    assert_eq!(chat(&r)["agent"]["transcript"].as_array().unwrap().len(), 1, "the transcript is kept");
    srv.stop().await;
}

async fn the_run_timeout_ends_an_agent_run(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "dawdler", "turns": [
        {"content": "late", "delay_ms": 60000},
    ]}]}));
    let srv = TestServer::start(backend).await;
    let a = agent(&llm, "You are a dawdler.", json!({}));
    register(&srv, workflow("late", "d", json!({"d": a}), json!({"timeout_ms": 300}))).await;
    let r = wait_run(&srv, &start(&srv, "late", "go").await).await;
    assert_eq!(r["state"], "timed_out", "{r:#}");
    assert_eq!(chat(&r)["state"], "timed_out");
    srv.stop().await;
}

async fn the_event_stream_resumes_after_a_disconnect_without_a_gap(backend: Backend) {
    let target = Target::start().await;
    let llm = StandInLlm::start(json!({"conversations": [{"match": "streamer", "turns": [
        call("lookup", json!({"q": "1"})), call("lookup", json!({"q": "2"})), {"content": "done"},
    ]}]}));
    let srv = TestServer::start(backend).await;
    register(
        &srv,
        workflow(
            "stream",
            "s",
            json!({"s": agent(&llm, "You are a streamer.", json!({"tools": [lookup(&target)]}))}),
            json!({}),
        ),
    )
    .await;
    let id = start(&srv, "stream", "go").await;
    // A client reads the stream up to the first tool result, then drops the connection.
    let url = format!("{}/v1/runs/{id}/events", srv.url());
    let open = |last: Option<i64>| {
        let mut req = srv.client().get(&url).header("accept", "text/event-stream");
        if let Some(last) = last {
            req = req.header("last-event-id", last.to_string());
        }
        req.send()
    };
    let events = |got: Vec<Sse>| -> Vec<(i64, String)> {
        got.into_iter().filter_map(|e| if let Sse::Event(i, t) = e { Some((i, t)) } else { None }).collect()
    };
    let (first, _) = read_sse(open(None).await.unwrap(), |got| {
        got.iter().any(|e| matches!(e, Sse::Event(_, t) if t == "tool_result"))
    })
    .await;
    let first = events(first);
    let last = first.last().unwrap().0;
    wait_run(&srv, &id).await;
    // It comes back with Last-Event-ID: the rest, none twice, none missing.
    let (rest, closed) = read_sse(open(Some(last)).await.unwrap(), |_| false).await;
    assert!(closed, "the stream ends after run_finished");
    let mut streamed = first;
    streamed.extend(events(rest));
    let all: Vec<(i64, String)> = run_events(&srv, &id)
        .await
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e["type"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(streamed, all, "the two reads together are the whole log, in order");
    assert!(all.iter().filter(|e| e.1 == "tool_result").count() == 2);
    srv.stop().await;
}

async fn an_unknown_version_is_400_and_starts_nothing(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "hi"}}));
    let srv = TestServer::start(backend).await;
    register(&srv, workflow("versioned", "v", json!({"v": agent(&llm, "You are versioned.", json!({}))}), json!({})))
        .await;
    let got = srv.post("/v1/runs", json!({"workflow": "versioned", "version": 7, "input": {"question": "x"}})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "unknown_version", Some("version"));
    assert!(got.1["error"]["message"].as_str().unwrap().contains('7'), "{}", got.1);
    let (_, runs) = srv.get("/v1/runs?workflow=versioned").await;
    assert!(runs["items"].as_array().unwrap().is_empty());
    assert_eq!(llm.calls(), 0);
    srv.stop().await;
}

async fn an_idempotency_key_returns_the_same_run(backend: Backend) {
    let llm = StandInLlm::start(json!({"default": {"content": "hi"}}));
    let srv = TestServer::start(backend).await;
    register(&srv, workflow("once", "o", json!({"o": agent(&llm, "You are once.", json!({}))}), json!({}))).await;
    let body = json!({"workflow": "once", "input": {"question": "x"}, "idempotency_key": "ticket-9"});
    let (s1, first) = srv.post("/v1/runs", body.clone()).await;
    let (s2, again) = srv.post("/v1/runs", body).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first["id"], again["id"]);
    wait_run(&srv, first["id"].as_str().unwrap()).await;
    assert_eq!(llm.calls(), 1, "one run, one step");
    srv.stop().await;
}

/// PostgreSQL goes away under a running agent (every connection of the test's database cut,
/// new ones refused) while its tool runs; when it is back, the run goes on from its last
/// step: the tool ran once, the model was asked once per step.
async fn database_outage_mid_run(backend: Backend) {
    let target = Target::start().await;
    let llm = StandInLlm::start(json!({"conversations": [{"match": "outage", "turns": [
        call("slow_lookup", json!({})), {"content": "it came back"},
    ]}]}));
    let node = format!("outage-{}", uuid::Uuid::now_v7().simple());
    let srv = TestServer::start_with(backend, |cfg| cfg.node = node).await;
    let slow = json!({"name": "slow_lookup", "kind": "sleep", "input": {"ms": 1500}});
    let a = agent(&llm, "You survive an outage.", json!({"tools": [slow, lookup(&target)]}));
    register(&srv, workflow("outage", "o", json!({"o": a}), json!({}))).await;
    let id = start(&srv, "outage", "go").await;
    poll("the tool under way", async || {
        run_events(&srv, &id).await.iter().any(|e| e["type"] == "tool_call").then_some(())
    })
    .await;
    assert!(crate::harness::cut_database(&srv).await > 0, "the server's connections were cut");
    let r = wait_run(&srv, &id).await;
    assert_eq!(r["state"], "succeeded", "{r:#}");
    assert_eq!(llm.calls(), 2, "one call per step, none repeated");
    assert_eq!(jobs_of_kind(&srv, &r, "sleep").await.len(), 1, "the tool job was not made twice");
    srv.stop().await;
}
