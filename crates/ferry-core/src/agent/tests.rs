//! The agent loop through the run planner, with the jobs' ends played by hand: what each
//! advance creates, folds and records, and every kill switch at its edge.

use super::*;
use crate::job::{JobState, Limits};
use crate::run::{NodeState, Plan, RunJob, RunSnapshot, RunState, plan};
use crate::{ErrorType, JobError};
use serde_json::{Value, json};

fn agent(extra: Value) -> Value {
    let mut a = json!({"model": "m", "base_url": "http://llm.test/v1", "instructions": "You help.",
        "tools": [{"name": "lookup", "kind": "http", "parameters": {"type": "object", "required": ["q"],
                   "properties": {"q": {"type": "string"}}}, "input": {"url": "http://svc/{{ args.q }}"}}]});
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

fn run_of(def: Value) -> RunSnapshot {
    crate::run::tests::snapshot(def, json!({"question": "where is my order?"}))
}

fn one_agent(extra: Value) -> RunSnapshot {
    run_of(json!({"name": "w", "agents": {"a": agent(extra)},
                  "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "{{ input.question }}"}]}))
}

fn kinds(k: &str, _: &Value) -> Result<(), String> {
    if k == "teleport" { Err("no such kind".into()) } else { Ok(()) }
}

/// Plans once and applies the plan to the snapshot, as the store would.
fn step(s: &mut RunSnapshot) -> Plan {
    let p = plan(s, &Limits::default(), &kinds);
    crate::run::tests::apply(s, &p);
    p
}

/// The one unfinished job of `kind`.
fn open_job<'a>(s: &'a mut RunSnapshot, p: &Plan, kind: &str) -> &'a mut RunJob {
    let id = p.create.iter().find(|c| c.job.kind == kind).unwrap_or_else(|| panic!("no {kind} job in {p:#?}")).job.id;
    s.jobs.iter_mut().find(|j| j.id == id).unwrap()
}

fn reply(content: Option<&str>, calls: Value, tokens: u64) -> Value {
    json!({"content": content, "tool_calls": calls, "finish_reason": "stop",
           "usage": {"prompt_tokens": tokens - 1, "completion_tokens": 1, "total_tokens": tokens}})
}

/// Ends the plan's `llm` job with `out`.
fn answer(s: &mut RunSnapshot, p: &Plan, out: Value) {
    let j = open_job(s, p, "llm");
    j.state = JobState::Succeeded;
    j.output = Some(out);
}

fn node(s: &RunSnapshot) -> &crate::run::NodeRecord {
    &s.nodes["chat"]
}

fn messages(p: &Plan) -> Vec<Value> {
    let llm = p.create.iter().find(|c| c.job.kind == "llm").expect("an llm step");
    llm.job.input["messages"].as_array().unwrap().clone()
}

fn event_types(p: &Plan) -> Vec<&str> {
    p.events.iter().map(|e| e.event_type.as_str()).collect()
}

#[test]
fn a_tool_call_runs_as_a_job_and_its_result_goes_back_to_the_model() {
    let mut s = one_agent(json!({}));
    let p1 = step(&mut s);
    assert_eq!(p1.create.len(), 1);
    let m = messages(&p1);
    assert_eq!((m[0]["role"].as_str(), m[1]["content"].as_str()), (Some("system"), Some("where is my order?")));
    assert_eq!(p1.create[0].job.input["tools"][0]["function"]["name"], "lookup");
    assert!(step(&mut s).is_empty(), "nothing moves while the step runs");

    answer(&mut s, &p1, reply(None, json!([{"id": "c1", "name": "lookup", "arguments": {"q": "42"}}]), 30));
    let p2 = step(&mut s);
    let tool = &p2.create[0];
    assert_eq!((tool.job.kind.as_str(), &tool.job.input), ("http", &json!({"url": "http://svc/42"})));
    assert_eq!(tool.job.max_attempts, DEFAULT_TOOL_RETRIES + 1);
    assert_eq!(p2.tokens, 30);
    assert!(step(&mut s).is_empty(), "nothing moves while the tool runs");

    let j = open_job(&mut s, &p2, "http");
    j.state = JobState::Succeeded;
    j.output = Some(json!({"status": 200, "body": "shipped"}));
    let p3 = step(&mut s);
    let m = messages(&p3);
    let last = m.last().unwrap();
    assert_eq!((last["role"].as_str(), last["tool_call_id"].as_str()), (Some("tool"), Some("c1")));
    assert!(last["content"].as_str().unwrap().contains("shipped"));
    assert_eq!(m[m.len() - 2]["tool_calls"][0]["function"]["arguments"], "{\"q\":\"42\"}");

    answer(&mut s, &p3, reply(Some("It shipped."), json!([]), 50));
    let p4 = step(&mut s);
    assert_eq!(p4.finish.as_ref().map(|f| f.0), Some(RunState::Succeeded));
    let out = node(&s).output.clone().unwrap();
    assert_eq!(out["answer"], "It shipped.");
    assert_eq!((out["steps"].as_u64(), out["usage"]["total_tokens"].as_u64()), (Some(2), Some(80)));
    assert_eq!(node(&s).agent.as_ref().unwrap().messages.len(), 4, "user, call, result, answer");
}

#[test]
fn a_bad_call_goes_back_to_the_model_without_a_job() {
    let mut s = one_agent(json!({}));
    let p1 = step(&mut s);
    let calls = json!([
        {"id": "c1", "name": "lookup", "arguments": {"q": 7}},
        {"id": "c2", "name": "nope", "arguments": {}},
        {"id": "c3", "name": "lookup", "arguments": "{not json"},
    ]);
    answer(&mut s, &p1, reply(None, calls, 10));
    let p2 = step(&mut s);
    assert_eq!(p2.create.len(), 1, "no tool job, straight to the next step: {p2:#?}");
    assert_eq!(event_types(&p2).iter().filter(|t| **t == "tool_refused").count(), 3);
    let m = messages(&p2);
    let results: Vec<&str> = m.iter().filter(|m| m["role"] == "tool").map(|m| m["content"].as_str().unwrap()).collect();
    assert!(results[0].contains("invalid arguments") && results[0].contains("/q"), "{results:?}");
    assert!(results[1].contains("no tool `nope`"));
    assert!(results[2].contains("not a JSON object"));
}

#[test]
fn a_dead_tool_job_is_an_error_for_the_model_not_for_the_run() {
    let mut s = one_agent(json!({}));
    let p1 = step(&mut s);
    answer(&mut s, &p1, reply(None, json!([{"id": "c1", "name": "lookup", "arguments": {"q": "1"}}]), 10));
    let p2 = step(&mut s);
    let j = open_job(&mut s, &p2, "http");
    j.state = JobState::Dead;
    j.error = Some(JobError::new(ErrorType::Timeout, "attempt timed out after 30000 ms"));
    let p3 = step(&mut s);
    let m = messages(&p3);
    assert!(m.last().unwrap()["content"].as_str().unwrap().contains("timeout"));
    assert_eq!(node(&s).state, Some(NodeState::Running));
}

#[test]
fn a_runaway_loop_stops_at_max_steps_with_its_transcript() {
    let mut s = one_agent(json!({"max_steps": 3}));
    let mut p = step(&mut s);
    for _ in 0..3 {
        // Every reply asks for a refused call: a step each, no tool jobs.
        answer(&mut s, &p, reply(None, json!([{"id": "c", "name": "nope", "arguments": {}}]), 5));
        p = step(&mut s);
    }
    let (state, error) = p.finish.clone().expect("the run ends");
    assert_eq!((state, error.unwrap().error_type), (RunState::Failed, ErrorType::StepLimit));
    let rec = node(&s);
    assert_eq!(rec.error.as_ref().unwrap().error_type, ErrorType::StepLimit);
    assert_eq!(rec.agent.as_ref().unwrap().steps, 3, "the partial transcript is kept");
    assert_eq!(rec.agent.as_ref().unwrap().messages.len(), 7);
}

#[test]
fn the_run_step_limit_counts_every_agent_node() {
    let mut s = run_of(json!({"name": "w", "agents": {"a": agent(json!({}))}, "agent_limits": {"max_steps": 2},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "x"},
                  {"id": "other", "kind": "agent", "agent": "a", "input": "y"}]}));
    let p1 = step(&mut s);
    assert_eq!(p1.create.len(), 2, "two steps: the run's limit");
    let refused = json!([{"id": "c", "name": "nope", "arguments": {}}]);
    let first = p1.create[0].job.id;
    let j = s.jobs.iter_mut().find(|j| j.id == first).unwrap();
    j.state = JobState::Succeeded;
    j.output = Some(reply(None, refused, 5));
    let p2 = step(&mut s);
    assert_eq!(p2.finish.unwrap().1.unwrap().error_type, ErrorType::StepLimit);
}

