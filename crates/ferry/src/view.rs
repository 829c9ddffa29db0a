//! The CLI's short views: a few lines a person reads at a glance, where the API's answer
//! runs to dozens of lines of JSON. Each client command prints one of these by default
//! and the server's full answer with `--json` (for scripts: `ferry status ID --json | jq`).
//!
//! A view never hides a failure: a job's last error and a run's failed nodes are always
//! shown. Long values (an output, an error message) are cut to one line of
//! [`LINE_CHARS`] characters with `…`.

use serde_json::Value;

/// The longest value shown on one line.
pub const LINE_CHARS: usize = 100;

/// `v` on one line, cut to `max` characters (JSON for anything but a string).
pub fn one_line(v: &Value, max: usize) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("?")
}

/// An error object as `type: message`.
fn error_line(e: &Value) -> String {
    let message = one_line(&e["message"], LINE_CHARS);
    format!("{}: {message}", e["type"].as_str().unwrap_or("error"))
}

/// A job (`GET /v1/jobs/{id}`): id, kind, queue, state, attempts, last error, output.
pub fn job(j: &Value) -> String {
    let mut out =
        format!("job {}  {} on queue {}: {}\n", text(j, "id"), text(j, "kind"), text(j, "queue"), text(j, "state"));
    out.push_str(&format!("  attempts  {} of {}\n", j["attempts_used"], j["max_attempts"]));
    if !j["error"].is_null() {
        out.push_str(&format!("  error     {}\n", error_line(&j["error"])));
    }
    if !j["output"].is_null() {
        out.push_str(&format!("  output    {}\n", one_line(&j["output"], LINE_CHARS)));
    }
    out
}

/// An answer that only says where a job or run is (`{"id", "state", "created"?}`).
pub fn accepted(what: &str, a: &Value) -> String {
    let existing = if a["created"] == false { " (an existing one: its idempotency key matched)" } else { "" };
    format!("{what} {}: {}{existing}\n", text(a, "id"), text(a, "state"))
}

/// A page of jobs (`GET /v1/jobs`), one line each, newest first.
pub fn job_list(page: &Value) -> String {
    let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut out = String::new();
    for j in items {
        let error = if j["error"].is_null() { String::new() } else { format!("  {}", error_line(&j["error"])) };
        out.push_str(&format!(
            "{}  {:<8} {:<10} {:<9} {}/{}{error}\n",
            text(j, "id"),
            text(j, "kind"),
            text(j, "queue"),
            text(j, "state"),
            j["attempts_used"],
            j["max_attempts"],
        ));
    }
    if page["next_cursor"].is_string() {
        out.push_str("(more: raise --limit, or use --json for the cursor)\n");
    }
    out
}

/// A run (`GET /v1/runs/{id}`): its state and one line per node.
pub fn run(r: &Value) -> String {
    let mut out = format!("run {}  {} v{}: {}\n", text(r, "id"), text(r, "workflow"), r["version"], text(r, "state"));
    if !r["error"].is_null() {
        out.push_str(&format!("  error  {}\n", error_line(&r["error"])));
    }
    for node in r["nodes"].as_array().into_iter().flatten() {
        let mut line = format!("  {:<20} {}", text(node, "id"), text(node, "state"));
        if let Some(items) = node["items"].as_u64() {
            let done = node["jobs"].as_array().map_or(0, |j| j.iter().filter(|j| j["state"] == "succeeded").count());
            line.push_str(&format!("  {done}/{items} elements"));
        }
        if node["attempts"].as_u64().unwrap_or(0) > 1 {
            line.push_str(&format!("  ({} attempts)", node["attempts"]));
        }
        if !node["error"].is_null() {
            line.push_str(&format!("  {}", error_line(&node["error"])));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A page of runs (`GET /v1/runs`), one line each, newest first.
pub fn run_list(page: &Value) -> String {
    let items = page["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return "no runs\n".to_string();
    }
    let mut out = String::new();
    for r in items {
        out.push_str(&format!("{}  {} v{}  {}\n", text(r, "id"), text(r, "workflow"), r["version"], text(r, "state")));
    }
    if page["next_cursor"].is_string() {
        out.push_str("(more: raise --limit, or use --json for the cursor)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_is_a_few_lines_with_its_error_and_a_cut_output() {
        let j = json!({"id": "0199", "kind": "http", "queue": "default", "state": "dead", "attempts_used": 3,
                       "max_attempts": 3, "error": {"type": "network", "message": "connection\nrefused"},
                       "output": {"body": "x".repeat(500)}, "attempts": [{}, {}, {}], "input": {"url": "u"}});
        let shown = job(&j);
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(shown.contains("job 0199  http on queue default: dead"), "{shown}");
        assert!(shown.contains("3 of 3") && shown.contains("network: connection refused"), "{shown}");
        let output = shown.lines().last().unwrap();
        assert!(output.ends_with('…') && output.chars().count() < LINE_CHARS + 20, "{output}");
    }

    #[test]
    fn a_run_is_a_line_per_node_with_its_failures() {
        let r = json!({"id": "r1", "workflow": "enrich", "version": 2, "state": "failed",
                       "error": {"type": "validation", "message": "node `each` failed"},
                       "nodes": [{"id": "fetch", "state": "succeeded", "attempts": 1, "error": null, "jobs": []},
                                 {"id": "each", "state": "failed", "items": 2, "attempts": 3,
                                  "error": {"type": "exit_status", "message": "exit 1"},
                                  "jobs": [{"state": "succeeded"}, {"state": "dead"}]}]});
        let shown = run(&r);
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(shown.starts_with("run r1  enrich v2: failed\n"), "{shown}");
        assert!(shown.contains("1/2 elements  (3 attempts)  exit_status: exit 1"), "{shown}");
        let again = json!({"id": "j", "state": "queued", "created": false});
        assert_eq!(accepted("job", &again), "job j: queued (an existing one: its idempotency key matched)\n");
    }

    #[test]
    fn lists_say_when_empty_or_cut() {
        assert_eq!(job_list(&json!({"items": [], "next_cursor": null})), "no jobs\n");
        let page = json!({"items": [{"id": "a", "kind": "fail", "queue": "default", "state": "dead",
                          "attempts_used": 1, "max_attempts": 1, "error": {"type": "validation", "message": "no"}}],
                          "next_cursor": "c"});
        let shown = job_list(&page);
        assert!(shown.starts_with("a  fail") && shown.contains("validation: no") && shown.contains("more"), "{shown}");
    }
}
