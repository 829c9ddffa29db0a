//! The planner's agent nodes: starting one, and folding its ended jobs into it (through
//! [`crate::agent`], which decides what the conversation does next).

use super::{
    Checks, NodeRecord, NodeState, Nodes, Plan, RunEventNew, RunJob, RunSnapshot, fail_node, node_error, with_context,
};
use crate::agent::{self, AgentState, Env, Outcome};
use crate::workflow::{self, NodeSpec};
use crate::{ErrorType, JobError};
use serde_json::json;

/// Steps and tokens of the run's agent nodes other than `except`.
fn others(nodes: &Nodes, except: &str) -> (u32, u64) {
    nodes
        .records
        .iter()
        .filter(|(id, _)| id.as_str() != except)
        .filter_map(|(_, r)| r.agent.as_ref())
        .fold((0, 0), |(s, t), a| (s + a.steps, t + a.usage.total_tokens))
}

fn env<'a>(snap: &'a RunSnapshot, node: &'a NodeSpec, checks: &'a Checks, nodes: &Nodes, used: u64) -> Env<'a> {
    let mut budget = snap.budget;
    budget.used_today += used;
    Env {
        workflow: &snap.workflow,
        node,
        run_input: &snap.run.input,
        workspace: &snap.run.workspace,
        user: &snap.run.user,
        now: snap.now,
        limits: checks.limits,
        check: checks.check,
        others: others(nodes, &node.id),
        budget,
    }
}

/// Starts an agent node: its input is the first message.
pub(super) fn start_node(snap: &RunSnapshot, node: &NodeSpec, checks: &Checks, nodes: &mut Nodes, out: &mut Plan) {
    let template = node.input.clone().unwrap_or(serde_json::Value::Null);
    let max = checks.limits.max_input_bytes;
    let input = match with_context(snap, nodes, None, |ctx| workflow::resolve(&template, ctx, max)) {
        Ok(input) => input,
        Err(e) => return fail_node(nodes, out, &node.id, node_error(ErrorType::Validation, e.to_string())),
    };
    let env = env(snap, node, checks, nodes, out.tokens);
    let step = agent::start(&env, &input);
    apply(node, step, nodes, out);
}

/// Folds what an agent node waits for, if it ended, and goes on.
pub(super) fn advance_node(
    snap: &RunSnapshot,
    node: &NodeSpec,
    jobs: &[&RunJob],
    checks: &Checks,
    nodes: &mut Nodes,
    out: &mut Plan,
) {
    let rec = nodes.get(&node.id);
    let Some(state) = rec.agent.as_ref() else {
        // A running agent node always has its state; without one it cannot go on.
        let e = node_error(ErrorType::Internal, "the agent node lost its state");
        return fail_node(nodes, out, &node.id, e);
    };
    let env = env(snap, node, checks, nodes, out.tokens);
    let step = agent::advance(&env, state, jobs);
    if step.changed {
        apply(node, step, nodes, out);
    }
}

/// Writes an advance into the plan: its jobs, events, tokens and the node's record.
fn apply(node: &NodeSpec, step: agent::Advance, nodes: &mut Nodes, out: &mut Plan) {
    out.create.extend(step.create);
    out.events.extend(step.events);
    out.tokens += step.tokens;
    let state: AgentState = step.state;
    let record = |s: NodeState, output, error: Option<JobError>| NodeRecord {
        state: Some(s),
        items: None,
        output,
        error,
        agent: Some(state.clone()),
    };
    match step.outcome {
        Outcome::Running => nodes.set(&node.id, record(NodeState::Running, None, None)),
        Outcome::Succeeded(output) => {
            out.events.push(RunEventNew {
                event_type: "node_succeeded".into(),
                node: Some(node.id.clone()),
                data: json!({"agent": state.agent}),
            });
            nodes.set(&node.id, record(NodeState::Succeeded, Some(output), None));
        }
        Outcome::Failed(error, output) => {
            out.events.push(RunEventNew {
                event_type: "node_failed".into(),
                node: Some(node.id.clone()),
                data: json!({ "error": error }),
            });
            nodes.set(&node.id, record(NodeState::Failed, output, Some(error)));
        }
    }
}
