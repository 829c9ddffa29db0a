//! JSON parsed into a `serde_json::Value` in one pass, refusing duplicate keys.
//!
//! `serde_json` keeps the last of two equal keys (`{"kind":"noop","kind":"sleep"}` is a
//! `sleep` job), so what a client meant and what Ferry stored could differ silently. The
//! visitor here builds the same `Value` as `serde_json`'s own and checks each key as it
//! inserts it: a duplicate costs nothing extra to find. The path of a duplicate
//! (`jobs[2].input.a`) is gathered only on the way out of an error, so a good body pays
//! nothing for it either.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a body could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON (or trailing bytes, or nested too deep).
    Malformed(serde_json::Error),
    /// A key appears twice in one object: its path (`input.a`).
    Duplicate(String),
}

/// Parses `bytes` as one JSON value with no duplicate keys.
pub fn parse_value(bytes: &[u8]) -> Result<Value, ParseError> {
    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict { duplicate: &mut duplicate }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(trail)) => Err(ParseError::Duplicate(path(trail))),
        (Err(e), None) => Err(ParseError::Malformed(e)),
    }
}

/// One step of a path into a value.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// `[Key("a"), Key("input")]` (innermost first) → `input.a`.
fn path(trail: Vec<Step>) -> String {
    let mut out = String::new();
    for step in trail.into_iter().rev() {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The seed and visitor of one value. `duplicate` is set (to the duplicate key) when a
/// duplicate is found; each enclosing level then adds its step as the error passes.
struct Strict<'a> {
    duplicate: &'a mut Option<Vec<Step>>,
}

impl Strict<'_> {
    fn note(&mut self, step: impl FnOnce() -> Step) {
        if let Some(trail) = self.duplicate.as_mut() {
            trail.push(step());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(Strict { duplicate: &mut *self.duplicate }) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    let i = items.len();
                    self.note(|| Step::Index(i));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Occupied(o) => {
                    let key = o.key().clone();
                    let message = format!("the key `{key}` appears twice");
                    *self.duplicate = Some(vec![Step::Key(key)]);
                    return Err(de::Error::custom(message));
                }
                Entry::Vacant(slot) => match map.next_value_seed(Strict { duplicate: &mut *self.duplicate }) {
                    Ok(v) => {
                        slot.insert(v);
                    }
                    Err(e) => {
                        self.note(|| Step::Key(slot.key().clone()));
                        return Err(e);
                    }
                },
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dup(s: &str) -> String {
        match parse_value(s.as_bytes()) {
            Err(ParseError::Duplicate(p)) => p,
            other => panic!("{s}: expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn builds_what_serde_json_builds() {
        let text = r#"{"a": [1, -2, 3.5, 18446744073709551615, "s", null, true, {"b": {}}], "c": {"d": []}}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse_value(text.as_bytes()).unwrap(), expected);
        assert_eq!(parse_value(b"5").unwrap(), json!(5));
    }

    #[test]
    fn names_the_path_of_a_duplicate() {
        assert_eq!(dup(r#"{"kind":"noop","kind":"sleep"}"#), "kind");
        assert_eq!(dup(r#"{"kind":"noop","input":{"a":1,"b":2,"a":3}}"#), "input.a");
        assert_eq!(dup(r#"{"jobs":[{"kind":"noop"},{"input":{"x":{"y":1,"y":2}}}]}"#), "jobs[1].input.x.y");
        assert_eq!(dup(r#"[[{"a":1,"a":1}]]"#), "[0][0].a");
        // The same key in two objects is no duplicate.
        assert!(parse_value(br#"[{"a":1},{"a":1}]"#).is_ok());
    }

    #[test]
    fn malformed_stays_malformed() {
        for bad in ["", "{", r#"{"a":1} {"a":2}"#, r#"{"a":}"#, "[1,]"] {
            assert!(matches!(parse_value(bad.as_bytes()), Err(ParseError::Malformed(_))), "{bad}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(parse_value(deep.as_bytes()), Err(ParseError::Malformed(_))), "nesting is bounded");
    }
}
