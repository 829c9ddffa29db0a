//! Promise: a job of kind `workflow` runs a workflow of its workspace as one step. It
//! starts the run as its job's user and answers the outputs of the run's leaves; the
//! run's failure is the job's, never retried; cancelling the job, or its timeout, cancels
//! the run; every
//! attempt of one job waits for the one run it started; an agent's tool may be such a
//! job; and a workflow that starts itself stops at depth 5.

use crate::harness::{Backend, TestServer, assert_error, attempts, both, poll};
use ferry::stand_in::StandInLlm;
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(
    a_workflow_job_answers_the_outputs_of_the_runs_leaves,
    a_failed_run_fails_the_job_without_retries,
    cancelling_the_job_cancels_its_run,
    a_second_attempt_waits_for_the_run_the_first_started,
    an_agent_tool_runs_a_workflow_and_gets_its_outputs,
    a_workflow_that_starts_itself_stops_at_depth_5,
);

async fn register(srv: &TestServer, def: Value) {
    let (status, body) = srv.post("/v1/workflows", def.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "registering {def} answered {body}");
}

/// The runs of `workflow`, newest first.
async fn runs_of(srv: &TestServer, workflow: &str) -> Vec<Value> {
    let (status, page) = srv.get(&format!("/v1/runs?workflow={workflow}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().expect("items").clone()
}

async fn wait_run(srv: &TestServer, id: &str, states: &[&str]) -> Value {
    poll(&format!("run {id} to be in one of {states:?}"), async || {
        let (_, r) = srv.get(&format!("/v1/runs/{id}")).await;
        states.iter().any(|s| r["state"] == *s).then_some(r)
    })
    .await
}

/// A two-node workflow: `a` passes the run's topic on, `b` (the leaf) answers with it.
fn pair() -> Value {
    json!({"name": "pair", "nodes": [
        {"id": "a", "kind": "noop", "input": {"topic": "{{ input.topic }}"}},
        {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"about": "{{ nodes.a.output.topic }}", "found": 42}}
    ]})
}

async fn a_workflow_job_answers_the_outputs_of_the_runs_leaves(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(&srv, pair()).await;
    let id = srv.submit(json!({"kind": "workflow", "input": {"workflow": "pair", "input": {"topic": "tides"}}})).await;
    let job = srv.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!((job["queue"].as_str(), job["timeout_ms"].as_u64()), (Some("runs"), Some(65 * 60_000)), "its own");
    let out = &job["output"];
    assert_eq!(out["outputs"], json!({"b": {"about": "tides", "found": 42}}), "the leaf's output only: {out:#}");
    assert_eq!(
        (out["workflow"].as_str(), out["version"].as_u64(), out["state"].as_str()),
        (Some("pair"), Some(1), Some("succeeded"))
    );
    let runs = runs_of(&srv, "pair").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], out["run"]);
    assert_eq!(runs[0]["input"], json!({"topic": "tides"}));
    assert_eq!(runs[0]["idempotency_key"], json!(format!("job:{id}")), "the run names the job that started it");

    // The input is checked when the job is submitted, naming the field.
    let bad = |input: Value| json!({"kind": "workflow", "input": input});
    let got = srv.post("/v1/jobs", bad(json!({"workflow": "pair", "inptu": {}}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.inptu"));
    let got = srv.post("/v1/jobs", bad(json!({"input": {}}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.workflow"));
    let got = srv.post("/v1/jobs", bad(json!({"workflow": "pair", "input": [1]}))).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some("input.input"));
    srv.stop().await;
}

async fn a_failed_run_fails_the_job_without_retries(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(&srv, json!({"name": "broken", "nodes": [
        {"id": "a", "kind": "noop"},
        {"id": "b", "kind": "fail", "depends_on": ["a"], "input": {"type": "http_status", "message": "the API said no"}}
    ]}))
    .await;
    let retries = json!({"max_attempts": 3, "backoff": {"initial_ms": 10, "max_ms": 10}});
    let job = |input: Value| {
        let mut spec = json!({"kind": "workflow", "input": input});
        spec.as_object_mut().unwrap().extend(retries.as_object().unwrap().clone());
        spec
    };
    let id = srv.submit(job(json!({"workflow": "broken"}))).await;
    let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
    let run = runs_of(&srv, "broken").await.remove(0);
    assert_eq!(dead["state"], "dead", "{dead:#}");
    assert_eq!(attempts(&dead).len(), 1, "not retried: {dead:#}");
    assert_eq!(dead["error"]["type"], "http_status", "the run's error type: {dead:#}");
    let message = dead["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("run {}: ", run["id"].as_str().unwrap())), "{message}");
    assert!(message.contains("the API said no"), "{message}");
    assert_eq!((dead["output"]["run"].clone(), dead["output"]["state"].clone()), (run["id"].clone(), json!("failed")));

    // No such workflow, no such version: not found, not retried.
    for (input, says) in [
        (json!({"workflow": "nope"}), "`nope` not found"),
        (json!({"workflow": "broken", "version": 4}), "the latest is 1"),
    ] {
        let id = srv.submit(job(input)).await;
        let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
        assert_eq!((dead["error"]["type"].as_str(), attempts(&dead).len()), (Some("not_found"), 1), "{dead:#}");
        assert!(dead["error"]["message"].as_str().unwrap().contains(says), "{dead:#}");
    }

    // A run limit reached is worth retrying (runs end); here it never frees.
    let (status, body) = srv.put("/v1/limits", json!({"per_user": {"runs": 0}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = srv.submit(job(json!({"workflow": "broken"}))).await;
    let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
    assert_eq!((dead["error"]["type"].as_str(), attempts(&dead).len()), (Some("rate_limited"), 3), "{dead:#}");
    assert_eq!(runs_of(&srv, "broken").await.len(), 1, "nothing started");
    srv.stop().await;
}

async fn cancelling_the_job_cancels_its_run(backend: Backend) {
    let srv = TestServer::start(backend).await;
    register(&srv, json!({"name": "slow", "nodes": [{"id": "nap", "kind": "sleep", "input": {"ms": 60000}}]})).await;
    let id = srv.submit(json!({"kind": "workflow", "input": {"workflow": "slow"}})).await;
    let run = poll("the run and its node to start", async || {
        let run = runs_of(&srv, "slow").await.pop()?;
        let (_, r) = srv.get(&format!("/v1/runs/{}", run["id"].as_str()?)).await;
        (r["nodes"][0]["state"] == "running").then_some(r)
    })
    .await;
    let (status, body) = srv.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run = wait_run(&srv, run["id"].as_str().unwrap(), &["cancelled", "succeeded", "failed", "timed_out"]).await;
    assert_eq!(run["state"], "cancelled", "{run:#}");
    let nap = run["nodes"][0]["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(srv.wait_state(&nap, &["cancelled", "succeeded"]).await["state"], "cancelled");
    assert_eq!(srv.job(&id).await["state"], "cancelled");

    // The job's timeout bounds its run: the run is cancelled, the job not retried.
    let spec = json!({"kind": "workflow", "input": {"workflow": "slow"}, "timeout_ms": 300, "max_attempts": 3});
    let id = srv.submit(spec).await;
    let dead = srv.wait_state(&id, &["dead", "succeeded"]).await;
    assert_eq!((dead["error"]["type"].as_str(), attempts(&dead).len()), (Some("timeout"), 1), "{dead:#}");
    let run = runs_of(&srv, "slow").await.remove(0);
    assert_eq!((&dead["output"]["run"], &run["state"]), (&run["id"], &json!("cancelled")), "{dead:#}");
    srv.stop().await;
}

async fn a_second_attempt_waits_for_the_run_the_first_started(backend: Backend) {
    // A short drain: the waiting attempt is handed back, and the next server's attempt
    // (the job's second) finds the run by the job's key.
    let srv = TestServer::start_with(backend, |cfg| cfg.shutdown_grace_ms = 100).await;
    register(
        &srv,
        json!({"name": "slowish", "nodes": [
            {"id": "nap", "kind": "sleep", "input": {"ms": 1500}},
            {"id": "end", "kind": "noop", "depends_on": ["nap"], "input": {"slept": true}}
        ]}),
    )
    .await;
    let id = srv.submit(json!({"kind": "workflow", "input": {"workflow": "slowish"}})).await;
    let first = poll("the run to start", async || runs_of(&srv, "slowish").await.pop()).await;
    let srv = srv.restart_with(|_| {}).await;
    let job = srv.wait_state(&id, &["succeeded", "dead"]).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let started = srv.event_types(&id).await.iter().filter(|t| *t == "started").count();
    assert_eq!(started, 2, "two attempts: {job:#}");
    let runs = runs_of(&srv, "slowish").await;
    assert_eq!(runs.len(), 1, "one run for both attempts: {runs:#?}");
    assert_eq!((&job["output"]["run"], &job["output"]["outputs"]), (&first["id"], &json!({"end": {"slept": true}})));
    srv.stop().await;
}

async fn an_agent_tool_runs_a_workflow_and_gets_its_outputs(backend: Backend) {
    let llm = StandInLlm::start(json!({"conversations": [{"match": "researcher", "turns": [
        {"tool_calls": [{"name": "research", "arguments": {"topic": "tides"}}]},
        {"content": "Tides follow the moon."},
    ]}]}));
    let srv = TestServer::start(backend).await;
    register(&srv, json!({"name": "research", "nodes": [
        {"id": "look", "kind": "noop", "input": {"topic": "{{ input.topic }}"}},
        {"id": "sum", "kind": "noop", "depends_on": ["look"], "input": {"finding": "{{ nodes.look.output.topic }} follow the moon"}}
    ]}))
    .await;
    let tool = json!({"name": "research", "description": "Researches a topic.", "kind": "workflow",
        "parameters": {"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}},
        "input": {"workflow": "research", "input": {"topic": "{{ args.topic }}"}}});
    let agent = json!({"model": "stand-in", "base_url": llm.base_url(), "instructions": "You are the researcher.",
                       "tools": [tool]});
    register(
        &srv,
        json!({"name": "desk", "agents": {"r": agent},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "r", "input": "{{ input.question }}"}]}),
    )
    .await;
    let (status, body) = srv.post("/v1/runs", json!({"workflow": "desk", "input": {"question": "why tides?"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run = wait_run(&srv, body["id"].as_str().unwrap(), &["succeeded", "failed", "cancelled", "timed_out"]).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["nodes"][0]["output"]["answer"], "Tides follow the moon.");
    // The tool's result, as the model got it, is the child run's outputs.
    let sent = llm.requests()[1]["messages"].as_array().unwrap().clone();
    let result = sent.iter().find(|m| m["role"] == "tool").expect("the tool's result");
    let result: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["outputs"], json!({"sum": {"finding": "tides follow the moon"}}), "{result:#}");
    let child = runs_of(&srv, "research").await.remove(0);
    assert_eq!((&result["run"], &child["state"]), (&child["id"], &json!("succeeded")));
    // The tool's job went to the `runs` queue, with the kind's timeout.
    let tool_job = run["nodes"][0]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .find(|j| child["idempotency_key"] == json!(format!("job:{j}")))
        .expect("the tool's job started the run");
    let tool_job = srv.job(&tool_job).await;
    assert_eq!((tool_job["queue"].as_str(), tool_job["timeout_ms"].as_u64()), (Some("runs"), Some(65 * 60_000)));
    llm.stop().await;
    srv.stop().await;
}

async fn a_workflow_that_starts_itself_stops_at_depth_5(backend: Backend) {
    let srv = TestServer::start_with(backend, |cfg| {
        cfg.default_limits.per_user.runs = Some(50);
        cfg.default_limits.per_workspace.runs = Some(50);
    })
    .await;
    register(
        &srv,
        json!({"name": "again", "nodes": [{"id": "deeper", "kind": "workflow", "input": {"workflow": "again"}}]}),
    )
    .await;
    let (status, body) = srv.post("/v1/runs", json!({"workflow": "again"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let top = wait_run(&srv, body["id"].as_str().unwrap(), &["succeeded", "failed", "cancelled", "timed_out"]).await;
    assert_eq!((top["state"].as_str(), top["error"]["type"].as_str()), (Some("failed"), Some("validation")), "{top:#}");
    let message = top["error"]["message"].as_str().unwrap();
    assert!(message.contains("nested 6 deep") && message.contains("at most 5"), "{message}");
    // The run started through the API, and five nested in it, each failed by the next.
    let runs = runs_of(&srv, "again").await;
    assert_eq!(runs.len(), 6, "{runs:#?}");
    assert!(runs.iter().all(|r| r["state"] == "failed"), "{runs:#?}");
    srv.stop().await;
}