#[test]
fn hand_offs_change_the_agent_and_a_cycle_ends_at_the_depth() {
    let a = agent(json!({"instructions": "Triage.", "handoffs": ["b"]}));
    let b = agent(json!({"instructions": "Billing.", "handoffs": ["a"]}));
    let mut s = run_of(json!({"name": "w", "agents": {"a": a, "b": b},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "x"}]}));
    let mut p = step(&mut s);
    let tools: Vec<&str> = p.create[0].job.input["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, vec!["lookup", "transfer_to_b"]);
    for i in 0..MAX_HANDOFFS {
        let to = if i % 2 == 0 { "b" } else { "a" };
        let call = json!([{"id": format!("h{i}"), "name": format!("transfer_to_{to}"), "arguments": {}}]);
        answer(&mut s, &p, reply(None, call, 5));
        p = step(&mut s);
        assert!(p.finish.is_none(), "hand-off {i} is within the depth");
        assert_eq!(s.nodes["chat"].agent.as_ref().unwrap().agent, to);
        let system = messages(&p)[0]["content"].as_str().unwrap().to_string();
        assert!(system.starts_with(if to == "b" { "Billing" } else { "Triage" }), "{system}");
    }
    answer(&mut s, &p, reply(None, json!([{"id": "last", "name": "transfer_to_a", "arguments": {}}]), 5));
    let p = step(&mut s);
    let error = p.finish.unwrap().1.unwrap();
    assert_eq!(error.error_type, ErrorType::RoutingExhausted);
    assert!(error.message.contains("cycle") && error.message.contains("a -> b -> a"), "{}", error.message);
    assert_eq!(s.nodes["chat"].agent.as_ref().unwrap().chain.len(), MAX_HANDOFFS as usize + 1);
}

