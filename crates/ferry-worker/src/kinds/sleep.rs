//! `sleep`: waits `ms` milliseconds (`{"ms": 250}`), then succeeds with `{"slept_ms": …}`.

use super::{object, opt_u64};
use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use ferry_core::{ExecError, SpecError};
use serde_json::{Value, json};
use std::time::Duration;

/// Longest sleep accepted: one day.
const MAX_MS: u64 = 86_400_000;

/// The `sleep` kind.
pub struct Sleep;

#[async_trait]
impl Executor for Sleep {
    fn kind(&self) -> &'static str {
        "sleep"
    }

    fn validate(&self, input: &Value) -> Result<(), SpecError> {
        object(input, false)?;
        opt_u64(input, "ms", MAX_MS)?.ok_or_else(|| SpecError::invalid("input.ms", "is required"))?;
        Ok(())
    }

    async fn run(&self, _attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0).min(MAX_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({ "slept_ms": ms }))
    }
}
