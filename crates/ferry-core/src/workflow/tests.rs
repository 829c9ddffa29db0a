use super::*;
use serde_json::json;

fn spec(nodes: Value) -> WorkflowSpec {
    serde_json::from_value(json!({"name": "w", "nodes": nodes})).unwrap()
}

fn validate(nodes: Value) -> Result<Validated, SpecError> {
    spec(nodes).validate(&|k| k != "teleport", &Limits::default())
}

fn field(nodes: Value) -> (String, String) {
    let e = validate(nodes).unwrap_err();
    (e.field, e.message)
}

#[test]
fn a_diamond_is_ordered() {
    let v = validate(json!([
        {"id": "d", "kind": "noop", "depends_on": ["b", "c"]},
        {"id": "a", "kind": "noop"},
        {"id": "c", "kind": "noop", "depends_on": ["a"], "input": "{{ nodes.a.output }}"},
        {"id": "b", "kind": "noop", "depends_on": ["a"]},
    ]))
    .unwrap();
    assert_eq!(v.order, vec![1, 2, 3, 0]);
}

#[test]
fn each_error_names_its_field() {
    let n = |id: &str, deps: Value| json!({"id": id, "kind": "noop", "depends_on": deps});
    let cases = [
        (json!([n("a", json!([])), n("a", json!([]))]), "nodes[1].id", "duplicate"),
        (json!([n("a", json!(["x"]))]), "nodes[0].depends_on[0]", "unknown node"),
        (json!([n("a", json!(["a"]))]), "nodes[0].depends_on[0]", "itself"),
        (json!([n("a", json!(["b", "b"])), n("b", json!([]))]), "nodes[0].depends_on[1]", "twice"),
        (json!([n("a", json!(["b"])), n("b", json!(["a"]))]), "nodes[", "cycle: "),
        (json!([n("a", json!(["c"])), n("b", json!(["a"])), n("c", json!(["b"]))]), "depends_on", "cycle: "),
        (json!([{"id": "a", "kind": "teleport"}]), "nodes[0].kind", "unknown kind"),
        (json!([{"id": "a", "kind": "noop", "timeout_ms": 0}]), "nodes[0].timeout_ms", "between"),
        (json!([{"id": "a b", "kind": "noop"}]), "nodes[0].id", "letters"),
        (
            json!([n("a", json!([])), {"id": "b", "kind": "noop", "input": {"x": "{{ nodes.a.output }}"}}]),
            "nodes[1].input.x",
            "not upstream",
        ),
        (json!([{"id": "b", "kind": "noop", "input": ["{{ nodes.zz.output }}"]}]), "nodes[0].input[0]", "unknown node"),
        (json!([{"id": "b", "kind": "noop", "input": "{{ item }}"}]), "nodes[0].input", "for_each"),
        (json!([{"id": "b", "kind": "noop", "input": "{{ input.x"}]), "nodes[0].input", "without"),
        (json!([{"id": "b", "kind": "noop", "input": "{{ inputs.x }}"}]), "nodes[0].input", "not a reference"),
        (json!([{"id": "b", "kind": "noop", "for_each": "items"}]), "nodes[0].for_each", "exactly one"),
        (json!([{"id": "b", "kind": "noop", "for_each": "{{ item }}"}]), "nodes[0].for_each", "item"),
        (json!([{"id": "b", "kind": "noop", "concurrency": 2}]), "nodes[0].concurrency", "only"),
        (
            json!([{"id": "b", "kind": "noop", "for_each": "{{ input.i }}", "concurrency": 1001}]),
            "nodes[0].concurrency",
            "1 to",
        ),
        (json!([]), "nodes", "1 to"),
    ];
    for (nodes, want_field, word) in cases {
        let (f, m) = field(nodes.clone());
        assert!(f.starts_with(want_field) || f.contains(want_field), "{nodes}: field {f}");
        assert!(m.contains(word), "{nodes}: message {m}");
    }
}

#[test]
fn the_node_limit_is_at_its_edge() {
    let nodes = |n: usize| json!((0..n).map(|i| json!({"id": format!("n{i}"), "kind": "noop"})).collect::<Vec<_>>());
    assert!(validate(nodes(MAX_NODES)).is_ok());
    assert_eq!(field(nodes(MAX_NODES + 1)).0, "nodes");
}

