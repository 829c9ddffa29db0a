//! The agent loop, pure: fold the jobs an agent node waits for into its state, then
//! decide what it does next (another step, tool calls, a hand-off, a repair, its end), as
//! far as it can go without waiting. The run's planner calls it for each running agent
//! node; see the module docs of [`crate::agent`] for the rules.

use super::context::{self, cut};
use super::schema::{self, SchemaCheck};
use super::state::{AgentState, Call, Pending, Usage};
use super::{
    AgentSpec, DEFAULT_LLM_ATTEMPTS, DEFAULT_TOOL_RETRIES, DEFAULT_TOOL_TIMEOUT_MS, HANDOFF_PREFIX, LLM_KIND,
    MAX_REPAIRS,
};
use crate::job::{JobSpec, JobState, Limits};
use crate::run::{InputCheck, RunEventNew, RunJob, RunJobNew};
use crate::time::Micros;
use crate::workflow::{self, NodeSpec, WorkflowSpec};
use crate::{ErrorType, JobError};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The workspace's tokens for the day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Spent today before this advance.
    pub used_today: u64,
    /// `None`: no limit.
    pub per_day: Option<u64>,
    /// The workspace stores no limits of its own: the configured defaults apply, and
    /// whoever knows them (the engine's planner) fills `per_day` before planning.
    pub defaults: bool,
}

impl Budget {
    /// The UTC day of `now`, as days since 1970-01-01: the key of a day's tokens.
    pub fn day(now: Micros) -> i64 {
        now.div_euclid(86_400_000_000)
    }
}

/// What an advance of one agent node sees besides its own state.
pub struct Env<'a> {
    pub workflow: &'a WorkflowSpec,
    pub node: &'a NodeSpec,
    pub run_input: &'a Value,
    pub workspace: &'a str,
    pub user: &'a str,
    pub now: Micros,
    pub limits: &'a Limits,
    pub check: InputCheck<'a>,
    /// Steps and tokens of the run's other agent nodes.
    pub others: (u32, u64),
    pub budget: Budget,
}

/// Where the node is after an advance.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Running,
    /// The node's output.
    Succeeded(Value),
    /// The error, and the output kept (a raw answer that failed its schema).
    Failed(JobError, Option<Value>),
}

/// What an advance did.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub state: AgentState,
    pub create: Vec<RunJobNew>,
    pub events: Vec<RunEventNew>,
    /// Tokens this advance folded in (for the workspace's day).
    pub tokens: u64,
    pub outcome: Outcome,
    /// Whether anything changed (state, jobs, events).
    pub changed: bool,
}

struct Run<'e, 'a> {
    env: &'e Env<'a>,
    st: AgentState,
    create: Vec<RunJobNew>,
    events: Vec<RunEventNew>,
    tokens: u64,
}

fn error(t: ErrorType, message: impl Into<String>) -> JobError {
    JobError { error_type: t, message: message.into(), retryable: false, severity: None }
}