#[test]
fn a_final_answer_is_repaired_twice_then_fails_with_the_raw_output() {
    let schema = json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
    for good_on in [Some(2), None] {
        let mut s = one_agent(json!({"output_schema": schema}));
        let mut p = step(&mut s);
        for attempt in 0..=MAX_REPAIRS {
            let text = if Some(attempt) == good_on { "{\"n\": 3}" } else { "{\"n\": \"three\"}" };
            answer(&mut s, &p, reply(Some(text), json!([]), 5));
            p = step(&mut s);
            if p.finish.is_some() {
                break;
            }
            assert!(event_types(&p).contains(&"output_repair"));
            let ask = messages(&p).last().unwrap()["content"].as_str().unwrap().to_string();
            assert!(ask.contains("/n"), "{ask}");
        }
        let rec = node(&s);
        match good_on {
            Some(_) => assert_eq!(rec.output.as_ref().unwrap()["answer"], json!({"n": 3})),
            None => {
                assert_eq!(rec.error.as_ref().unwrap().error_type, ErrorType::SchemaValidation);
                assert_eq!(rec.output.as_ref().unwrap()["raw"], "{\"n\": \"three\"}");
                assert_eq!(rec.agent.as_ref().unwrap().repairs, MAX_REPAIRS);
            }
        }
    }
}

#[test]
fn token_budgets_stop_the_next_step() {
    // The run's budget: the step that crosses it ends, the next does not start.
    let mut s =
        run_of(json!({"name": "w", "agents": {"a": agent(json!({}))}, "agent_limits": {"max_tokens_total": 100},
        "nodes": [{"id": "chat", "kind": "agent", "agent": "a", "input": "x"}]}));
    let p = step(&mut s);
    answer(&mut s, &p, reply(None, json!([{"id": "c", "name": "nope", "arguments": {}}]), 99));
    let p = step(&mut s);
    assert_eq!(p.create.len(), 1, "99 of 100: one more step");
    answer(&mut s, &p, reply(None, json!([{"id": "c", "name": "nope", "arguments": {}}]), 1));
    let p = step(&mut s);
    assert_eq!(p.finish.unwrap().1.unwrap().error_type, ErrorType::TokenBudget);

    // The workspace's day: spent by other runs, this one stops at its next step.
    let mut s = one_agent(json!({}));
    s.budget = Budget { used_today: 0, per_day: Some(1_000), defaults: false };
    let p = step(&mut s);
    s.budget.used_today = 990;
    answer(&mut s, &p, reply(None, json!([{"id": "c", "name": "nope", "arguments": {}}]), 10));
    let p = step(&mut s);
    let error = p.finish.unwrap().1.unwrap();
    assert_eq!(error.error_type, ErrorType::TokenBudget);
    assert!(error.message.contains("tokens_per_day"), "{}", error.message);
}

