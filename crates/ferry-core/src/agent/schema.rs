//! JSON Schemas (draft 2020-12) of tool arguments and final answers, through the
//! `jsonschema` crate built without remote references: a schema that names one does not
//! compile, so a workflow can never make the engine fetch anything.

use serde_json::Value;

/// How many validation errors a refusal lists (the model needs the first few, not all).
const MAX_ERRORS: usize = 5;

/// Compiles `schema`; the error says why it is not a usable schema.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::new(schema).map_err(|e| format!("is not a usable JSON Schema: {e}"))
}

/// The result of checking a value against a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaCheck {
    Passes,
    /// What failed, one line per error, each with where (`/items/0: …`).
    Fails(Vec<String>),
}

/// Checks `value` against `schema` (a schema that does not compile fails everything,
/// though validation refuses such workflows before they run).
pub fn check(schema: &Value, value: &Value) -> SchemaCheck {
    let validator = match compile_schema(schema) {
        Ok(v) => v,
        Err(e) => return SchemaCheck::Fails(vec![format!("the schema {e}")]),
    };
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(MAX_ERRORS)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { at.as_str() })
        })
        .collect();
    if errors.is_empty() { SchemaCheck::Passes } else { SchemaCheck::Fails(errors) }
}
