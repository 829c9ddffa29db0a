//! Workflows: named, versioned DAGs of job specs, and the templates that pass data along.
//!
//! A workflow is a list of nodes. Each node is a job spec (`kind`, `input`, `queue`,
//! `priority`, `max_attempts`, `backoff`, `timeout_ms`, …) plus an `id` and the ids it
//! `depends_on`. A node starts when all of them succeeded (see [`crate::run`]).
//!
//! **References.** A string in a node's `input` may refer to the run's input, to the output
//! of a node upstream of it, or (in a `for_each` node) to its element:
//! `{{ input.url }}`, `{{ nodes.fetch.output.body }}`, `{{ nodes.list.output.items[0] }}`,
//! `{{ item }}`. A path is names (letters, digits, `_`, `-`) joined by `.`, each
//! optionally followed by `[n]` indexes. A string that is exactly one reference takes the
//! referenced value with its JSON type; a reference inside other text is replaced by the
//! value (a string as is, anything else as compact JSON). A reference that resolves to
//! nothing when the node starts is the node's error, never a crash. Object keys are never
//! templated.
//!
//! **Validation** ([`WorkflowSpec::validate`]) refuses, naming the node and field
//! (`nodes[2].depends_on[0]`): a bad name; no nodes or more than [`MAX_NODES`]; bad or
//! duplicate node ids; unknown or self dependencies; cycles; unknown kinds; job fields
//! out of range; malformed references, references to a node that is not upstream, and
//! `item` outside a `for_each` node; a `for_each` that is not one reference; a
//! `concurrency` without `for_each` or out of 1..=1000.

use crate::backoff::Backoff;
use crate::job::{JobSpec, Limits, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use utoipa::ToSchema;

mod start;
pub use start::oversized_first_input;

/// Most nodes in one workflow.
pub const MAX_NODES: usize = 1000;
/// A run's timeout when its workflow gives none: one hour.
pub const DEFAULT_TIMEOUT_MS: u64 = 3_600_000;
/// Elements of a `for_each` node running at once when it gives no `concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// Largest `concurrency` of a `for_each` node.
pub const MAX_CONCURRENCY: u32 = 1000;

/// What a run does when a node fails for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The first failed node fails the run: running nodes are cancelled, waiting ones
    /// skipped.
    #[default]
    FailFast,
    /// Nodes downstream of a failed node are skipped; the others go on. The run fails.
    Continue,
}

/// A workflow definition, as registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// 1 to 64 letters, digits, `_`, `-` or `.`; each registration makes a new version.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub nodes: Vec<NodeSpec>,
    /// Default `fail_fast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// The whole run's timeout (default one hour; ten minutes for a workflow with agent
    /// nodes): then running nodes are stopped, waiting ones skipped, and the run is
    /// `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The agents that `agent` nodes run and hand off to, by name (see [`crate::agent`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, crate::agent::AgentSpec>,
    /// The run's limits over all its agent nodes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_limits: Option<crate::agent::RunLimits>,
}

impl WorkflowSpec {
    /// Whether any node runs an agent.
    pub fn has_agents(&self) -> bool {
        self.nodes.iter().any(|n| n.kind == crate::agent::KIND)
    }

    /// The run's timeout: its own, else ten minutes with agent nodes, else one hour.
    pub fn timeout(&self) -> u64 {
        self.timeout_ms.unwrap_or(if self.has_agents() {
            crate::agent::DEFAULT_RUN_TIMEOUT_MS
        } else {
            DEFAULT_TIMEOUT_MS
        })
    }
}

/// One node: a job spec, its id and its dependencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// 1 to 64 letters, digits, `_` or `-`, unique in the workflow.
    pub id: String,
    pub kind: String,
    /// The job's input (any JSON); strings may hold references (`{{ input.x }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Ids of the nodes that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// One reference to an array (`{{ input.items }}`): the node runs once per element,
    /// which is `{{ item }}` in its input; its output is the list of the elements' outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Elements running at once (default 10, at most 1000); only with `for_each`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// For `kind: "agent"`: the agent (of the workflow's `agents`) the conversation starts
    /// with; the node's `input` is the user's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl NodeSpec {
    /// The job spec of one instance of this node, with its resolved input.
    pub fn job_spec(&self, input: Value) -> JobSpec {
        JobSpec {
            kind: self.kind.clone(),
            input: Some(input),
            queue: self.queue.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            backoff: self.backoff.clone(),
            timeout_ms: self.timeout_ms,
            soft_timeout_ms: self.soft_timeout_ms,
            labels: self.labels.clone(),
            ..JobSpec::default()
        }
    }
}