#[test]
fn context_policy_cuts_and_elides_tool_results() {
    let mut s = one_agent(json!({"context": {"keep_last_tool_results": 1, "max_tool_result_bytes": 10}}));
    let mut p = step(&mut s);
    for i in 0..2 {
        answer(&mut s, &p, reply(None, json!([{"id": format!("c{i}"), "name": "lookup", "arguments": {"q": "x"}}]), 5));
        let p2 = step(&mut s);
        let j = open_job(&mut s, &p2, "http");
        j.state = JobState::Succeeded;
        j.output = Some(json!(format!("result number {i} is long")));
        p = step(&mut s);
    }
    let tools: Vec<String> = messages(&p)
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert!(tools[0].contains("left out"), "{tools:?}");
    assert!(tools[1].starts_with("result num") && tools[1].contains("[cut: 10 of 23 bytes"), "{tools:?}");
}

#[test]
fn a_summary_replaces_the_older_messages() {
    let mut s = one_agent(json!({"context": {"summarize": {"model": "small", "after_messages": 4, "keep_last": 2}}}));
    let mut p = step(&mut s);
    for i in 0..2 {
        answer(&mut s, &p, reply(None, json!([{"id": format!("c{i}"), "name": "nope", "arguments": {}}]), 5));
        p = step(&mut s);
    }
    // user, call, result, call, result: past 4, the summary comes before the next step.
    let summary = p.create.iter().find(|c| c.job.kind == "llm").unwrap();
    assert_eq!(summary.job.input["model"], "small");
    assert!(event_types(&p).contains(&"summary_started"));
    answer(&mut s, &p, reply(Some("they asked twice"), json!([]), 7));
    let p = step(&mut s);
    let m = messages(&p);
    assert!(m[1]["content"].as_str().unwrap().contains("they asked twice"), "{m:#?}");
    assert_eq!(m.len(), 1 + 1 + 2, "system, summary, the two newest");
    let st = node(&s).agent.as_ref().unwrap();
    assert_eq!((st.steps, st.usage.total_tokens), (3, 17), "a summary is no step, but its tokens count");
}

#[test]
fn validation_names_the_agent_field() {
    let check = |def: Value| {
        let spec: crate::workflow::WorkflowSpec = serde_json::from_value(def).unwrap();
        spec.validate(&|k| k != "teleport", &Limits::default()).map(|_| ()).map_err(|e| (e.field, e.message))
    };
    let with = |a: Value, node: Value| json!({"name": "w", "agents": {"a": a}, "nodes": [node]});
    let node = json!({"id": "n", "kind": "agent", "agent": "a"});
    assert!(check(with(agent(json!({})), node.clone())).is_ok());
    let cases = [
        (with(agent(json!({})), json!({"id": "n", "kind": "agent", "agent": "zz"})), "nodes[0].agent"),
        (with(agent(json!({})), json!({"id": "n", "kind": "agent"})), "nodes[0].agent"),
        (with(agent(json!({})), json!({"id": "n", "kind": "noop", "agent": "a"})), "nodes[0].agent"),
        (with(agent(json!({"handoffs": ["zz"]})), node.clone()), "agents.a.handoffs[0]"),
        (with(agent(json!({"output_schema": {"type": 7}})), node.clone()), "agents.a.output_schema"),
        (with(agent(json!({"base_url": "ftp://x"})), node.clone()), "agents.a.base_url"),
        (with(agent(json!({"max_steps": 0})), node.clone()), "agents.a.max_steps"),
        (with(agent(json!({"tools": [{"name": "t", "kind": "teleport"}]})), node.clone()), "agents.a.tools[0].kind"),
        (
            with(agent(json!({"tools": [{"name": "transfer_to_x", "kind": "http"}]})), node.clone()),
            "agents.a.tools[0].name",
        ),
        (
            with(
                agent(json!({"tools": [{"name": "t", "kind": "http", "input": "{{ nodes.x.output }}"}]})),
                node.clone(),
            ),
            "agents.a.tools[0].input",
        ),
        (
            json!({"name": "w", "agents": {"a": agent(json!({}))}, "agent_limits": {"max_handoffs": 6}, "nodes": [node.clone()]}),
            "agent_limits.max_handoffs",
        ),
    ];
    for (def, field) in cases {
        let got = check(def.clone()).expect_err(&def.to_string());
        assert_eq!(got.0, field, "{got:?}");
    }
}

#[test]
fn an_agent_workflow_times_out_in_ten_minutes_by_default() {
    let s = one_agent(json!({}));
    assert_eq!(s.workflow.timeout(), DEFAULT_RUN_TIMEOUT_MS);
    let plain: crate::workflow::WorkflowSpec =
        serde_json::from_value(json!({"name": "w", "nodes": [{"id": "n", "kind": "noop"}]})).unwrap();
    assert_eq!(plain.timeout(), crate::workflow::DEFAULT_TIMEOUT_MS);
}
