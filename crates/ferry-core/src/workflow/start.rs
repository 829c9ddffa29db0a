//! The check a run's input passes before the run is created: the inputs of the nodes that
//! start at once must fit the input limit.
//!
//! A node with no dependencies and no `for_each` starts in the transaction that creates
//! the run, with an input built only from the run's input. When that input would pass
//! `limits.max_input_bytes`, `POST /v1/runs` refuses the run (413, naming the node) and
//! creates nothing, rather than creating a run that fails at once. The API runs this check
//! before it calls the store, off the async threads, and [`super::resolve`] bounds its
//! cost by the limit, whatever the template.
//!
//! Nodes that start later (after their dependencies, or per `for_each` element) are
//! resolved when they start, by the same bounded [`super::resolve`]; there a result past
//! the limit fails the node with a `validation` error, since the run already exists.

use super::{Context, ResolveError, WorkflowSpec, resolve};
use serde_json::Value;

/// The first node whose starting input would pass `max_bytes`, as an error whose `field`
/// is `nodes[i].input…`; `None` when every one fits. Other resolution errors (a reference
/// to nothing) are left to the run, which fails that node as it always has.
pub fn oversized_first_input(spec: &WorkflowSpec, input: &Value, max_bytes: usize) -> Option<ResolveError> {
    let no_outputs = |_: &str| None;
    let ctx = Context { input, nodes: &no_outputs, item: None, args: None };
    spec.nodes.iter().enumerate().filter(|(_, n)| n.depends_on.is_empty() && n.for_each.is_none()).find_map(
        |(i, node)| {
            let template = node.input.clone().unwrap_or(Value::Null);
            match resolve(&template, &ctx, max_bytes) {
                Err(mut e) if e.too_large => {
                    e.field = format!("nodes[{i}].{}", e.field);
                    Some(e)
                }
                _ => None,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(nodes: Value) -> WorkflowSpec {
        serde_json::from_value(json!({"name": "w", "nodes": nodes})).unwrap()
    }

    #[test]
    fn only_first_nodes_are_checked_and_only_for_size() {
        let big = "x".repeat(100);
        let input = json!({"big": big});
        let w = spec(json!([
            {"id": "a", "kind": "noop", "input": {"v": "{{ input.big }}"}},
            {"id": "b", "kind": "noop", "input": {"v": ["{{ input.big }}", "{{ input.big }}"]}},
            {"id": "c", "kind": "noop", "depends_on": ["a"], "input": ["{{ input.big }}", "{{ input.big }}", "{{ input.big }}"]},
            {"id": "d", "kind": "noop", "input": {"v": "{{ input.missing }}"}},
        ]));
        let size = |v: Value| serde_json::to_vec(&v).unwrap().len();
        let b_size = size(json!({"v": [big, big]}));
        // Exactly b's size passes (c starts later, d's reference is the run's to fail).
        assert_eq!(oversized_first_input(&w, &input, b_size), None);
        let e = oversized_first_input(&w, &input, b_size - 1).expect("b is one byte over");
        assert!(e.too_large && e.field.starts_with("nodes[1].input"), "{e:?}");
    }
}