/// A workflow that passed validation, with what the planner needs precomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub spec: WorkflowSpec,
    /// Node indexes in an order where every node comes after its dependencies (ties in
    /// declaration order).
    pub order: Vec<usize>,
}

/// One reference: its root and the path below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `input…`
    Input(Vec<Step>),
    /// `nodes.<id>.output…`
    Node(String, Vec<Step>),
    /// `item…`
    Item(Vec<Step>),
    /// `args…`: the arguments of an agent's tool call, in the tool's `input`.
    Args(Vec<Step>),
}

/// One step of a path below a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

fn valid_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Parses the inside of `{{ … }}`.
fn parse_reference(text: &str) -> Result<Reference, String> {
    let bad = || format!("`{{{{ {text} }}}}` is not a reference (input…, nodes.<id>.output…, item…, args…)");
    let mut steps = Vec::new();
    for segment in text.trim().split('.') {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if name.is_empty() || !name.bytes().all(valid_name_char) {
            return Err(bad());
        }
        steps.push(Step::Key(name.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            let n: usize = rest[1..close].parse().map_err(|_| bad())?;
            if !rest.starts_with('[') {
                return Err(bad());
            }
            steps.push(Step::Index(n));
            rest = &rest[close + 1..];
        }
    }
    let mut steps = steps.into_iter();
    match steps.next() {
        Some(Step::Key(k)) if k == "input" => Ok(Reference::Input(steps.collect())),
        Some(Step::Key(k)) if k == "item" => Ok(Reference::Item(steps.collect())),
        Some(Step::Key(k)) if k == "args" => Ok(Reference::Args(steps.collect())),
        Some(Step::Key(k)) if k == "nodes" => match (steps.next(), steps.next()) {
            (Some(Step::Key(id)), Some(Step::Key(out))) if out == "output" => Ok(Reference::Node(id, steps.collect())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A piece of a templated string.
enum Piece<'a> {
    Text(&'a str),
    Ref(Reference, &'a str),
}

/// Splits a string into text and references.
fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let close = rest[open..].find("}}").ok_or_else(|| format!("`{{{{` without `}}}}` in {s:?}"))? + open;
        let inner = &rest[open + 2..close];
        out.push(Piece::Ref(parse_reference(inner)?, &rest[open..close + 2]));
        rest = &rest[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Every reference in the strings of `value`, with the JSON path (from `value`) where it
/// is.
pub fn references(value: &Value) -> Result<Vec<(String, Reference)>, (String, String)> {
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, Reference)>) -> Result<(), (String, String)> {
        match v {
            Value::String(s) if s.contains("{{") => {
                for p in pieces(s).map_err(|e| (path.to_string(), e))? {
                    if let Piece::Ref(r, _) = p {
                        out.push((path.to_string(), r));
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out)?;
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    walk(item, &format!("{path}.{k}"), out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(value, "", &mut out)?;
    Ok(out)
}

impl WorkflowSpec {
    /// Checks the definition; see the module docs for the rules.
    pub fn validate(&self, kind_exists: &dyn Fn(&str) -> bool, limits: &Limits) -> Result<Validated, SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return Err(SpecError::invalid("name", "must be 1 to 64 characters of letters, digits, `_`, `-` or `.`"));
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return Err(SpecError::invalid("nodes", format!("must hold 1 to {MAX_NODES} nodes")));
        }
        if let Some(t) = self.timeout_ms
            && (t == 0 || t > limits.max_timeout_ms)
        {
            return Err(SpecError::invalid("timeout_ms", format!("must be between 1 and {}", limits.max_timeout_ms)));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{i}].id");
            if node.id.is_empty() || node.id.len() > 64 || !node.id.bytes().all(valid_name_char) {
                return Err(SpecError::invalid(field, "must be 1 to 64 characters of letters, digits, `_` or `-`"));
            }
            if let Some(first) = index.insert(&node.id, i) {
                return Err(SpecError::invalid(field, format!("duplicate id `{}` (also nodes[{first}])", node.id)));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (j, dep) in node.depends_on.iter().enumerate() {
                let field = format!("nodes[{i}].depends_on[{j}]");
                if dep == &node.id {
                    return Err(SpecError::invalid(field, "a node cannot depend on itself"));
                }
                if !index.contains_key(dep.as_str()) {
                    return Err(SpecError::invalid(field, format!("unknown node `{dep}`")));
                }
                if !seen.insert(dep) {
                    return Err(SpecError::invalid(field, format!("`{dep}` is listed twice")));
                }
            }
        }
        let order = topological(self, &index)?;
        let ancestors = ancestors(self, &index, &order);
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            if node.kind == crate::agent::KIND {
                crate::agent::check_node(self, node).map_err(|(f, m)| SpecError::invalid(at(&f), m))?;
            } else if !kind_exists(&node.kind) {
                return Err(SpecError::invalid(at("kind"), format!("unknown kind `{}`", node.kind)));
            } else if node.agent.is_some() {
                return Err(SpecError::invalid(at("agent"), "is only allowed with kind `agent`"));
            }
            node.job_spec(node.input.clone().unwrap_or(Value::Null))
                .validate("", "", 0, limits)
                .map_err(|e| SpecError { field: at(&e.field), ..e })?;
            match (&node.for_each, node.concurrency) {
                (None, Some(_)) => return Err(SpecError::invalid(at("concurrency"), "is only allowed with for_each")),
                (_, Some(c)) if c == 0 || c > MAX_CONCURRENCY => {
                    return Err(SpecError::invalid(at("concurrency"), format!("must be 1 to {MAX_CONCURRENCY}")));
                }
                _ => {}
            }
            let check = |r: &Reference, field: String| -> Result<(), SpecError> {
                match r {
                    Reference::Input(_) => Ok(()),
                    Reference::Item(_) if node.for_each.is_some() => Ok(()),
                    Reference::Item(_) => Err(SpecError::invalid(field, "`item` is only defined in a for_each node")),
                    Reference::Args(_) => {
                        Err(SpecError::invalid(field, "`args` is only defined in an agent tool's input"))
                    }
                    Reference::Node(id, _) => match index.get(id.as_str()) {
                        None => Err(SpecError::invalid(field, format!("refers to unknown node `{id}`"))),
                        Some(j) if !ancestors[i].contains(j) => Err(SpecError::invalid(
                            field,
                            format!(
                                "refers to node `{id}`, which is not upstream of `{}` (add it to depends_on)",
                                node.id
                            ),
                        )),
                        Some(_) => Ok(()),
                    },
                }
            };
            if let Some(input) = &node.input {
                let refs = references(input).map_err(|(p, m)| SpecError::invalid(format!("{}{p}", at("input")), m))?;
                for (p, r) in refs {
                    check(&r, format!("{}{p}", at("input")))?;
                }
            }
            if let Some(fe) = &node.for_each {
                let field = at("for_each");
                let parts = pieces(fe).map_err(|m| SpecError::invalid(field.clone(), m))?;
                match parts.as_slice() {
                    [Piece::Ref(Reference::Item(_), _)] => {
                        return Err(SpecError::invalid(field, "cannot iterate over `item`"));
                    }
                    [Piece::Ref(r, _)] => check(r, field)?,
                    _ => {
                        return Err(SpecError::invalid(
                            field,
                            "must be exactly one reference, like `{{ input.items }}`",
                        ));
                    }
                }
            }
        }
        crate::agent::validate(self, kind_exists, limits)?;
        Ok(Validated { spec: self.clone(), order })
    }
}

/// Kahn's algorithm, taking ready nodes in declaration order; a cycle is an error that
/// names one node on it and the cycle.
fn topological(spec: &WorkflowSpec, index: &HashMap<&str, usize>) -> Result<Vec<usize>, SpecError> {
    let n = spec.nodes.len();
    let mut indegree: Vec<usize> = spec.nodes.iter().map(|node| node.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in spec.nodes.iter().enumerate() {
        for dep in &node.depends_on {
            dependents[index[dep.as_str()]].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies from a node left over until one repeats: that is a cycle.
    let left: BTreeSet<usize> = (0..n).filter(|i| indegree[*i] > 0).collect();
    let start = *left.first().expect("a node is left over");
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = spec.nodes[at]
            .depends_on
            .iter()
            .map(|d| index[d.as_str()])
            .find(|d| left.contains(d))
            .expect("a node in a cycle depends on another one");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<&str> = path[pos..].iter().map(|i| spec.nodes[*i].id.as_str()).collect();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(SpecError::invalid(
                format!("nodes[{next}].depends_on"),
                format!("cycle: {}", cycle.join(" -> ")),
            ));
        }
        path.push(next);
        at = next;
    }
}

/// For each node, every node upstream of it (transitively).
fn ancestors(spec: &WorkflowSpec, index: &HashMap<&str, usize>, order: &[usize]) -> Vec<BTreeSet<usize>> {
    let mut up: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); spec.nodes.len()];
    for &i in order {
        let mut mine = BTreeSet::new();
        for dep in &spec.nodes[i].depends_on {
            let d = index[dep.as_str()];
            mine.insert(d);
            mine.extend(up[d].iter().copied());
        }
        up[i] = mine;
    }
    up
}

/// What references resolve against when a node starts.
pub struct Context<'a> {
    /// The run's input.
    pub input: &'a Value,
    /// A node's output by id (`None`: no such node, or it has not succeeded).
    pub nodes: &'a dyn Fn(&str) -> Option<&'a Value>,
    /// The element, in a `for_each` node.
    pub item: Option<&'a Value>,
    /// The tool call's arguments, in an agent tool's input.
    pub args: Option<&'a Value>,
}

/// A reference that resolved to nothing, or a resolution that grew past its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reference} {message}")]
pub struct ResolveError {
    /// Where in the node's input (`input.url`).
    pub field: String,
    /// The reference as written.
    pub reference: String,
    pub message: String,
    /// The resolution stopped because its result passed the size limit.
    pub too_large: bool,
}

fn follow<'v>(mut value: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for step in steps {
        value = match step {
            Step::Key(k) => value.as_object()?.get(k)?,
            Step::Index(i) => value.as_array()?.get(*i)?,
        };
    }
    Some(value)
}

fn lookup<'a>(r: &Reference, ctx: &Context<'a>) -> Result<&'a Value, String> {
    match r {
        Reference::Input(steps) => {
            follow(ctx.input, steps).ok_or_else(|| "resolves to nothing in the run's input".into())
        }
        Reference::Item(steps) => {
            let item = ctx.item.ok_or("has no element here")?;
            follow(item, steps).ok_or_else(|| "resolves to nothing in the element".into())
        }
        Reference::Args(steps) => {
            let args = ctx.args.ok_or("has no tool call here")?;
            follow(args, steps).ok_or_else(|| "resolves to nothing in the tool call's arguments".into())
        }
        Reference::Node(id, steps) => {
            let out = (ctx.nodes)(id).ok_or_else(|| format!("names node `{id}`, which has no output"))?;
            follow(out, steps).ok_or_else(|| format!("resolves to nothing in the output of `{id}`"))
        }
    }
}

/// What is left of a resolution's size limit, in bytes of compact JSON (the measure of
/// `limits.max_input_bytes`). Every piece of the result is taken from it before the piece
/// is built, so a resolution holds at most the limit in memory, whatever the template.
struct Budget {
    left: usize,
}

impl Budget {
    fn take(&mut self, n: usize) -> bool {
        self.left.checked_sub(n).map(|left| self.left = left).is_some()
    }

    /// The compact JSON size of `v`, if it fits in what is left. Measuring stops as soon
    /// as it passes that, so it costs at most the budget, not the value's size.
    fn measure(&self, v: &(impl Serialize + ?Sized)) -> Option<usize> {
        let mut meter = Meter { n: 0, cap: self.left };
        serde_json::to_writer(&mut meter, v).ok().map(|_| meter.n)
    }

    fn take_value(&mut self, v: &(impl Serialize + ?Sized)) -> bool {
        self.measure(v).is_some_and(|n| self.take(n))
    }
}

/// A writer that only counts, and fails past `cap`.
struct Meter {
    n: usize,
    cap: usize,
}

impl std::io::Write for Meter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.n += buf.len();
        if self.n > self.cap { Err(std::io::Error::other("over the limit")) } else { Ok(buf.len()) }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Resolves every reference in `template` (see the module docs) into a value whose compact
/// JSON is at most `max_bytes` long.
///
/// The limit is enforced as the result is built, not after: a template that repeats a
/// large reference (800 × `{{ input.big }}`) stops at the first piece that passes it, so
/// the work and the memory of one resolution are O(`max_bytes` + the template), never
/// O(references × value size). That matters because resolution runs inside the store's
/// transaction that holds the run (on SQLite, on its one writer thread). A result of
/// exactly `max_bytes` passes; one byte more is a [`ResolveError`] with `too_large` set.
pub fn resolve(template: &Value, ctx: &Context, max_bytes: usize) -> Result<Value, ResolveError> {
    fn walk(v: &Value, path: String, ctx: &Context, budget: &mut Budget, max: usize) -> Result<Value, ResolveError> {
        let too_large = |path: &str, written: &str| ResolveError {
            field: path.to_string(),
            reference: written.to_string(),
            message: format!("takes the input past its limit of {max} bytes"),
            too_large: true,
        };
        Ok(match v {
            Value::String(s) if s.contains("{{") => {
                let parts = pieces(s).map_err(|m| ResolveError {
                    field: path.clone(),
                    reference: s.clone(),
                    message: m,
                    too_large: false,
                })?;
                let fail = |written: &str, message: String| ResolveError {
                    field: path.clone(),
                    reference: written.to_string(),
                    message,
                    too_large: false,
                };
                if let [Piece::Ref(r, written)] = parts.as_slice() {
                    let value = lookup(r, ctx).map_err(|m| fail(written, m))?;
                    if !budget.take_value(value) {
                        return Err(too_large(&path, written));
                    }
                    return Ok(value.clone());
                }
                // The text is at least as long as its JSON minus the two quotes, so a
                // piece that would take it past what is left fails before it is copied.
                let room = budget.left.saturating_sub(2);
                let mut out = String::new();
                for p in parts {
                    let (piece, written) = match p {
                        Piece::Text(t) => (std::borrow::Cow::Borrowed(t), t),
                        Piece::Ref(r, written) => match lookup(&r, ctx).map_err(|m| fail(written, m))? {
                            Value::String(s) => (std::borrow::Cow::Borrowed(s.as_str()), written),
                            other => {
                                let fits = Budget { left: room - out.len() }.measure(other).is_some();
                                if !fits {
                                    return Err(too_large(&path, written));
                                }
                                (std::borrow::Cow::Owned(other.to_string()), written)
                            }
                        },
                    };
                    if out.len() + piece.len() > room {
                        return Err(too_large(&path, written));
                    }
                    out.push_str(&piece);
                }
                if !budget.take_value(&out) {
                    return Err(too_large(&path, s));
                }
                Value::String(out)
            }
            Value::Array(items) => {
                if !budget.take(2 + items.len().saturating_sub(1)) {
                    return Err(too_large(&path, ""));
                }
                Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| walk(x, format!("{path}[{i}]"), ctx, budget, max))
                        .collect::<Result<_, _>>()?,
                )
            }
            Value::Object(map) => {
                if !budget.take(2 + map.len().saturating_sub(1)) {
                    return Err(too_large(&path, ""));
                }
                let mut out = serde_json::Map::new();
                for (k, x) in map {
                    let field = format!("{path}.{k}");
                    // The key and its colon.
                    if !(budget.take_value(k.as_str()) && budget.take(1)) {
                        return Err(too_large(&field, ""));
                    }
                    out.insert(k.clone(), walk(x, field, ctx, budget, max)?);
                }
                Value::Object(out)
            }
            other => {
                if !budget.take_value(other) {
                    return Err(too_large(&path, ""));
                }
                other.clone()
            }
        })
    }
    walk(template, "input".into(), ctx, &mut Budget { left: max_bytes }, max_bytes)
}

/// The elements a `for_each` node runs over: its reference must resolve to an array.
pub fn for_each_items(reference: &str, ctx: &Context) -> Result<Vec<Value>, ResolveError> {
    let fail = |message: String| ResolveError {
        field: "for_each".into(),
        reference: reference.into(),
        message,
        too_large: false,
    };
    // Validation made `for_each` exactly one reference: its value is one stored value (the
    // run's input or an output, each already under its own limit), copied once.
    match resolve(&Value::String(reference.to_string()), ctx, usize::MAX).map_err(|e| fail(e.message))? {
        Value::Array(items) => Ok(items),
        other => Err(fail(format!("is not an array but {}", kind_of(&other)))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
