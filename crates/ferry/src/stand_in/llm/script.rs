//! The stand-in LLM's script: which reply a request gets, and the answer made of it. Pure:
//! the server ([`super::StandInLlm`]) only keeps the counters and sends what this decides.
//!
//! ```json
//! {"conversations": [
//!    {"match": "triage", "turns": [
//!       [{"status": 500}, {"content": "hello"}],
//!       {"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}], "usage": {"prompt_tokens": 10}},
//!       {"content": "{\"answer\": 1}", "delay_ms": 1000}
//!    ]}
//!  ], "default": {"content": "ok"}}
//! ```
//!
//! A request belongs to the first conversation whose `match` is a substring of the
//! content of the request's first `system` message or of its first `user` message; else
//! to `default`, and without a default it is answered 404. Its turn is the number of
//! `assistant` messages it holds (0 for the first call of a conversation, 1 after the
//! model's first reply was added, …). A turn is one reply, or a list of replies given to
//! successive calls of that conversation and turn (the last one repeats); a turn past the
//! end of `turns` is the last turn (sharing its calls). `default` is a turn too.
//!
//! A reply: `content` (a string); `tool_calls` (`[{"id"?, "name", "arguments"}]`: an
//! `id` defaults to `call_<turn>_<i>`, and `arguments` is sent as OpenAI sends it, as JSON
//! text, a string being sent as is, so a script can send arguments that do not parse);
//! `usage` (`prompt_tokens`, `completion_tokens`, `total_tokens`, each defaulted: the
//! request's message contents' characters / 4, the reply's content and arguments'
//! characters / 4, both rounded up and at least 1, and their sum); `finish_reason`
//! (default `tool_calls` when there are tool calls, else `stop`); `status` (an HTTP status
//! from 400 to 599 to answer instead, with an OpenAI-style error body); `body` (any JSON,
//! answered as it is, with `status` or 200: a reply that is no chat completion);
//! `retry_after` (a `Retry-After` header value); `delay_ms` (how long to wait before
//! answering).
//!
//! `fixtures` (`{"/orders/A-7": {"status": "shipped"}}`) are answered to `GET` at exactly
//! that path (its query ignored) as JSON: something for a demo agent's `http` tool to
//! call without another server.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// A script, checked.
#[derive(Debug, Clone)]
pub struct Script {
    conversations: Vec<Conversation>,
    default: Option<Turn>,
    fixtures: HashMap<String, Value>,
}

#[derive(Debug, Clone)]
struct Conversation {
    matcher: String,
    turns: Vec<Turn>,
}

/// The replies of one turn, for its successive calls.
#[derive(Debug, Clone)]
struct Turn(Vec<Reply>);

/// One scripted reply.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    usage: Usage,
    finish_reason: Option<String>,
    status: Option<u16>,
    body: Option<Value>,
    retry_after: Option<String>,
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCall {
    id: Option<String>,
    name: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// Which replies a request's calls take turns on: a conversation (by its index; `None`
/// for `default`) and a turn of it.
pub type Slot = (Option<usize>, usize);

/// What the server sends for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
    pub body: Value,
}

/// A request's place in the script: its conversation (`None`: `default`) and turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub conversation: Option<usize>,
    pub turn: usize,
}