fn ctx_resolve(template: Value, item: Option<&Value>) -> Result<Value, ResolveError> {
    let input = json!({"url": "http://x", "n": 3, "list": [1, {"k": "v"}]});
    let fetch = json!({"body": {"a": [10, 20]}, "status": 200});
    let nodes = |id: &str| if id == "fetch" { Some(&fetch) } else { None };
    let ctx = Context { input: &input, nodes: &nodes, item, args: None };
    resolve(&template, &ctx, usize::MAX)
}

#[test]
fn resolution_keeps_types_and_interpolates_text() {
    let out = ctx_resolve(
        json!({
            "n": "{{ input.n }}", "obj": "{{ nodes.fetch.output.body }}", "idx": "{{ input.list[1].k }}",
            "deep": ["{{nodes.fetch.output.body.a[1]}}"], "text": "GET {{ input.url }} -> {{ nodes.fetch.output.status }}",
            "plain": "no refs", "num": 7, "k{{x}}": 1
        }),
        None,
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"n": 3, "obj": {"a": [10, 20]}, "idx": "v", "deep": [20], "text": "GET http://x -> 200",
               "plain": "no refs", "num": 7, "k{{x}}": 1})
    );
    assert_eq!(ctx_resolve(json!("{{ item.x }}"), Some(&json!({"x": null}))).unwrap(), json!(null));
}

#[test]
fn a_reference_to_nothing_is_an_error_with_its_place() {
    let e = ctx_resolve(json!({"a": {"b": "{{ input.missing }}"}}), None).unwrap_err();
    assert_eq!((e.field.as_str(), e.reference.as_str()), ("input.a.b", "{{ input.missing }}"));
    assert!(ctx_resolve(json!("{{ input.list[5] }}"), None).is_err(), "index out of range");
    assert!(ctx_resolve(json!("x {{ nodes.other.output }}"), None).unwrap_err().message.contains("other"));
    assert!(ctx_resolve(json!("{{ item }}"), None).is_err());
}

#[test]
fn the_size_limit_is_exact_and_holds_as_it_goes() {
    let input = json!({"s": "ab\"c", "n": 12, "o": {"k": [1, true, null]}, "big": "x".repeat(4096)});
    let nodes = |_: &str| None;
    let ctx = Context { input: &input, nodes: &nodes, item: None, args: None };
    // Every shape the size is counted over: literals, keys, arrays, objects, whole
    // references, and text with references of every type (escapes included).
    let template = json!({
        "whole": "{{ input.o }}", "text": "say {{ input.s }} {{ input.n }} {{ input.o }}!",
        "list": [1, "lit\n", {"x": "{{ input.n }}"}, []], "num": 1.5, "nothing": null, "e": {}
    });
    let full = resolve(&template, &ctx, usize::MAX).unwrap();
    let size = serde_json::to_vec(&full).unwrap().len();
    assert_eq!(resolve(&template, &ctx, size).unwrap(), full, "exactly the limit passes");
    for max in [size - 1, size / 2, 1, 0] {
        let e = resolve(&template, &ctx, max).unwrap_err();
        assert!(e.too_large, "{max}: {e}");
    }
    // One reference repeated far past the limit fails at the piece that passes it.
    let many = json!({"a": (0..800).map(|_| "{{ input.big }}").collect::<Vec<_>>(), "t": "{{ input.big }}"});
    let e = resolve(&many, &ctx, 64 * 1024).unwrap_err();
    assert!(e.too_large && e.field == "input.a[15]" && e.reference == "{{ input.big }}", "{e}");
    let text = json!("{{ input.big }}{{ input.big }}");
    let joined = serde_json::to_vec(&resolve(&text, &ctx, usize::MAX).unwrap()).unwrap().len();
    assert!(resolve(&text, &ctx, joined).is_ok());
    assert!(resolve(&text, &ctx, joined - 1).unwrap_err().too_large);
}

#[test]
fn for_each_needs_an_array() {
    let input = json!({"items": [1, 2], "n": 1});
    let nodes = |_: &str| None;
    let ctx = Context { input: &input, nodes: &nodes, item: None, args: None };
    assert_eq!(for_each_items("{{ input.items }}", &ctx).unwrap(), vec![json!(1), json!(2)]);
    assert!(for_each_items("{{ input.n }}", &ctx).unwrap_err().message.contains("not an array"));
}
