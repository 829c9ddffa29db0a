//! Whole-number floats in request bodies.
//!
//! JSON has one number type, and JSON Schema (so the OpenAPI document) counts `5.0` as an
//! integer; serde does not (`invalid type: floating point 5.0, expected u64`). So the body
//! parser reads a whole-number float in the request's own fields as the integer it is
//! (`"max_attempts": 3.0` is 3, `"rate": 2.0` is 2). A number with a fraction (`3.5`) or
//! out of the 64-bit range is left alone, and an integer field refuses it with 400.
//!
//! Free-form JSON is passed on as sent: the `input` of a job, of a workflow node and of a
//! run belongs to its kind or its workflow, and `{"x": 1.0}` stays `{"x": 1.0}`.

use serde_json::{Number, Value};

/// The body with whole-number floats as integers, except inside the top-level `input` and
/// the `input` of each element of a top-level `jobs` or `nodes` array.
pub fn whole_floats_as_integers(mut body: Value) -> Value {
    if let Value::Object(fields) = &mut body {
        for (key, value) in fields.iter_mut() {
            match (key.as_str(), value) {
                ("input", _) => {}
                ("jobs" | "nodes", Value::Array(specs)) => specs.iter_mut().for_each(spec),
                (_, value) => integral(value),
            }
        }
    }
    body
}

/// A job or node spec: every field but its `input`.
fn spec(v: &mut Value) {
    match v {
        Value::Object(fields) => fields.iter_mut().filter(|(k, _)| *k != "input").for_each(|(_, v)| integral(v)),
        other => integral(other),
    }
}

fn integral(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = whole(n) {
                *n = i;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(fields) => fields.values_mut().for_each(integral),
        _ => {}
    }
}

/// `n` as an integer, if it is a float with no fraction within the 64-bit range.
fn whole(n: &Number) -> Option<Number> {
    if !n.is_f64() {
        return None;
    }
    let f = n.as_f64()?;
    if f.fract() != 0.0 {
        return None;
    }
    // 2^64 and -2^63 are exact as floats; the casts below are exact within them.
    if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Some(Number::from(f as u64))
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_floats_become_integers_outside_inputs() {
        let body: Value = serde_json::from_str(
            r#"{"kind": "noop", "max_attempts": 3.0, "priority": -2.0, "timeout_ms": 1.5,
                "input": {"x": 1.0}, "backoff": {"max_ms": 1e3},
                "jobs": [{"max_attempts": 2.0, "input": [4.0]}],
                "users": {"ann": {"runs": 5.0}}, "big": 1e300}"#,
        )
        .unwrap();
        let out = whole_floats_as_integers(body);
        assert_eq!(out["max_attempts"], json!(3));
        assert!(out["max_attempts"].is_u64());
        assert_eq!(out["priority"], json!(-2));
        assert!(out["priority"].is_i64());
        assert!(out["timeout_ms"].is_f64(), "a fraction stays: the field refuses it");
        assert!(out["input"]["x"].is_f64(), "inputs are passed on as sent");
        assert!(out["backoff"]["max_ms"].is_u64());
        assert!(out["jobs"][0]["max_attempts"].is_u64());
        assert!(out["jobs"][0]["input"][0].is_f64());
        assert!(out["users"]["ann"]["runs"].is_u64());
        assert!(out["big"].is_f64(), "out of range stays");
    }

    #[test]
    fn the_edges_of_the_range() {
        let n = |f: f64| whole(&Number::from_f64(f).unwrap());
        assert_eq!(n(18_446_744_073_709_549_568.0), Some(Number::from(18_446_744_073_709_549_568u64)));
        assert_eq!(n(18_446_744_073_709_551_616.0), None, "2^64 does not fit");
        assert_eq!(n(-9_223_372_036_854_775_808.0), Some(Number::from(i64::MIN)));
        assert_eq!(n(-9_223_372_036_854_777_856.0), None);
        assert_eq!(n(-0.0), Some(Number::from(0u64)));
    }
}