impl Script {
    /// Reads a script, or says what is wrong with it and where (`conversations[0].turns[1]`).
    pub fn parse(script: &Value) -> Result<Script, String> {
        let Some(top) = script.as_object() else { return Err("a script must be a JSON object".into()) };
        if let Some(unknown) = top.keys().find(|k| !["conversations", "default", "fixtures"].contains(&k.as_str())) {
            return Err(format!(
                "`{unknown}` is not a field of a script; the fields are conversations, default, fixtures"
            ));
        }
        let fixtures = match top.get("fixtures") {
            None | Some(Value::Null) => HashMap::new(),
            Some(Value::Object(map)) => {
                if let Some(bad) = map.keys().find(|p| !p.starts_with('/')) {
                    return Err(format!("fixtures: `{bad}` is not a path (it starts with `/`)"));
                }
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            Some(_) => return Err("fixtures: must be an object of paths to JSON answers".into()),
        };
        let conversations = match top.get("conversations") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, c)| Conversation::parse(c, &format!("conversations[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("conversations: must be an array".into()),
        };
        let default = match top.get("default") {
            None | Some(Value::Null) => None,
            Some(turn) => Some(Turn::parse(turn, "default")?),
        };
        Ok(Script { conversations, default, fixtures })
    }

    /// The fixture answered at `path`, if any.
    pub fn fixture(&self, path: &str) -> Option<&Value> {
        self.fixtures.get(path)
    }

    /// Where a request (a chat completion request's body) belongs; `None` when no
    /// conversation matches and there is no default.
    pub fn place(&self, request: &Value) -> Option<Place> {
        let messages = request.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let first = |role: &str| messages.iter().find(|m| m["role"] == role).map(|m| text(&m["content"]));
        let (system, user) = (first("system"), first("user"));
        let said = |matcher: &str| [&system, &user].into_iter().flatten().any(|t| t.contains(matcher));
        let conversation = self.conversations.iter().position(|c| said(&c.matcher));
        if conversation.is_none() && self.default.is_none() {
            return None;
        }
        let turn = messages.iter().filter(|m| m["role"] == "assistant").count();
        Some(Place { conversation, turn })
    }

    /// The reply for a request at `place`, counting the call in `calls` (per slot).
    pub fn reply(&self, place: Place, calls: &mut HashMap<Slot, usize>) -> &Reply {
        let (turn, index) = match place.conversation {
            Some(c) => {
                let turns = &self.conversations[c].turns;
                let index = place.turn.min(turns.len() - 1);
                (&turns[index], index)
            }
            None => (self.default.as_ref().expect("placed in default only when there is one"), 0),
        };
        let seen = calls.entry((place.conversation, index)).or_default();
        let reply = &turn.0[(*seen).min(turn.0.len() - 1)];
        *seen += 1;
        reply
    }

    /// The `match` of a conversation, for the log.
    pub fn matcher(&self, conversation: usize) -> &str {
        &self.conversations[conversation].matcher
    }
}

impl Conversation {
    fn parse(value: &Value, at: &str) -> Result<Conversation, String> {
        let Some(obj) = value.as_object() else {
            return Err(format!("{at}: must be an object with `match` and `turns`"));
        };
        if let Some(unknown) = obj.keys().find(|k| !["match", "turns"].contains(&k.as_str())) {
            return Err(format!("{at}: `{unknown}` is not a field of a conversation; the fields are match, turns"));
        }
        let matcher = match obj.get("match") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(format!("{at}.match: must be a non-empty string")),
        };
        let turns = match obj.get("turns") {
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, t)| Turn::parse(t, &format!("{at}.turns[{i}]")))
                .collect::<Result<_, _>>()?,
            _ => return Err(format!("{at}.turns: must be a non-empty array of turns")),
        };
        Ok(Conversation { matcher, turns })
    }
}

impl Turn {
    fn parse(value: &Value, at: &str) -> Result<Turn, String> {
        match value {
            Value::Array(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, r)| Reply::parse(r, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Turn),
            Value::Array(_) => Err(format!("{at}: a list of replies must not be empty")),
            reply => Ok(Turn(vec![Reply::parse(reply, at)?])),
        }
    }
}

impl Reply {
    fn parse(value: &Value, at: &str) -> Result<Reply, String> {
        if !value.is_object() {
            return Err(format!("{at}: a reply must be an object (or a turn a list of them)"));
        }
        let reply: Reply = serde_json::from_value(value.clone()).map_err(|e| format!("{at}: {e}"))?;
        if let Some(s) = reply.status
            && !(400..=599).contains(&s)
            && reply.body.is_none()
        {
            return Err(format!("{at}.status: must be an HTTP error status, 400 to 599 (or come with a `body`)"));
        }
        if reply.status.is_some_and(|s| !(200..=599).contains(&s)) {
            return Err(format!("{at}.status: must be from 200 to 599"));
        }
        if let Some(r) = &reply.retry_after
            && (r.is_empty() || !r.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            return Err(format!("{at}.retry_after: must be a header value (seconds, or an HTTP date)"));
        }
        Ok(reply)
    }

    /// The answer to `request`, at `turn`, as call number `call` of the server (for the
    /// completion's id) at Unix time `created`.
    pub fn answer(&self, request: &Value, turn: usize, call: usize, created: i64) -> Answer {
        let delay = Duration::from_millis(self.delay_ms);
        let retry_after = self.retry_after.clone();
        let status = self.status.unwrap_or(200);
        let body = match (&self.body, status) {
            (Some(body), _) => body.clone(),
            (None, status) if status >= 400 => error_body(status, &format!("stand-in: the script answers {status}")),
            (None, _) => self.completion(request, turn, call, created),
        };
        Answer { status, retry_after, delay, body }
    }

