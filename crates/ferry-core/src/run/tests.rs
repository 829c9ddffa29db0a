use super::*;
use crate::time::ms;

fn workflow(def: Value) -> WorkflowSpec {
    serde_json::from_value(def).unwrap()
}

/// A running run of the workflow `def` with `input`, nothing of it started yet.
pub(crate) fn snapshot(def: Value, input: Value) -> RunSnapshot {
    RunSnapshot {
        run: RunRecord {
            id: RunId::now_v7(),
            workspace: "default".into(),
            user: "u".into(),
            workflow: "w".into(),
            version: 1,
            state: RunState::Running,
            input,
            deadline_at: ms(60_000),
            cancel_requested: false,
        },
        workflow: workflow(def),
        nodes: BTreeMap::new(),
        jobs: Vec::new(),
        now: ms(1_000),
        budget: Default::default(),
    }
}

fn ok(_: &str, _: &Value) -> Result<(), String> {
    Ok(())
}

fn step(snap: &mut RunSnapshot) -> Plan {
    let plan = plan(snap, &Limits::default(), &ok);
    apply(snap, &plan);
    plan
}

/// Applies `plan` to the snapshot as the store would: node records, new jobs (queued),
/// the run's end, the tokens added to the workspace's day.
pub(crate) fn apply(snap: &mut RunSnapshot, plan: &Plan) {
    for (id, rec) in &plan.nodes {
        snap.nodes.insert(id.clone(), rec.clone());
    }
    for c in &plan.create {
        snap.jobs.push(RunJob {
            id: c.job.id,
            node: c.node.clone(),
            item: c.item,
            state: JobState::Queued,
            output: None,
            error: None,
        });
    }
    if let Some((state, _)) = &plan.finish {
        snap.run.state = *state;
    }
    snap.budget.used_today += plan.tokens;
}

/// Ends every unfinished job of `node`: succeeded with its input as output (as `noop`).
fn finish(snap: &mut RunSnapshot, plan: &Plan, node: &str, state: JobState) {
    for c in plan.create.iter().filter(|c| c.node == node) {
        let j = snap.jobs.iter_mut().find(|j| j.id == c.job.id).unwrap();
        j.state = state;
        j.output = Some(c.job.input.clone());
        if state == JobState::Dead {
            j.error = Some(JobError::new(ErrorType::ExitStatus, "boom"));
        }
    }
}

fn created(plan: &Plan) -> Vec<&str> {
    plan.create.iter().map(|c| c.node.as_str()).collect()
}

#[test]
fn a_chain_passes_outputs_and_succeeds() {
    let mut s = snapshot(
        json!({"name": "w", "nodes": [
            {"id": "a", "kind": "noop", "input": {"v": "{{ input.v }}"}},
            {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"got": "{{ nodes.a.output.v }}"}}
        ]}),
        json!({"v": 7}),
    );
    let p1 = step(&mut s);
    assert_eq!(created(&p1), vec!["a"]);
    assert_eq!(p1.create[0].job.input, json!({"v": 7}));
    assert!(step(&mut s).is_empty(), "nothing moves while a runs");
    finish(&mut s, &p1, "a", JobState::Succeeded);
    let p2 = step(&mut s);
    assert_eq!(created(&p2), vec!["b"]);
    assert_eq!(p2.create[0].job.input, json!({"got": 7}));
    finish(&mut s, &p2, "b", JobState::Succeeded);
    let p3 = step(&mut s);
    assert_eq!(p3.finish, Some((RunState::Succeeded, None)));
    assert_eq!(p3.events.last().unwrap().event_type, "run_finished");
}

