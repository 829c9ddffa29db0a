//! Escalation rules: when Ferry tells a person, through a `webhook` job to a configured
//! endpoint, that something needs them. The rules are the operator's (`[escalation]` in
//! the configuration); this module holds their configuration as written, and the one
//! parser that turns a rule's `when` text into a typed [`Condition`]. It is pure: the
//! server's evaluator (`ferry_worker::escalation`) reads what a rule needs through the
//! store, and the store decides that a group fires at most once per window.
//!
//! # The `when` grammar
//!
//! ```text
//! when      = failures | breaker | dead
//! failures  = clause { "and" clause }        one `count` clause; each other at most once
//! clause    = "count" ">=" N [ "in" DURATION ]
//!           | "severity" ">=" ("low" | "medium" | "high" | "critical")
//!           | "queue" "=" NAME | "kind" "=" NAME | "type" "=" ERROR_TYPE
//! breaker   = "breaker" "opens" [ "on" KEY ]   KEY: the rest of the text, as written
//! dead      = "dead" [ "on" "queue" NAME ]
//! DURATION  = N ("ms" | "s" | "m" | "h" | "d"), at most one day
//! ```
//!
//! Keywords are lowercase; `>=` and `=` may touch their words (`severity>=high`).
//! Examples: `severity >= high and count >= 20 in 5m`, `count >= 3 and queue = billing
//! and type = timeout` (with the rule's `window`), `breaker opens`, `breaker opens on
//! https://api.partner.example:443`, `dead on queue payments`, `dead`.
//!
//! A rule's window is the `in` of its count clause or its `window` setting (one of the
//! two, never both); a `breaker opens` or `dead` rule without a `window` has
//! [`DEFAULT_WINDOW_MS`]. The window is both what a count counts over and how long a
//! group stays quiet after it fired.

use crate::{ErrorType, Severity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The window of a `breaker opens` or `dead` rule that sets none: five minutes.
pub const DEFAULT_WINDOW_MS: u64 = 5 * 60_000;
/// The longest window: a day. Windows bound how far back each evaluation reads.
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// The largest `count` of a rule: the evaluator reads at most this many failures per
/// evaluation (the newest), so a threshold above it could never be reached.
pub const MAX_COUNT: u64 = 10_000;
/// The default workspace of escalation jobs.
pub const DEFAULT_WORKSPACE: &str = "escalation";
/// The default interval between evaluations.
pub const DEFAULT_TICK_MS: u64 = 5_000;

/// What an endpoint receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Slack-compatible: `{"text": …, "blocks": […]}` (Slack, Mattermost, Rocket.Chat…).
    #[default]
    Slack,
    /// Ferry's own JSON: the rule, the group's fields, the count and the times.
    Json,
}

/// Where a rule's escalations go (`[escalation.endpoints.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// An `http` or `https` URL; each escalation is one POST to it.
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// The name of a signing secret of `[webhooks.secrets]`; unset: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One rule as written (`[[escalation.rules]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name: in logs, metrics (`ferry_escalations_total{rule}`), payloads.
    pub name: String,
    /// When it fires (the module's grammar).
    pub when: String,
    /// The endpoint it notifies.
    pub notify: String,
    /// Its window when `when` has none (`10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// The `[escalation]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// The workspace escalation jobs belong to; rules never read it, so an escalation
    /// cannot escalate about itself.
    pub workspace: String,
    /// How often each server node evaluates the rules (jittered).
    pub tick_ms: u64,
    /// Endpoints by name.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    pub rules: Vec<RuleConfig>,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            workspace: DEFAULT_WORKSPACE.into(),
            tick_ms: DEFAULT_TICK_MS,
            endpoints: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

