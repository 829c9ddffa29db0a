//! The built-in kinds. Each file is one executor.

mod blob;
mod exec;
mod fail;
mod http;
mod llm;
mod noop;
mod sleep;
mod webhook;
mod workflow;

pub use blob::{BlobDelete, BlobGet, BlobPut};
pub use exec::{Exec, ExecConfig, ExecLimits, Interpreter};
pub use fail::Fail;
pub use http::Http;
pub use llm::{BaseUrl, LLM_BASE_URLS_VAR, LLM_SECRET_VAR, Llm, LlmConfig, LlmSecret};
pub use noop::Noop;
pub use sleep::Sleep;
pub use webhook::{Webhook, WebhookConfig, WebhookSecret};
pub use workflow::{MAX_DEPTH, Workflow};

use ferry_core::SpecError;
use serde_json::Value;

/// Reads an optional non-negative integer field of an input object.
pub(crate) fn opt_u64(input: &Value, field: &str, max: u64) -> Result<Option<u64>, SpecError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(SpecError::invalid(format!("input.{field}"), format!("must be an integer from 0 to {max}"))),
        },
    }
}

/// Refuses a field of an input object that is not one of `fields`, naming it; `what` the
/// input is, for the message (`a webhook`).
pub(crate) fn only_fields(input: &Value, fields: &[&str], what: &str) -> Result<(), SpecError> {
    match input.as_object().into_iter().flat_map(|o| o.keys()).find(|k| !fields.contains(&k.as_str())) {
        Some(unknown) => Err(SpecError::invalid(
            format!("input.{unknown}"),
            format!("is not a field of {what}; the fields are {}", fields.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Checks that the input is an object (or absent, when `optional`).
pub(crate) fn object(input: &Value, optional: bool) -> Result<(), SpecError> {
    match input {
        Value::Object(_) => Ok(()),
        Value::Null if optional => Ok(()),
        _ => Err(SpecError::invalid("input", "must be a JSON object")),
    }
}