#[test]
fn for_each_tops_up_to_its_concurrency_and_collects_in_order() {
    let mut s = snapshot(
        json!({"name": "w", "nodes": [
            {"id": "e", "kind": "noop", "for_each": "{{ input.items }}", "concurrency": 2, "input": "{{ item }}"}
        ]}),
        json!({"items": ["x", "y", "z"]}),
    );
    let p1 = step(&mut s);
    assert_eq!(p1.create.iter().map(|c| c.item).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
    // The second element ends first: one more starts, never more than two at once.
    let second = p1.create[1].job.id;
    let j = s.jobs.iter_mut().find(|j| j.id == second).unwrap();
    j.state = JobState::Succeeded;
    j.output = Some(json!("Y"));
    let p2 = step(&mut s);
    assert_eq!(p2.create.iter().map(|c| c.item).collect::<Vec<_>>(), vec![Some(2)]);
    assert!(step(&mut s).create.is_empty());
    for j in &mut s.jobs {
        if j.state != JobState::Succeeded {
            j.state = JobState::Succeeded;
            j.output = Some(json!(format!("out{}", j.item.unwrap())));
        }
    }
    let p3 = step(&mut s);
    assert_eq!(s.nodes["e"].output, Some(json!(["out0", "Y", "out2"])));
    assert_eq!(p3.finish.map(|f| f.0), Some(RunState::Succeeded));
}

#[test]
fn an_empty_for_each_succeeds_at_once() {
    let mut s = snapshot(
        json!({"name": "w", "nodes": [
            {"id": "e", "kind": "noop", "for_each": "{{ input.items }}"},
            {"id": "after", "kind": "noop", "depends_on": ["e"], "input": "{{ nodes.e.output }}"}
        ]}),
        json!({"items": []}),
    );
    let p = step(&mut s);
    assert_eq!(created(&p), vec!["after"]);
    assert_eq!(p.create[0].job.input, json!([]));
}

fn three(policy: &str) -> RunSnapshot {
    snapshot(
        json!({"name": "w", "failure_policy": policy, "nodes": [
            {"id": "bad", "kind": "noop"},
            {"id": "other", "kind": "noop"},
            {"id": "child", "kind": "noop", "depends_on": ["bad"]}
        ]}),
        json!(null),
    )
}

#[test]
fn fail_fast_cancels_running_nodes_and_skips_waiting_ones() {
    let mut s = three("fail_fast");
    let p1 = step(&mut s);
    finish(&mut s, &p1, "bad", JobState::Dead);
    let p2 = step(&mut s);
    let other = p1.create.iter().find(|c| c.node == "other").unwrap().job.id;
    assert_eq!(p2.cancel, vec![other]);
    assert_eq!(s.nodes["other"].state, Some(NodeState::Cancelled));
    assert_eq!(s.nodes["child"].state, Some(NodeState::Skipped));
    let (state, error) = p2.finish.unwrap();
    assert_eq!(state, RunState::Failed);
    assert_eq!(error.unwrap().error_type, ErrorType::ExitStatus);
}

#[test]
fn continue_lets_independent_nodes_finish() {
    let mut s = three("continue");
    let p1 = step(&mut s);
    finish(&mut s, &p1, "bad", JobState::Dead);
    let p2 = step(&mut s);
    assert!(p2.cancel.is_empty() && p2.finish.is_none(), "{p2:?}");
    assert_eq!(s.nodes["child"].state, Some(NodeState::Skipped));
    finish(&mut s, &p1, "other", JobState::Succeeded);
    let p3 = step(&mut s);
    assert_eq!(s.nodes["other"].state, Some(NodeState::Succeeded));
    assert_eq!(p3.finish.map(|f| f.0), Some(RunState::Failed));
}

#[test]
fn the_deadline_and_a_cancel_stop_everything() {
    for (deadline, cancel, want) in [(true, false, RunState::TimedOut), (false, true, RunState::Cancelled)] {
        let mut s = three("fail_fast");
        let p1 = step(&mut s);
        if deadline {
            s.now = s.run.deadline_at;
        }
        s.run.cancel_requested = cancel;
        let p2 = step(&mut s);
        assert_eq!(p2.cancel.len(), p1.create.len());
        assert_eq!(p2.finish.map(|f| f.0), Some(want));
        assert_eq!(s.nodes["child"].state, Some(NodeState::Skipped));
        assert!(step(&mut s).is_empty(), "an ended run plans nothing");
    }
}

#[test]
fn an_unresolvable_reference_or_refused_input_fails_the_node() {
    let mut s = snapshot(
        json!({"name": "w", "nodes": [{"id": "a", "kind": "noop", "input": "{{ input.missing }}"}]}),
        json!({}),
    );
    let p = step(&mut s);
    assert!(p.create.is_empty());
    assert_eq!(s.nodes["a"].state, Some(NodeState::Failed));
    assert_eq!(s.nodes["a"].error.as_ref().unwrap().error_type, ErrorType::Validation);
    assert_eq!(p.finish.map(|f| f.0), Some(RunState::Failed));

    let s = snapshot(json!({"name": "w", "nodes": [{"id": "a", "kind": "noop"}]}), json!({}));
    let refuse = |_: &str, _: &Value| Err("input.ms is required".to_string());
    let p = plan(&s, &Limits::default(), &refuse);
    assert!(p.create.is_empty());
    assert!(p.events.iter().any(|e| e.event_type == "node_failed"));
}
