//! `fail`: fails on purpose, for tests, demos and benchmarks.
//!
//! Input: `{"type": "network", "retryable": true, "times": 2, "message": "…"}`. It fails
//! its first `times` attempts (counted over the job's whole life, so a replayed job can
//! succeed), or every attempt when `times` is absent, with an error of `type` from the
//! catalogue. `retryable` overrides the catalogue's default. Once past `times` it
//! succeeds with `{"attempt": n}`.

use super::{object, opt_u64};
use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use ferry_core::{ErrorType, ExecError, SpecError};
use serde_json::{Value, json};

/// The `fail` kind.
pub struct Fail;

fn error_type(input: &Value) -> Result<ErrorType, SpecError> {
    match input.get("type") {
        None | Some(Value::Null) => Ok(ErrorType::Internal),
        Some(Value::String(s)) => s.parse().map_err(|e: String| SpecError::invalid("input.type", e)),
        Some(_) => Err(SpecError::invalid("input.type", "must be a string naming an error type")),
    }
}

#[async_trait]
impl Executor for Fail {
    fn kind(&self) -> &'static str {
        "fail"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        object(input, true)?;
        error_type(input)?;
        opt_u64(input, "times", u32::MAX as u64)?;
        if let Some(r) = input.get("retryable")
            && !r.is_boolean()
            && !r.is_null()
        {
            return Err(SpecError::invalid("input.retryable", "must be true or false"));
        }
        if let Some(m) = input.get("message")
            && !m.is_string()
        {
            return Err(SpecError::invalid("input.message", "must be a string"));
        }
        Ok(())
    }

    async fn run(&self, attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let times = input.get("times").and_then(Value::as_u64);
        if times.is_some_and(|t| u64::from(attempt.number) > t) {
            return Ok(json!({ "attempt": attempt.number }));
        }
        let kind = error_type(&input).unwrap_or(ErrorType::Internal);
        let message = input.get("message").and_then(Value::as_str).unwrap_or("failed on purpose");
        let mut err = ExecError::new(kind, format!("{message} (attempt {})", attempt.number));
        if let Some(r) = input.get("retryable").and_then(Value::as_bool) {
            err = err.retryable(r);
        }
        Err(err)
    }
}
