//! Agent runs: LLM agents as durable workflow nodes, held by limits the engine enforces.
//!
//! A workflow declares its agents by name (`agents`), and a node of kind `agent` starts a
//! conversation with one of them, its resolved `input` as the user's message. The node is
//! a loop of steps, each one `llm` job (one chat-completions call); the tool calls the
//! model asks for run as jobs of other kinds (`http`, `exec`, …), all of a step's calls at
//! once; their results go back to the model in the next step. An agent may hand the
//! conversation to another agent of the workflow (a `transfer_to_<name>` tool the engine
//! adds); the node records the chain. The node succeeds with the final answer.
//!
//! **Durable by construction.** The conversation lives in the node's record
//! ([`AgentState`]), written by the run's planner in the transaction that creates the
//! step's jobs, and what a step waits for is named there by job id. A crash anywhere
//! loses nothing: the next advance folds whatever jobs have ended into the state and goes
//! on from there, so a tool call that succeeded is never made again and an LLM reply is
//! never asked for twice. The planner stays pure ([`crate::run::plan`]); this module is
//! its agent part ([`advance`] in `agent/step.rs`).
//!
//! **Kill switches**, each enforced by the planner, each ending the node (and, under
//! `fail_fast`, the run) with its own error type and the partial transcript kept in the
//! node's record:
//! 1. `max_steps` per agent (default 20) and per run (`agent_limits.max_steps`, default
//!    20) → `step_limit`; a step is one LLM call (output repairs included, summaries not);
//! 2. `agent_limits.max_tokens_total` per run → `token_budget`, and the workspace's
//!    `tokens_per_day` (its limits; default 5,000,000) → `token_budget` for running agents
//!    at their next step, while new runs with agent nodes are refused with 429. Both are
//!    checked before each step from the `usage` the provider reported, so the step that
//!    crosses a budget finishes and the next one does not start;
//! 3. hand-off depth (`agent_limits.max_handoffs`, default and at most 5) →
//!    `routing_exhausted`; a hand-off cycle ends there too, and the error names the cycle;
//! 4. the run's timeout (default ten minutes for a workflow with agent nodes) → the run is
//!    `timed_out`;
//! 5. cancel → `cancelled`: the run's planner cancels the step's LLM job and tool jobs,
//!    which stops their attempts.
//!
//! **Strict output.** An agent with an `output_schema` (JSON Schema, draft 2020-12) must
//! answer with JSON that passes it: a failing answer goes back to the model with the
//! validation errors, at most [`MAX_REPAIRS`] times; then the node fails with
//! `schema_validation` and its output keeps the raw answer (`{"raw": …}`).
//!
//! **Tools.** Each tool has a `name`, a `description`, a JSON Schema for its arguments
//! (`parameters`), the `kind` of job that runs it and that job's `input` (a template:
//! `{{ args.x }}` is an argument, `{{ input.x }}` the run's input; without one the job's
//! input is the arguments object), a `timeout_ms` (default 30 s; the server gives a tool
//! its kind's own when the workflow is registered) and `retries` (default 2).
//! A call with arguments that are not JSON, fail the schema, or name no tool, or whose job
//! input its kind refuses, is not run: the model gets the error as the tool's result.
//! A tool job that dies gives the model its error the same way; only the LLM call's own
//! failure (its retries spent) fails the node.
//!
//! **Context growth** (`context`): tool results longer than `max_tool_result_bytes`
//! (default 16 KiB) are cut when they enter the transcript; `keep_last_tool_results`
//! sends only the last N results in full (older ones are replaced by a short note);
//! `summarize` has a cheaper model summarise the older part of a long conversation.
//!
//! **Output** of a node: `{"answer": <the text, or the parsed JSON when the agent has an
//! output_schema>, "agent": <who answered>, "chain": [<agents in hand-off order>],
//! "steps": n, "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}`.

mod context;
mod schema;
mod state;
mod step;
#[cfg(test)]
mod tests;

pub use schema::{SchemaCheck, compile_schema};
pub use state::{AgentState, Call, Pending, Usage};
pub use step::{Advance, Budget, Env, Outcome, advance, start};

