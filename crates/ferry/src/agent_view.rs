//! One line per agent event, for `ferry run … --follow`: each step, each tool call and
//! its result, hand-offs and repairs, with the tokens used and what is left of the
//! budgets (see `ferry_core::agent` for the events).

use crate::view::one_line;
use serde_json::Value;

/// The line an agent event prints, or `None` for an event that is not an agent's.
pub fn line(e: &Value) -> Option<String> {
    let d = &e["data"];
    let node = e["node"].as_str().unwrap_or("?");
    let agent = d["agent"].as_str().or(d["from"].as_str()).unwrap_or("?");
    let text = match e["type"].as_str()? {
        "agent_step" => format!("step {} → asking the model", d["step"]),
        "agent_reply" => {
            let calls: Vec<&str> =
                d["tool_calls"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
            let what = if calls.is_empty() {
                format!("answered: {}", one_line(&d["content"], 80))
            } else {
                format!("calls {}", calls.join(", "))
            };
            format!(
                "step {} {what}  [{} tokens; run {}{}{}]",
                d["step"],
                d["usage"]["total_tokens"],
                d["tokens"]["run"],
                left("run budget", &d["budget_left"]["run"]),
                left("today", &d["budget_left"]["day"]),
            )
        }
        "tool_call" => format!("tool {} {}", d["name"].as_str().unwrap_or("?"), one_line(&d["arguments"], 60)),
        "tool_refused" => format!("tool {} refused: {}", d["name"].as_str().unwrap_or("?"), one_line(&d["error"], 80)),
        "tool_result" => {
            let how = if d["ok"] == true { "→" } else { "failed →" };
            format!("tool {} {how} {}", d["name"].as_str().unwrap_or("?"), one_line(&d["result"], 70))
        }
        "handoff" => format!("handed off {} → {} (depth {})", d["from"].as_str()?, d["to"].as_str()?, d["depth"]),
        "output_repair" => format!("answer failed its schema; repair {}", d["attempt"]),
        "summarized" => format!("summarised {} older messages", d["messages"]),
        "summary_failed" => format!("summary failed: {}", one_line(&d["error"], 60)),
        "agent_finished" => format!("finished after {} steps, {} tokens", d["steps"], d["usage"]["total_tokens"]),
        _ => return None,
    };
    Some(format!("  {node}/{agent}: {text}"))
}

fn left(what: &str, n: &Value) -> String {
    n.as_u64().map(|n| format!("; {n} left {what}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_calls_and_budgets_read_as_lines() {
        let reply = json!({"type": "agent_reply", "node": "chat", "data": {"agent": "triage", "step": 2,
            "tool_calls": [{"name": "lookup"}], "usage": {"total_tokens": 30}, "tokens": {"run": 90},
            "budget_left": {"run": 910, "day": null}}});
        assert_eq!(
            line(&reply).unwrap(),
            "  chat/triage: step 2 calls lookup  [30 tokens; run 90; 910 left run budget]"
        );
        let hand = json!({"type": "handoff", "node": "chat", "data": {"from": "a", "to": "b", "depth": 1}});
        assert_eq!(line(&hand).unwrap(), "  chat/a: handed off a → b (depth 1)");
        assert!(line(&json!({"type": "node_started", "data": {}})).is_none());
    }
}