impl EscalationConfig {
    /// Checks everything and returns the typed rules: names, endpoints (each rule's
    /// `notify` names one; each endpoint's `secret` is one `has_secret` knows), and each
    /// `when`. An error names the rule or endpoint and what is wrong.
    pub fn rules(&self, has_secret: impl Fn(&str) -> bool) -> Result<Vec<Rule>, String> {
        if !crate::job::valid_name(&self.workspace) {
            return Err(format!("escalation.workspace `{}` {}", self.workspace, crate::job::NAME_RULE));
        }
        if self.tick_ms == 0 {
            return Err("escalation.tick_ms must be positive".into());
        }
        for (name, e) in &self.endpoints {
            let host = e.url.strip_prefix("https://").or_else(|| e.url.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return Err(format!("escalation.endpoints.{name}.url: `{}` is not an http or https URL", e.url));
            }
            if let Some(secret) = &e.secret
                && !has_secret(secret)
            {
                return Err(format!(
                    "escalation.endpoints.{name}.secret: there is no secret `{secret}` in [webhooks.secrets]"
                ));
            }
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for r in &self.rules {
            if !crate::job::valid_name(&r.name) {
                return Err(format!("escalation rule `{}`: the name {}", r.name, crate::job::NAME_RULE));
            }
            if rules.iter().any(|seen| seen.name == r.name) {
                return Err(format!("escalation rule `{}`: two rules have this name", r.name));
            }
            if !self.endpoints.contains_key(&r.notify) {
                let known: Vec<&str> = self.endpoints.keys().map(String::as_str).collect();
                return Err(format!(
                    "escalation rule `{}`: notify = `{}` is no endpoint of [escalation.endpoints] (configured: {})",
                    r.name,
                    r.notify,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ));
            }
            rules.push(Rule::parse(r).map_err(|e| e.to_string())?);
        }
        Ok(rules)
    }
}

/// What makes a rule fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// At least `count` failed attempts of one group (as `GET /v1/errors` groups them) in
    /// the window, each at least `severity`, of the queue, kind and type given.
    Failures {
        count: u64,
        severity: Option<Severity>,
        queue: Option<String>,
        kind: Option<String>,
        error_type: Option<ErrorType>,
    },
    /// A circuit breaker (this one, or any) opened.
    BreakerOpens { key: Option<String> },
    /// A job went dead (on this queue, or any).
    Dead { queue: Option<String> },
}

/// A rule, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The `when` as written, for payloads and logs.
    pub when: String,
    pub condition: Condition,
    /// What a count counts over, and how long a group stays quiet after it fired.
    pub window_ms: u64,
    /// The endpoint's name.
    pub notify: String,
}

/// Why a rule is refused: its name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "escalation rule `{}`: {}", self.rule, self.message)
    }
}

impl std::error::Error for RuleError {}

impl Rule {
    /// Parses a rule as written (see the module's grammar).
    pub fn parse(r: &RuleConfig) -> Result<Rule, RuleError> {
        let fail = |message: String| RuleError { rule: r.name.clone(), message };
        let (condition, within) = condition(&r.when).map_err(|m| fail(format!("when = \"{}\": {m}", r.when)))?;
        let window = match &r.window {
            Some(w) => Some(duration(w).map_err(|m| fail(format!("window = \"{w}\": {m}")))?),
            None => None,
        };
        let window_ms = match (within, window, &condition) {
            (Some(_), Some(_), _) => {
                return Err(fail("the window is given twice: in `when` (`in …`) and as `window`; keep one".into()));
            }
            (Some(w), None, _) | (None, Some(w), _) => w,
            (None, None, Condition::Failures { .. }) => {
                return Err(fail(format!(
                    "when = \"{}\": a count needs a window: `count >= N in 5m`, or `window = \"5m\"`",
                    r.when
                )));
            }
            (None, None, _) => DEFAULT_WINDOW_MS,
        };
        Ok(Rule { name: r.name.clone(), when: r.when.clone(), condition, window_ms, notify: r.notify.clone() })
    }
}