use crate::backoff::Backoff;
use crate::job::Limits;
use crate::workflow::{NodeSpec, Reference, WorkflowSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The node kind that runs an agent.
pub const KIND: &str = "agent";
/// The job kind of one step.
pub const LLM_KIND: &str = "llm";
/// Steps per agent and per run when the workflow gives no `max_steps`.
pub const DEFAULT_MAX_STEPS: u32 = 20;
/// Most `max_steps`.
pub const MAX_STEPS: u32 = 1000;
/// The hand-off depth when the workflow gives none, and the most it may give.
pub const MAX_HANDOFFS: u32 = 5;
/// A tool job's timeout when its tool gives none.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;
/// A tool job's retries when its tool gives none (so three attempts).
pub const DEFAULT_TOOL_RETRIES: u32 = 2;
/// Repair attempts of a final answer that fails its output schema.
pub const MAX_REPAIRS: u32 = 2;
/// A run's timeout, when its workflow has agent nodes and gives none: ten minutes.
pub const DEFAULT_RUN_TIMEOUT_MS: u64 = 600_000;
/// A workspace's tokens per day when its limits give none.
pub const DEFAULT_TOKENS_PER_DAY: u64 = 5_000_000;
/// One LLM call's timeout when the agent gives none (the `llm` kind's own default).
pub const DEFAULT_LLM_TIMEOUT_MS: u64 = 60_000;
/// Attempts of one LLM call (5xx, timeouts and 429 are retried).
pub const DEFAULT_LLM_ATTEMPTS: u32 = 5;
/// Tool results are cut to this many bytes when the agent gives no limit.
pub const DEFAULT_MAX_TOOL_RESULT_BYTES: u32 = 16 * 1024;
/// Most tools per agent.
pub const MAX_TOOLS: usize = 128;
/// The prefix of the hand-off tools the engine adds: `transfer_to_<agent>`.
pub const HANDOFF_PREFIX: &str = "transfer_to_";

/// One agent: its model and prompt, its tools, whom it may hand off to, its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The model's name, as the provider knows it.
    pub model: String,
    /// The OpenAI-compatible endpoint (`https://api.openai.com/v1`); the call goes to
    /// `{base_url}/chat/completions`.
    pub base_url: String,
    /// The name of the server's secret holding the API key (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Agents of the workflow this one may hand the conversation to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handoffs: Vec<String>,
    /// Steps this agent may take in one node (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// The most tokens of one reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Passed to the provider as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// A JSON Schema (draft 2020-12) the final answer, parsed as JSON, must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextPolicy>,
    /// How each step's `llm` job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSettings>,
}

/// How the `llm` jobs of an agent's steps run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// One call's timeout (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts of one call (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// The queue (default: the `llm` kind's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// One tool an agent may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// 1 to 64 letters, digits, `_` or `-`; unique per agent.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema (draft 2020-12) of the arguments; default: any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// The kind of job that runs the call.
    pub kind: String,
    /// The job's input: a template over `args` and `input`; default: the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The job's attempt timeout (default 30 s; at registration the server fills in the
    /// kind's own, such as a `workflow` tool's 65 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries after a failed attempt (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// How an agent keeps its context small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextPolicy {
    /// Send only the last N tool results in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last_tool_results: Option<u32>,
    /// Cut tool results to this many bytes (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_result_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summarize: Option<SummarizeSpec>,
}

/// Summarising the older part of a long conversation with a (cheaper) model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SummarizeSpec {
    pub model: String,
    /// Default: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Default: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Summarise once the transcript holds more messages than this (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_messages: Option<u32>,
    /// The newest messages kept as they are (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
}

/// A run's limits over all its agent nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunLimits {
    /// Steps of all agents of the run together (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Tokens of all agents of the run together (default: no limit but the workspace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_total: Option<u64>,
    /// Hand-offs in one conversation (default and at most 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handoffs: Option<u32>,
}

impl RunLimits {
    pub fn max_steps(&self) -> u32 {
        self.max_steps.unwrap_or(DEFAULT_MAX_STEPS)
    }

    pub fn max_handoffs(&self) -> u32 {
        self.max_handoffs.unwrap_or(MAX_HANDOFFS)
    }
}