/// Starts an agent node: its input (resolved by the planner) is the user's message.
pub fn start(env: &Env, input: &Value) -> Advance {
    let message = match input {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let agent = env.node.agent.clone().unwrap_or_default();
    let mut run = Run { env, st: AgentState::new(&agent, message), create: vec![], events: vec![], tokens: 0 };
    run.event("agent_started", json!({"agent": agent}));
    let outcome = run.go();
    run.finish(outcome, true)
}

/// Folds the ended jobs the node waits for and goes on as far as it can.
pub fn advance(env: &Env, state: &AgentState, jobs: &[&RunJob]) -> Advance {
    let by_id: BTreeMap<_, _> = jobs.iter().map(|j| (j.id, *j)).collect();
    let ended = |id: &crate::JobId| by_id.get(id).is_some_and(|j| is_final(j.state));
    let waiting = state.waiting_for();
    if !waiting.iter().all(ended) {
        let unchanged = Run { env, st: state.clone(), create: vec![], events: vec![], tokens: 0 };
        return unchanged.finish(Outcome::Running, false);
    }
    let mut run = Run { env, st: state.clone(), create: vec![], events: vec![], tokens: 0 };
    let outcome = match std::mem::take(&mut run.st.pending) {
        Pending::Nothing => None,
        Pending::Reply { job } => run.reply(by_id[&job]),
        Pending::Tools { calls } => {
            run.tool_results(calls, &by_id);
            None
        }
        Pending::Summary { job, upto } => {
            run.summarized(by_id[&job], upto);
            None
        }
    };
    let outcome = match outcome {
        Some(end) => end,
        None if run.st.pending == Pending::Nothing => run.go(),
        None => Outcome::Running,
    };
    run.finish(outcome, true)
}

fn is_final(s: JobState) -> bool {
    matches!(s, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
}

impl Run<'_, '_> {
    fn agent(&self) -> &AgentSpec {
        &self.env.workflow.agents[&self.st.agent]
    }

    fn event(&mut self, event_type: &str, data: Value) {
        self.events.push(RunEventNew { event_type: event_type.into(), node: Some(self.env.node.id.clone()), data });
    }

    fn finish(self, outcome: Outcome, changed: bool) -> Advance {
        Advance { state: self.st, create: self.create, events: self.events, tokens: self.tokens, outcome, changed }
    }

    fn run_limits(&self) -> super::RunLimits {
        self.env.workflow.agent_limits.clone().unwrap_or_default()
    }

    /// Tokens of the whole run.
    fn run_tokens(&self) -> u64 {
        self.env.others.1 + self.st.usage.total_tokens
    }

    /// What is left of each token budget, for the events `--follow` shows.
    fn budget_left(&self) -> Value {
        let run = self.run_limits().max_tokens_total.map(|m| m.saturating_sub(self.run_tokens()));
        let day = self.env.budget.per_day.map(|m| m.saturating_sub(self.env.budget.used_today + self.tokens));
        json!({"run": run, "day": day})
    }

    /// Creates a job of the node, or says why its spec or input is refused.
    fn job(&mut self, spec: JobSpec) -> Result<crate::JobId, String> {
        let input = spec.input.clone().unwrap_or(Value::Null);
        (self.env.check)(&spec.kind, &input)?;
        let job = spec
            .validate(self.env.workspace, self.env.user, self.env.now, self.env.limits)
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        let id = job.id;
        let item = self.st.next_item;
        self.st.next_item += 1;
        self.create.push(RunJobNew { node: self.env.node.id.clone(), item: Some(item), job });
        Ok(id)
    }

    fn llm_job(&mut self, input: Value) -> Result<crate::JobId, String> {
        let agent = self.agent();
        let settings = agent.llm.clone().unwrap_or_default();
        let timeout = (context::llm_timeout(agent) + 5_000).min(self.env.limits.max_timeout_ms);
        let labels = BTreeMap::from([("agent".to_string(), self.st.agent.clone())]);
        self.job(JobSpec {
            kind: LLM_KIND.into(),
            input: Some(input),
            queue: settings.queue,
            max_attempts: Some(settings.max_attempts.unwrap_or(DEFAULT_LLM_ATTEMPTS)),
            backoff: settings.backoff,
            timeout_ms: Some(timeout),
            labels: Some(labels),
            ..JobSpec::default()
        })
    }

    /// Decides the next step from a state that waits for nothing; runs until it waits
    /// again or ends.
    fn go(&mut self) -> Outcome {
        if let Some(end) = self.limits_reached() {
            return end;
        }
        if self.summary_due() {
            return Outcome::Running;
        }
        let agent = self.agent().clone();
        let name = self.st.agent.clone();
        let input = context::step_input(&name, &agent, &self.env.workflow.agents, &self.st.messages);
        let job = match self.llm_job(input) {
            Ok(job) => job,
            Err(e) => return Outcome::Failed(error(ErrorType::Validation, format!("agent `{name}`: {e}")), None),
        };
        self.st.steps += 1;
        *self.st.agent_steps.entry(name.clone()).or_default() += 1;
        let step = self.st.steps;
        self.event("agent_step", json!({"agent": name, "step": step, "job": job}));
        self.st.pending = Pending::Reply { job };
        Outcome::Running
    }

    /// The kill switches checked before a step: steps per agent and per run, the run's
    /// tokens, the workspace's day.
    fn limits_reached(&self) -> Option<Outcome> {
        let name = &self.st.agent;
        let taken = self.st.agent_steps.get(name).copied().unwrap_or(0);
        let agent_max = self.agent().max_steps();
        let limits = self.run_limits();
        let fail = |t, m: String| Some(Outcome::Failed(error(t, m), None));
        if taken >= agent_max {
            return fail(ErrorType::StepLimit, format!("agent `{name}` took its {agent_max} steps (max_steps)"));
        }
        let run_steps = self.env.others.0 + self.st.steps;
        if run_steps >= limits.max_steps() {
            return fail(
                ErrorType::StepLimit,
                format!("the run took its {} steps (agent_limits.max_steps)", limits.max_steps()),
            );
        }
        if let Some(max) = limits.max_tokens_total
            && self.run_tokens() >= max
        {
            return fail(
                ErrorType::TokenBudget,
                format!("the run used {} tokens of its {max} (agent_limits.max_tokens_total)", self.run_tokens()),
            );
        }
        if let Some(max) = self.env.budget.per_day
            && self.env.budget.used_today + self.tokens >= max
        {
            return fail(
                ErrorType::TokenBudget,
                format!("workspace `{}` used its {max} tokens for today (tokens_per_day)", self.env.workspace),
            );
        }
        None
    }

    /// Starts a summary when the policy says one is due; whether it did.
    fn summary_due(&mut self) -> bool {
        let agent = self.agent().clone();
        let Some(s) = agent.context.as_ref().and_then(|c| c.summarize.clone()) else { return false };
        if self.st.no_summary {
            return false;
        }
        let Some(upto) = context::summary_cut(&s, &self.st.messages) else { return false };
        let input = context::summary_input(&agent, &s, &self.st.messages[..upto]);
        match self.llm_job(input) {
            Ok(job) => {
                self.event("summary_started", json!({"agent": self.st.agent, "messages": upto, "job": job}));
                self.st.pending = Pending::Summary { job, upto };
                true
            }
            Err(e) => {
                self.event("summary_failed", json!({"agent": self.st.agent, "error": e}));
                self.st.no_summary = true;
                false
            }
        }
    }

    /// A summary ended: on success it replaces the messages it covers.
    fn summarized(&mut self, job: &RunJob, upto: usize) {
        let out = job.output.clone().unwrap_or(Value::Null);
        if job.state != JobState::Succeeded {
            let why = job.error.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| "it ended".into());
            self.event("summary_failed", json!({"agent": self.st.agent, "error": why}));
            self.st.no_summary = true;
            return;
        }
        self.count(Usage::of(&out["usage"]));
        let text = out["content"].as_str().unwrap_or("").to_string();
        let rest = self.st.messages.split_off(upto.min(self.st.messages.len()));
        self.st.messages =
            vec![json!({"role": "user", "content": format!("Summary of the conversation so far:\n{text}")})];
        self.st.messages.extend(rest);
        self.event("summarized", json!({"agent": self.st.agent, "messages": upto, "usage": out["usage"]}));
    }

    fn count(&mut self, usage: Usage) {
        self.st.usage.add(usage);
        self.tokens += usage.total_tokens;
    }

    /// The step's reply: a final answer, tool calls, or a hand-off. `Some` when the node
    /// ends.
    fn reply(&mut self, job: &RunJob) -> Option<Outcome> {
        let name = self.st.agent.clone();
        if job.state != JobState::Succeeded {
            let e = job.error.clone().unwrap_or_else(|| error(ErrorType::Cancelled, "the step was cancelled"));
            let message = format!("agent `{name}` step {}: {}", self.st.steps, e.message);
            return Some(Outcome::Failed(JobError { message, retryable: false, severity: None, ..e }, None));
        }
        let out = job.output.clone().unwrap_or(Value::Null);
        let usage = Usage::of(&out["usage"]);
        self.count(usage);
        let content = out["content"].as_str().map(str::to_string);
        let calls: Vec<(String, String, Value)> = out["tool_calls"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let id = c["id"].as_str().map(str::to_string).unwrap_or_else(|| format!("call_{i}"));
                        (id, c["name"].as_str().unwrap_or("").to_string(), c["arguments"].clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut message = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .map(|(id, n, a)| {
                    let args = match a {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    json!({"id": id, "type": "function", "function": {"name": n, "arguments": args}})
                })
                .collect();
        }
        self.st.messages.push(message);
        let shown: Vec<Value> = calls.iter().map(|(id, n, a)| json!({"id": id, "name": n, "arguments": a})).collect();
        let data = json!({
            "agent": name, "step": self.st.steps, "content": content, "tool_calls": shown,
            "usage": usage, "tokens": {"node": self.st.usage.total_tokens, "run": self.run_tokens()},
            "budget_left": self.budget_left(), "finish_reason": out["finish_reason"],
        });
        self.event("agent_reply", data);
        if calls.is_empty() {
            return self.final_answer(content.unwrap_or_default());
        }
        let agent = self.agent().clone();
        let handoff = calls.iter().find_map(|(id, n, _)| {
            let target = n.strip_prefix(HANDOFF_PREFIX)?;
            agent.handoffs.iter().any(|h| h == target).then(|| (id.clone(), target.to_string()))
        });
        if let Some((call_id, target)) = handoff {
            return self.hand_off(&calls, &call_id, &target);
        }
        self.call_tools(&agent, calls);
        None
    }

    /// Hands the conversation to `target`, answering every call of the step.
    fn hand_off(&mut self, calls: &[(String, String, Value)], call_id: &str, target: &str) -> Option<Outcome> {
        let depth = self.st.chain.len() as u32;
        let max = self.run_limits().max_handoffs();
        let from = self.st.agent.clone();
        if depth > max {
            let mut chain = self.st.chain.clone();
            chain.push(target.to_string());
            let cycle = if self.st.chain.iter().any(|a| a == target) { " (a hand-off cycle)" } else { "" };
            let message = format!("hand-off {} passes the depth of {max}{cycle}", chain.join(" -> "));
            return Some(Outcome::Failed(error(ErrorType::RoutingExhausted, message), None));
        }
        for (id, name, _) in calls {
            let result = if id == call_id {
                format!("The conversation was handed to `{target}`.")
            } else {
                format!("Not run: `{from}` handed the conversation to `{target}` in the same step.")
            };
            self.st.messages.push(json!({"role": "tool", "tool_call_id": id, "name": name, "content": result}));
        }
        self.st.agent = target.to_string();
        self.st.chain.push(target.to_string());
        self.event("handoff", json!({"from": from, "to": target, "depth": depth, "chain": self.st.chain}));
        None
    }

    /// Starts the step's tool calls (all at once); a call that cannot run gets its error
    /// as its result at once.
    fn call_tools(&mut self, agent: &AgentSpec, calls: Vec<(String, String, Value)>) {
        let mut pending = Vec::new();
        for (id, name, args) in calls {
            let started = match self.tool_job(agent, &name, &args) {
                Ok(job) => {
                    let data =
                        json!({"agent": self.st.agent, "call_id": id, "name": name, "arguments": args, "job": job});
                    self.event("tool_call", data);
                    Call { id, name, job: Some(job), result: None }
                }
                Err(why) => {
                    let data =
                        json!({"agent": self.st.agent, "call_id": id, "name": name, "arguments": args, "error": why});
                    self.event("tool_refused", data);
                    Call { id, name, job: None, result: Some(format!("error: {why}")) }
                }
            };
            pending.push(started);
        }
        if pending.iter().all(|c| c.job.is_none()) {
            let empty = BTreeMap::new();
            self.tool_results(pending, &empty);
        } else {
            self.st.pending = Pending::Tools { calls: pending };
        }
    }

    /// The job of one tool call, or why it is not run.
    fn tool_job(&mut self, agent: &AgentSpec, name: &str, args: &Value) -> Result<crate::JobId, String> {
        let tool = agent.tool(name).ok_or_else(|| format!("there is no tool `{name}`"))?.clone();
        let args = match args {
            Value::Object(_) => args.clone(),
            Value::String(s) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| format!("the arguments are not a JSON object: {s}"))?,
            other => return Err(format!("the arguments are not a JSON object: {other}")),
        };
        if let Some(schema) = &tool.parameters
            && let SchemaCheck::Fails(errors) = schema::check(schema, &args)
        {
            return Err(format!("invalid arguments: {}", errors.join("; ")));
        }
        let input = match &tool.input {
            None => args.clone(),
            Some(template) => {
                let nodes = |_: &str| None;
                let ctx = workflow::Context { input: self.env.run_input, nodes: &nodes, item: None, args: Some(&args) };
                workflow::resolve(template, &ctx, self.env.limits.max_input_bytes)
                    .map_err(|e| format!("cannot build the tool's input: {e}"))?
            }
        };
        let retries = tool.retries.unwrap_or(DEFAULT_TOOL_RETRIES);
        let labels = BTreeMap::from([("agent".to_string(), self.st.agent.clone()), ("tool".to_string(), name.into())]);
        self.job(JobSpec {
            kind: tool.kind.clone(),
            input: Some(input),
            queue: tool.queue.clone(),
            max_attempts: Some(retries + 1),
            backoff: tool.backoff.clone(),
            timeout_ms: Some(tool.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS)),
            labels: Some(labels),
            ..JobSpec::default()
        })
    }

    /// Every call of the step ended: their results go into the conversation, in the
    /// order the model asked for them.
    fn tool_results(&mut self, calls: Vec<Call>, jobs: &BTreeMap<crate::JobId, &RunJob>) {
        let agent = self.agent().clone();
        for c in calls {
            let (ok, text) = match (c.result, c.job.and_then(|j| jobs.get(&j))) {
                (Some(r), _) => (false, r),
                (None, Some(j)) if j.state == JobState::Succeeded => {
                    let out = j.output.clone().unwrap_or(Value::Null);
                    (
                        true,
                        match out {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                    )
                }
                (None, Some(j)) => {
                    let e =
                        j.error.clone().unwrap_or_else(|| error(ErrorType::Cancelled, "the tool job was cancelled"));
                    (false, json!({"error": {"type": e.error_type, "message": e.message}}).to_string())
                }
                (None, None) => (false, "error: the tool job is gone".to_string()),
            };
            let text = cut(&agent, text);
            self.event(
                "tool_result",
                json!({"agent": self.st.agent, "call_id": c.id, "name": c.name, "ok": ok, "result": text}),
            );
            self.st.messages.push(json!({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": text}));
        }
    }

    /// A reply without tool calls: the node's answer, checked against the output schema.
    fn final_answer(&mut self, content: String) -> Option<Outcome> {
        let agent = self.agent().clone();
        let answer = match &agent.output_schema {
            None => Value::String(content.clone()),
            Some(schema) => {
                let parsed = serde_json::from_str::<Value>(&content);
                let errors = match &parsed {
                    Err(e) => vec![format!("the answer is not JSON: {e}")],
                    Ok(v) => match schema::check(schema, v) {
                        SchemaCheck::Passes => vec![],
                        SchemaCheck::Fails(errors) => errors,
                    },
                };
                if !errors.is_empty() {
                    if self.st.repairs >= MAX_REPAIRS {
                        let message = format!(
                            "agent `{}`: the answer failed its output_schema after {MAX_REPAIRS} repairs: {}",
                            self.st.agent,
                            errors.join("; ")
                        );
                        let raw = json!({"raw": content, "errors": errors});
                        return Some(Outcome::Failed(error(ErrorType::SchemaValidation, message), Some(raw)));
                    }
                    self.st.repairs += 1;
                    let attempt = self.st.repairs;
                    self.event("output_repair", json!({"agent": self.st.agent, "attempt": attempt, "errors": errors}));
                    let ask = format!(
                        "Your answer does not match the required JSON Schema:\n- {}\nAnswer again with only JSON that matches it.",
                        errors.join("\n- ")
                    );
                    self.st.messages.push(json!({"role": "user", "content": ask}));
                    return None;
                }
                parsed.unwrap_or(Value::Null)
            }
        };
        let output = json!({
            "answer": answer, "agent": self.st.agent, "chain": self.st.chain,
            "steps": self.st.steps, "usage": self.st.usage,
        });
        self.event(
            "agent_finished",
            json!({"agent": self.st.agent, "steps": self.st.steps, "usage": self.st.usage, "chain": self.st.chain}),
        );
        Some(Outcome::Succeeded(output))
    }
}