    fn completion(&self, request: &Value, turn: usize, call: usize, created: i64) -> Value {
        let tool_calls: Vec<Value> = self
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let arguments = match &t.arguments {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".to_string(),
                    other => other.to_string(),
                };
                let id = t.id.clone().unwrap_or_else(|| format!("call_{turn}_{i}"));
                json!({"id": id, "type": "function", "function": {"name": t.name, "arguments": arguments}})
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": self.content});
        if !tool_calls.is_empty() {
            message["tool_calls"] = json!(tool_calls);
        }
        let said: usize = self.content.as_deref().map_or(0, |c| c.chars().count())
            + tool_calls
                .iter()
                .map(|t| t["function"]["arguments"].as_str().map_or(0, |a| a.chars().count()))
                .sum::<usize>();
        let heard: usize = request
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|m| text(&m["content"]).chars().count())
            .sum();
        let prompt = self.usage.prompt_tokens.unwrap_or_else(|| tokens(heard));
        let completion = self.usage.completion_tokens.unwrap_or_else(|| tokens(said));
        let total = self.usage.total_tokens.unwrap_or(prompt + completion);
        let finish = self
            .finish_reason
            .clone()
            .unwrap_or_else(|| if tool_calls.is_empty() { "stop" } else { "tool_calls" }.to_string());
        json!({
            "id": format!("chatcmpl-standin-{call}"),
            "object": "chat.completion",
            "created": created,
            "model": request.get("model").and_then(Value::as_str).unwrap_or("stand-in"),
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total},
        })
    }
}

/// The stand-in's token count of `chars` characters: a quarter, rounded up, at least 1.
fn tokens(chars: usize) -> u64 {
    (chars.div_ceil(4) as u64).max(1)
}