impl AgentSpec {
    pub fn max_steps(&self) -> u32 {
        self.max_steps.unwrap_or(DEFAULT_MAX_STEPS)
    }

    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    fn context(&self) -> ContextPolicy {
        self.context.clone().unwrap_or_default()
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

type Refusal = (String, String);

/// Checks an `agent` node's own fields (its `agent`, no `for_each`); the field is
/// relative to the node.
pub fn check_node(spec: &WorkflowSpec, node: &NodeSpec) -> Result<(), Refusal> {
    let Some(agent) = &node.agent else {
        return Err(("agent".into(), "an agent node names its agent (one of the workflow's `agents`)".into()));
    };
    if !spec.agents.contains_key(agent) {
        return Err(("agent".into(), format!("unknown agent `{agent}` (not in the workflow's `agents`)")));
    }
    if node.for_each.is_some() {
        return Err(("for_each".into(), "an agent node cannot run for_each".into()));
    }
    Ok(())
}

/// Checks the workflow's agents and agent limits, naming the field
/// (`agents.triage.tools[1].parameters`).
pub fn validate(
    spec: &WorkflowSpec,
    kind_exists: &dyn Fn(&str) -> bool,
    limits: &Limits,
) -> Result<(), crate::SpecError> {
    let bad = |field: String, message: String| crate::SpecError::invalid(field, message);
    if !spec.agents.is_empty() && !kind_exists(LLM_KIND) {
        return Err(bad("agents".into(), format!("agents need the `{LLM_KIND}` kind, which this server lacks")));
    }
    if let Some(l) = &spec.agent_limits {
        if let Some(m) = l.max_steps
            && (m == 0 || m > MAX_STEPS)
        {
            return Err(bad("agent_limits.max_steps".into(), format!("must be 1 to {MAX_STEPS}")));
        }
        if l.max_tokens_total == Some(0) {
            return Err(bad("agent_limits.max_tokens_total".into(), "must be at least 1".into()));
        }
        if let Some(h) = l.max_handoffs
            && h > MAX_HANDOFFS
        {
            return Err(bad("agent_limits.max_handoffs".into(), format!("must be 0 to {MAX_HANDOFFS}")));
        }
    }
    for (name, agent) in &spec.agents {
        let at = |f: &str| format!("agents.{name}.{f}");
        if !name_ok(name) {
            return Err(bad(format!("agents.{name}"), "an agent's name is 1 to 64 letters, digits, `_` or `-`".into()));
        }
        if agent.model.is_empty() {
            return Err(bad(at("model"), "must not be empty".into()));
        }
        if !(agent.base_url.starts_with("http://") || agent.base_url.starts_with("https://")) {
            return Err(bad(at("base_url"), "must be an http:// or https:// URL".into()));
        }
        if let Some(m) = agent.max_steps
            && (m == 0 || m > MAX_STEPS)
        {
            return Err(bad(at("max_steps"), format!("must be 1 to {MAX_STEPS}")));
        }
        if let Some(t) = agent.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(bad(at("temperature"), "must be between 0 and 2".into()));
        }
        if let Some(schema) = &agent.output_schema {
            compile_schema(schema).map_err(|e| bad(at("output_schema"), e))?;
        }
        if let Some(llm) = &agent.llm {
            if let Some(t) = llm.timeout_ms
                && (t == 0 || t > limits.max_timeout_ms)
            {
                return Err(bad(at("llm.timeout_ms"), format!("must be 1 to {}", limits.max_timeout_ms)));
            }
            if let Some(a) = llm.max_attempts
                && (a == 0 || a > limits.max_attempts)
            {
                return Err(bad(at("llm.max_attempts"), format!("must be 1 to {}", limits.max_attempts)));
            }
        }
        if let Some(s) = agent.context.as_ref().and_then(|c| c.summarize.as_ref()) {
            if s.model.is_empty() {
                return Err(bad(at("context.summarize.model"), "must not be empty".into()));
            }
            if s.keep_last.unwrap_or(8) >= s.after_messages.unwrap_or(24) {
                return Err(bad(at("context.summarize.keep_last"), "must be less than after_messages".into()));
            }
        }
        for (j, target) in agent.handoffs.iter().enumerate() {
            if !spec.agents.contains_key(target) {
                return Err(bad(at(&format!("handoffs[{j}]")), format!("unknown agent `{target}`")));
            }
        }
        if agent.tools.len() > MAX_TOOLS {
            return Err(bad(at("tools"), format!("at most {MAX_TOOLS} tools")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (j, tool) in agent.tools.iter().enumerate() {
            let tat = |f: &str| at(&format!("tools[{j}].{f}"));
            if !name_ok(&tool.name) || tool.name.starts_with(HANDOFF_PREFIX) {
                return Err(bad(
                    tat("name"),
                    format!("must be 1 to 64 letters, digits, `_` or `-`, not starting `{HANDOFF_PREFIX}`"),
                ));
            }
            if !seen.insert(&tool.name) {
                return Err(bad(tat("name"), format!("`{}` is listed twice", tool.name)));
            }
            if tool.kind == KIND || !kind_exists(&tool.kind) {
                return Err(bad(tat("kind"), format!("unknown kind `{}`", tool.kind)));
            }
            if let Some(p) = &tool.parameters {
                compile_schema(p).map_err(|e| bad(tat("parameters"), e))?;
            }
            if let Some(t) = tool.timeout_ms
                && (t == 0 || t > limits.max_timeout_ms)
            {
                return Err(bad(tat("timeout_ms"), format!("must be 1 to {}", limits.max_timeout_ms)));
            }
            if let Some(r) = tool.retries
                && r >= limits.max_attempts
            {
                return Err(bad(tat("retries"), format!("must be below {}", limits.max_attempts)));
            }
            if let Some(input) = &tool.input {
                let refs = crate::workflow::references(input).map_err(|(p, m)| bad(tat(&format!("input{p}")), m))?;
                for (p, r) in refs {
                    if !matches!(r, Reference::Args(_) | Reference::Input(_)) {
                        return Err(bad(
                            tat(&format!("input{p}")),
                            "a tool's input may refer to `args` and `input` only".into(),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The agents of a workflow by name, as the planner reads them.
pub type Agents = BTreeMap<String, AgentSpec>;