/// The words of a `when`, with `>=` and `=` split from the words they touch.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in text.split_whitespace() {
        let mut rest = chunk;
        while !rest.is_empty() {
            match rest.find(['>', '=']) {
                Some(0) => {
                    let op = if rest.starts_with(">=") { ">=" } else { &rest[..1] };
                    out.push(op.to_string());
                    rest = &rest[op.len()..];
                }
                Some(i) => {
                    out.push(rest[..i].to_string());
                    rest = &rest[i..];
                }
                None => {
                    out.push(rest.to_string());
                    rest = "";
                }
            }
        }
    }
    out
}

/// A `when`'s condition and the window its count clause gives, if any.
fn condition(text: &str) -> Result<(Condition, Option<u64>), String> {
    let w = words(text);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        [] => Err("is empty; expected `count >= N in 5m …`, `breaker opens` or `dead on queue NAME`".into()),
        ["breaker", rest @ ..] => match rest {
            ["opens"] => Ok((Condition::BreakerOpens { key: None }, None)),
            ["opens", "on"] => Err("`breaker opens on` needs a breaker key after it".into()),
            ["opens", "on", ..] => {
                // The key is the rest of the text as written: keys hold `:`, `/`, `=`.
                let after_on = text.trim_start()["breaker".len()..].trim_start()["opens".len()..].trim_start();
                let key = after_on["on".len()..].trim();
                Ok((Condition::BreakerOpens { key: Some(key.to_string()) }, None))
            }
            _ => Err("expected `breaker opens` or `breaker opens on KEY`".into()),
        },
        ["dead"] => Ok((Condition::Dead { queue: None }, None)),
        ["dead", "on", "queue", q] => Ok((Condition::Dead { queue: Some(name("queue", q)?) }, None)),
        ["dead", ..] => Err("expected `dead` or `dead on queue NAME`".into()),
        _ => failures(&w),
    }
}

fn name(what: &str, value: &str) -> Result<String, String> {
    match crate::job::valid_name(value) {
        true => Ok(value.to_string()),
        false => Err(format!("`{value}` is not a {what} name: it {}", crate::job::NAME_RULE)),
    }
}

/// The clauses of a failure count, joined by `and`.
fn failures(w: &[&str]) -> Result<(Condition, Option<u64>), String> {
    let mut count: Option<(u64, Option<u64>)> = None;
    let (mut severity, mut queue, mut kind, mut error_type) = (None, None, None, None);
    for clause in w.split(|word| *word == "and") {
        let twice = |what: &str| Err(format!("`{what}` is given twice"));
        match clause {
            [] => return Err("`and` needs a clause on each side".into()),
            ["count", ">=", n, rest @ ..] => {
                if count.is_some() {
                    return twice("count");
                }
                let n: u64 = n.parse().map_err(|_| format!("`count >= {n}`: expected a whole number"))?;
                if n == 0 || n > MAX_COUNT {
                    return Err(format!("`count >= {n}`: the count must be between 1 and {MAX_COUNT}"));
                }
                let within = match rest {
                    [] => None,
                    ["in", d] => Some(duration(d)?),
                    _ => return Err(format!("after `count >= {n}`: expected `in DURATION` (`in 5m`) or `and`")),
                };
                count = Some((n, within));
            }
            ["count", ..] => return Err("expected `count >= N` (a whole number) with `>=`".into()),
            ["severity", ">=", s] => {
                if severity.is_some() {
                    return twice("severity");
                }
                severity = Some(s.parse::<Severity>()?);
            }
            ["severity", ..] => return Err("expected `severity >= low|medium|high|critical`".into()),
            ["queue", "=", q] if queue.is_none() => queue = Some(name("queue", q)?),
            ["kind", "=", k] if kind.is_none() => kind = Some(name("kind", k)?),
            ["type", "=", t] if error_type.is_none() => error_type = Some(t.parse::<ErrorType>()?),
            [f @ ("queue" | "kind" | "type"), "=", _] => return twice(f),
            [f @ ("queue" | "kind" | "type"), ..] => return Err(format!("expected `{f} = NAME`")),
            [other, ..] => {
                return Err(format!(
                    "unknown clause at `{other}`; expected `count >= N in 5m`, `severity >= LEVEL`, `queue = NAME`, \
                     `kind = NAME`, `type = ERROR_TYPE`, `breaker opens` or `dead on queue NAME`"
                ));
            }
        }
    }
    let Some((count, within)) = count else {
        return Err("a failure rule needs `count >= N` (with `in 5m` or a `window`)".into());
    };
    Ok((Condition::Failures { count, severity, queue, kind, error_type }, within))
}