/// A message's content as text: a string, or the text of its parts.
fn text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// An error answer's body as OpenAI shapes it.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(system: Option<&str>, user: &str, assistants: usize) -> Value {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": user}));
        for i in 0..assistants {
            messages.push(json!({"role": "assistant", "content": format!("reply {i}")}));
            messages.push(json!({"role": "tool", "tool_call_id": "c", "content": "result"}));
        }
        json!({"model": "m", "messages": messages})
    }

    /// The contents (or statuses) a script gives `requests`, in order, from fresh counters.
    fn check(script: Value, requests: &[Value]) -> Vec<String> {
        let script = Script::parse(&script).unwrap();
        let mut calls = HashMap::new();
        requests
            .iter()
            .map(|r| match script.place(r) {
                None => "none".to_string(),
                Some(place) => {
                    let answer = script.reply(place, &mut calls).answer(r, place.turn, 1, 0);
                    match answer.body["choices"][0]["message"]["content"].as_str() {
                        Some(c) => c.to_string(),
                        None => answer.status.to_string(),
                    }
                }
            })
            .collect()
    }

    #[test]
    fn a_request_goes_to_the_first_conversation_its_system_or_user_message_names() {
        let script = json!({"conversations": [
            {"match": "triage", "turns": [{"content": "T"}]},
            {"match": "summar", "turns": [{"content": "S"}]},
            {"match": "both", "turns": [{"content": "B"}]},
        ], "default": {"content": "D"}});
        let got = check(
            script,
            &[
                request(Some("You triage tickets"), "hello", 0),
                request(None, "please summarise this", 0),
                request(Some("summarise, then triage"), "x", 0),
                request(Some("nothing"), "nothing either", 0),
                request(Some("first system"), "mentions both", 0),
            ],
        );
        assert_eq!(got, ["T", "S", "T", "D", "B"], "the first conversation in script order wins");
    }

    #[test]
    fn only_the_first_system_and_user_messages_are_matched() {
        let script = json!({"conversations": [{"match": "needle", "turns": [{"content": "N"}]}]});
        let mut late = request(Some("a"), "b", 0);
        late["messages"].as_array_mut().unwrap().push(json!({"role": "user", "content": "needle"}));
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a needle"}]}]});
        assert_eq!(check(script, &[late, parts]), ["none", "N"], "no default: a request nothing matches is unplaced");
    }

    #[test]
    fn the_turn_is_the_number_of_assistant_messages_and_past_the_end_repeats_the_last() {
        let script =
            json!({"conversations": [{"match": "x", "turns": [{"content": "0"}, {"content": "1"}, {"content": "2"}]}]});
        let got = check(script, &(0..5).map(|n| request(None, "x", n)).collect::<Vec<_>>());
        assert_eq!(got, ["0", "1", "2", "2", "2"]);
    }

    #[test]
    fn a_list_of_replies_serves_successive_calls_of_its_turn_the_last_repeating() {
        let script = json!({"conversations": [{"match": "x", "turns": [
            [{"status": 500}, {"status": 429, "retry_after": "1"}, {"content": "ok"}],
            {"content": "second"},
        ]}], "default": [{"content": "d1"}, {"content": "d2"}]});
        let (x0, x1, other) = (request(None, "x", 0), request(None, "x", 1), request(None, "y", 0));
        let got = check(
            script,
            &[x0.clone(), x1.clone(), x0.clone(), other.clone(), x0.clone(), x0, x1, other.clone(), other],
        );
        assert_eq!(got, ["500", "second", "429", "d1", "ok", "ok", "second", "d2", "d2"]);
    }

    #[test]
    fn a_completion_is_shaped_as_openai_answers() {
        let script = Script::parse(&json!({"default": {"tool_calls": [
            {"name": "lookup", "arguments": {"q": "x"}},
            {"id": "mine", "name": "raw", "arguments": "{not json"},
        ]}}))
        .unwrap();
        let req = json!({"model": "gpt-x", "messages": [{"role": "user", "content": "abcdefghi"}]});
        let place = script.place(&req).unwrap();
        let answer = script.reply(place, &mut HashMap::new()).answer(&req, place.turn, 7, 1_700_000_000);
        assert_eq!((answer.status, answer.delay, &answer.retry_after), (200, Duration::ZERO, &None));
        let body = answer.body;
        assert_eq!(
            (&body["id"], &body["object"], &body["created"]),
            (&json!("chatcmpl-standin-7"), &json!("chat.completion"), &json!(1_700_000_000))
        );
        assert_eq!(body["model"], "gpt-x", "the model is echoed");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([
                {"id": "call_0_0", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}},
                {"id": "mine", "type": "function", "function": {"name": "raw", "arguments": "{not json"}},
            ])
        );
        // 9 characters heard: 3 tokens; 9 + 9 characters of arguments said: 5 tokens.
        assert_eq!(body["usage"], json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}));
    }

    #[test]
    fn usage_defaults_fill_what_the_script_leaves_out() {
        let script = Script::parse(
            &json!({"default": {"content": "", "usage": {"prompt_tokens": 10}, "finish_reason": "length"}}),
        )
        .unwrap();
        let req = json!({"messages": [{"role": "user", "content": "hi"}]});
        let answer = script.reply(script.place(&req).unwrap(), &mut HashMap::new()).answer(&req, 0, 1, 0);
        assert_eq!(answer.body["usage"], json!({"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}));
        assert_eq!(
            (&answer.body["model"], &answer.body["choices"][0]["finish_reason"]),
            (&json!("stand-in"), &json!("length"))
        );
        assert!(answer.body["choices"][0]["message"].get("tool_calls").is_none(), "no tool calls, no field");
    }

    #[test]
    fn errors_delays_and_raw_bodies() {
        let script = Script::parse(&json!({"default": [
            {"status": 429, "retry_after": "2", "delay_ms": 30},
            {"body": "not a completion"},
            {"status": 503, "body": {"oops": true}},
        ]}))
        .unwrap();
        let req = json!({"messages": [{"role": "user", "content": "hi"}]});
        let mut calls = HashMap::new();
        let mut next = || script.reply(script.place(&req).unwrap(), &mut calls).answer(&req, 0, 1, 0);
        let limited = next();
        assert_eq!(
            (limited.status, limited.retry_after.as_deref(), limited.delay),
            (429, Some("2"), Duration::from_millis(30))
        );
        assert_eq!(limited.body["error"]["type"], "rate_limit_error");
        let raw = next();
        assert_eq!((raw.status, raw.body), (200, json!("not a completion")));
        let raw = next();
        assert_eq!((raw.status, raw.body), (503, json!({"oops": true})));
    }

    #[test]
    fn a_bad_script_is_refused_saying_where() {
        let err = |s: Value| Script::parse(&s).unwrap_err();
        assert!(err(json!([])).contains("JSON object"));
        assert!(err(json!({"conversation": []})).contains("`conversation`"));
        assert!(err(json!({"conversations": [{"match": "", "turns": [{}]}]})).starts_with("conversations[0].match"));
        assert!(err(json!({"conversations": [{"match": "a", "turns": []}]})).starts_with("conversations[0].turns"));
        let e = err(json!({"conversations": [{"match": "a", "turns": [{}, [{"contnet": "x"}]]}]}));
        assert!(e.starts_with("conversations[0].turns[1][0]: unknown field `contnet`"), "{e}");
        assert!(err(json!({"default": {"status": 200}})).starts_with("default.status"));
        assert!(err(json!({"default": []})).contains("must not be empty"));
        assert!(err(json!({"default": {"retry_after": ""}})).starts_with("default.retry_after"));
        assert!(err(json!({"fixtures": {"orders": {}}})).contains("`orders` is not a path"));
        assert!(err(json!({"fixtures": []})).starts_with("fixtures:"));
        Script::parse(&json!({})).unwrap();
        let with = Script::parse(&json!({"fixtures": {"/orders/A-7": {"status": "shipped"}}})).unwrap();
        assert_eq!(with.fixture("/orders/A-7"), Some(&json!({"status": "shipped"})));
        assert_eq!(with.fixture("/orders/A-8"), None);
    }
}
