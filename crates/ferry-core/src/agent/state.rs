//! What an agent node remembers between advances: its conversation, its counters, and the
//! jobs it waits for. Stored whole in the node's record (`run_nodes.agent`), written in
//! the transaction that creates the jobs it names.

use crate::job::JobId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Tokens as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Reads an `llm` job's `usage` (missing numbers are 0; a missing total is the sum).
    pub fn of(v: &Value) -> Usage {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (prompt, completion) = (n("prompt_tokens"), n("completion_tokens"));
        let total = v.get("total_tokens").and_then(Value::as_u64).unwrap_or(prompt + completion);
        Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total }
    }

    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// One tool call of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The provider's call id, which the result answers.
    pub id: String,
    pub name: String,
    /// The job running it; `None` when it was not run (its `result` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// What the model gets back, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// What the node waits for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Pending {
    /// Nothing: the next advance decides the next step.
    #[default]
    Nothing,
    /// The step's LLM call.
    Reply { job: JobId },
    /// The step's tool calls, all of them.
    Tools { calls: Vec<Call> },
    /// A summary of the first `upto` messages.
    Summary { job: JobId, upto: usize },
}

/// An agent node's memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent holding the conversation now.
    pub agent: String,
    /// Every agent that held it, in order (the first started it).
    pub chain: Vec<String>,
    /// The conversation without the system prompt (which is the current agent's): user,
    /// assistant and tool messages in OpenAI's chat format.
    pub messages: Vec<Value>,
    /// LLM steps taken, all agents together.
    pub steps: u32,
    /// LLM steps taken per agent.
    pub agent_steps: BTreeMap<String, u32>,
    /// Tokens used by this node (steps and summaries).
    pub usage: Usage,
    /// Repairs asked for the final answer.
    pub repairs: u32,
    /// The next job's `item` (unique per node, so each step and call is its own job).
    pub next_item: u32,
    pub pending: Pending,
    /// A summary failed once; the node does not try again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_summary: bool,
}

impl AgentState {
    /// A conversation with `agent` that starts with the user's `message`.
    pub fn new(agent: &str, message: String) -> AgentState {
        AgentState {
            agent: agent.to_string(),
            chain: vec![agent.to_string()],
            messages: vec![serde_json::json!({"role": "user", "content": message})],
            ..AgentState::default()
        }
    }

    /// The jobs it waits for now.
    pub fn waiting_for(&self) -> Vec<JobId> {
        match &self.pending {
            Pending::Nothing => Vec::new(),
            Pending::Reply { job } | Pending::Summary { job, .. } => vec![*job],
            Pending::Tools { calls } => calls.iter().filter_map(|c| c.job).collect(),
        }
    }
}