/// A duration such as `500ms`, `2s`, `5m`, `1h`, `1d`, in milliseconds: positive, at most
/// [`MAX_WINDOW_MS`].
pub fn duration(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration; expected a whole number and ms, s, m, h or d (`5m`)");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.saturating_mul(scale);
    if ms == 0 || ms > MAX_WINDOW_MS {
        return Err(format!("`{text}`: a window must be more than 0 and at most a day"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(when: &str, window: Option<&str>) -> Result<Rule, RuleError> {
        Rule::parse(&RuleConfig {
            name: "r1".into(),
            when: when.into(),
            notify: "ops".into(),
            window: window.map(str::to_string),
        })
    }

    fn failures(count: u64, severity: Option<Severity>) -> Condition {
        Condition::Failures { count, severity, queue: None, kind: None, error_type: None }
    }

    /// Each form of the grammar, with the condition and window it parses to.
    #[test]
    fn every_form_parses() {
        let cases: Vec<(&str, Option<&str>, Condition, u64)> = vec![
            ("severity >= high and count >= 20 in 5m", None, failures(20, Some(Severity::High)), 300_000),
            ("count >= 20 in 5m and severity >= high", None, failures(20, Some(Severity::High)), 300_000),
            ("severity>=critical and count>=1 in 2s", None, failures(1, Some(Severity::Critical)), 2_000),
            ("count >= 3", Some("10m"), failures(3, None), 600_000),
            (
                "count >= 5 in 1h and queue = billing and kind = http and type = timeout",
                None,
                Condition::Failures {
                    count: 5,
                    severity: None,
                    queue: Some("billing".into()),
                    kind: Some("http".into()),
                    error_type: Some(ErrorType::Timeout),
                },
                3_600_000,
            ),
            ("breaker opens", None, Condition::BreakerOpens { key: None }, DEFAULT_WINDOW_MS),
            ("breaker opens", Some("1d"), Condition::BreakerOpens { key: None }, 86_400_000),
            (
                "breaker  opens on https://api.example:443/a=b ",
                None,
                Condition::BreakerOpens { key: Some("https://api.example:443/a=b".into()) },
                DEFAULT_WINDOW_MS,
            ),
            ("dead on queue payments", Some("500ms"), Condition::Dead { queue: Some("payments".into()) }, 500),
            ("dead", None, Condition::Dead { queue: None }, DEFAULT_WINDOW_MS),
        ];
        for (when, window, condition, window_ms) in cases {
            let r = rule(when, window).unwrap_or_else(|e| panic!("{when}: {e}"));
            assert_eq!((r.condition, r.window_ms), (condition, window_ms), "{when}");
            assert_eq!(r.when, when);
        }
    }

    /// Each error, naming the rule and what is wrong.
    #[test]
    fn every_error_names_the_rule_and_the_problem() {
        let cases = [
            ("", None, "is empty"),
            ("count >= 20", None, "a count needs a window"),
            ("count >= 20 in 5m", Some("5m"), "the window is given twice"),
            ("count >= 0 in 5m", None, "between 1 and 10000"),
            ("count >= 10001 in 5m", None, "between 1 and 10000"),
            ("count >= many in 5m", None, "expected a whole number"),
            ("count > 5 in 5m", None, "expected `count >= N`"),
            ("count >= 5 in 5 minutes", None, "expected `in DURATION`"),
            ("count >= 5 in 5x", None, "`5x` is not a duration"),
            ("count >= 5 in 2d", None, "at most a day"),
            ("count >= 5 in 0s", None, "more than 0"),
            ("count >= 5 in 5m and count >= 6", None, "`count` is given twice"),
            ("severity >= high", Some("5m"), "needs `count >= N`"),
            ("severity >= urgent and count >= 1 in 1m", None, "unknown severity `urgent`"),
            ("severity = high and count >= 1 in 1m", None, "expected `severity >= "),
            ("count >= 1 in 1m and severity >= low and severity >= high", None, "`severity` is given twice"),
            ("count >= 1 in 1m and queue = a and queue = b", None, "`queue` is given twice"),
            ("count >= 1 in 1m and queue = no/slash", None, "`no/slash` is not a queue name"),
            ("count >= 1 in 1m and type = oops", None, "oops"),
            ("count >= 1 in 1m and", None, "`and` needs a clause"),
            ("count >= 1 in 1m or dead", None, "expected `in DURATION`"),
            ("count >= 1 in 1m and colour = red", None, "unknown clause at `colour`"),
            ("breaker closes", None, "expected `breaker opens`"),
            ("breaker opens on", None, "needs a breaker key"),
            ("dead on billing", None, "expected `dead` or `dead on queue NAME`"),
            ("dead", Some("forever"), "window = \"forever\""),
        ];
        for (when, window, want) in cases {
            let err = rule(when, window).expect_err(when);
            assert_eq!(err.rule, "r1");
            let text = err.to_string();
            assert!(text.starts_with("escalation rule `r1`: "), "{text}");
            assert!(text.contains(want), "{when}: `{text}` does not say `{want}`");
        }
    }

    #[test]
    fn durations() {
        for (text, ms) in [("500ms", 500), ("2s", 2_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000)] {
            assert_eq!(duration(text), Ok(ms), "{text}");
        }
        for bad in ["", "m", "5", "-5m", "5 m", "1.5m", "5M", "25h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    fn config() -> EscalationConfig {
        let mut c = EscalationConfig::default();
        c.endpoints.insert(
            "ops".into(),
            EndpointConfig { url: "https://hooks.example/x".into(), format: Format::Slack, secret: Some("ops".into()) },
        );
        c.rules.push(RuleConfig { name: "dead".into(), when: "dead".into(), notify: "ops".into(), window: None });
        c
    }

    #[test]
    fn the_configuration_is_checked_as_a_whole() {
        let known = |s: &str| s == "ops";
        assert_eq!(config().rules(known).unwrap().len(), 1);
        let mut c = config();
        c.rules.push(c.rules[0].clone());
        assert!(c.rules(known).unwrap_err().contains("two rules have this name"));
        let mut c = config();
        c.rules[0].notify = "pager".into();
        let err = c.rules(known).unwrap_err();
        assert!(err.contains("rule `dead`") && err.contains("`pager`") && err.contains("configured: ops"), "{err}");
        let err = config().rules(|_| false).unwrap_err();
        assert!(err.contains("escalation.endpoints.ops.secret") && err.contains("no secret `ops`"), "{err}");
        let mut c = config();
        c.endpoints.get_mut("ops").unwrap().url = "ftp://x".into();
        assert!(c.rules(known).unwrap_err().contains("escalation.endpoints.ops.url"));
        let mut c = config();
        c.rules[0].name = "a b".into();
        assert!(c.rules(known).unwrap_err().contains("rule `a b`: the name"));
        let mut c = config();
        c.rules[0].when = "dead on queue".into();
        assert!(c.rules(known).unwrap_err().starts_with("escalation rule `dead`: when = \"dead on queue\""));
        let mut c = config();
        c.workspace = String::new();
        assert!(c.rules(known).unwrap_err().contains("escalation.workspace"));
    }
}
