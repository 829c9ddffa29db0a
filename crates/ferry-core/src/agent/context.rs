//! What one step sends: the `llm` job's input built from the agent and its conversation,
//! under the agent's context policy; and the summary step's input.

use super::{AgentSpec, Agents, DEFAULT_LLM_TIMEOUT_MS, DEFAULT_MAX_TOOL_RESULT_BYTES, HANDOFF_PREFIX, SummarizeSpec};
use serde_json::{Value, json};

/// What an elided tool result is replaced with.
const ELIDED: &str = "[an earlier tool result, left out to keep the context small]";

/// The system prompt of `name`, with what hand-offs mean when it has any.
fn system(name: &str, agent: &AgentSpec) -> Option<Value> {
    let mut text = agent.instructions.clone().unwrap_or_default();
    if !agent.handoffs.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&format!(
            "You are the agent `{name}`. To hand the conversation to another agent, call its \
             `{HANDOFF_PREFIX}<name>` tool."
        ));
    }
    (!text.is_empty()).then(|| json!({"role": "system", "content": text}))
}

/// The tools the model is offered: the agent's, then one per hand-off target.
fn tools(agent: &AgentSpec, agents: &Agents) -> Vec<Value> {
    let mut out: Vec<Value> = agent
        .tools
        .iter()
        .map(|t| {
            let mut f = json!({
                "name": t.name,
                "parameters": t.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = &t.description {
                f["description"] = json!(d);
            }
            json!({"type": "function", "function": f})
        })
        .collect();
    for target in &agent.handoffs {
        let what = agents.get(target).and_then(|a| a.instructions.as_deref()).unwrap_or("");
        let first_line: String = what.lines().next().unwrap_or("").chars().take(200).collect();
        out.push(json!({"type": "function", "function": {
            "name": format!("{HANDOFF_PREFIX}{target}"),
            "description": format!("Hand the conversation to the agent `{target}`. {first_line}").trim_end().to_string(),
            "parameters": {"type": "object", "properties": {}},
        }}));
    }
    out
}

/// The messages sent: the system prompt, then the conversation with all but the last
/// `keep_last_tool_results` tool results elided.
fn messages(name: &str, agent: &AgentSpec, conversation: &[Value]) -> Vec<Value> {
    let keep = agent.context().keep_last_tool_results.map(|k| k as usize);
    let tool_results = conversation.iter().filter(|m| m["role"] == "tool").count();
    let elide = keep.map_or(0, |k| tool_results.saturating_sub(k));
    let mut seen = 0;
    let mut out: Vec<Value> = system(name, agent).into_iter().collect();
    for m in conversation {
        if m["role"] == "tool" {
            seen += 1;
            if seen <= elide {
                let mut m = m.clone();
                m["content"] = json!(ELIDED);
                out.push(m);
                continue;
            }
        }
        out.push(m.clone());
    }
    out
}

/// The `llm` job input of one step of `name`.
pub(super) fn step_input(name: &str, agent: &AgentSpec, agents: &Agents, conversation: &[Value]) -> Value {
    let mut input = json!({
        "base_url": agent.base_url,
        "model": agent.model,
        "messages": messages(name, agent, conversation),
        "timeout_ms": llm_timeout(agent),
    });
    let tools = tools(agent, agents);
    if !tools.is_empty() {
        input["tools"] = json!(tools);
    }
    if let Some(k) = &agent.api_key {
        input["api_key"] = json!(k);
    }
    if let Some(t) = agent.temperature {
        input["temperature"] = json!(t);
    }
    if let Some(t) = agent.max_tokens {
        input["max_tokens"] = json!(t);
    }
    if let Some(f) = &agent.response_format {
        input["response_format"] = f.clone();
    }
    input
}

/// One call's timeout.
pub(super) fn llm_timeout(agent: &AgentSpec) -> u64 {
    agent.llm.as_ref().and_then(|l| l.timeout_ms).unwrap_or(DEFAULT_LLM_TIMEOUT_MS)
}

/// A tool result as it enters the transcript: cut to the agent's limit, on a character
/// boundary, with a note of how much was left out.
pub(super) fn cut(agent: &AgentSpec, text: String) -> String {
    let max = agent.context().max_tool_result_bytes.unwrap_or(DEFAULT_MAX_TOOL_RESULT_BYTES) as usize;
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut: {} of {} bytes shown]", &text[..end], end, text.len())
}

/// Where a summary of `conversation` ends, when it is due: past `after_messages`, all but
/// the last `keep_last`, moved back so that no tool result is parted from the call it
/// answers. `None` when none is due.
pub(super) fn summary_cut(s: &SummarizeSpec, conversation: &[Value]) -> Option<usize> {
    let (after, keep) = (s.after_messages.unwrap_or(24) as usize, s.keep_last.unwrap_or(8) as usize);
    if conversation.len() <= after {
        return None;
    }
    let mut upto = conversation.len() - keep;
    while upto > 0 && (conversation[upto]["role"] == "tool") {
        upto -= 1;
    }
    // The kept part starts with the assistant message whose calls it answers, or later.
    (upto > 1).then_some(upto)
}

/// The `llm` job input that summarises `older`.
pub(super) fn summary_input(agent: &AgentSpec, s: &SummarizeSpec, older: &[Value]) -> Value {
    let mut transcript = String::new();
    for m in older {
        let role = m["role"].as_str().unwrap_or("?");
        let content = match &m["content"] {
            Value::String(t) => t.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        transcript.push_str(&format!("{role}: {content}\n"));
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                transcript.push_str(&format!(
                    "{role} called {} with {}\n",
                    c["function"]["name"].as_str().unwrap_or("?"),
                    c["function"]["arguments"].as_str().unwrap_or("")
                ));
            }
        }
    }
    let mut input = json!({
        "base_url": s.base_url.clone().unwrap_or_else(|| agent.base_url.clone()),
        "model": s.model,
        "messages": [
            {"role": "system", "content": "Summarise this conversation for the assistant that continues it: \
              keep every fact, decision, open question and tool result it still needs. Answer with the summary only."},
            {"role": "user", "content": transcript},
        ],
        "timeout_ms": llm_timeout(agent),
    });
    if let Some(k) = s.api_key.as_ref().or(agent.api_key.as_ref()) {
        input["api_key"] = json!(k);
    }
    input
}
