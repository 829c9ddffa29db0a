//! `noop`: does nothing and returns its input. For tests, demos and measuring the engine.

use crate::executor::{Attempt, Executor};
use async_trait::async_trait;
use ferry_core::{ExecError, SpecError};
use serde_json::Value;

/// The `noop` kind.
pub struct Noop;

#[async_trait]
impl Executor for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn validate(&self, _input: &Value) -> Result<(), SpecError> {
        Ok(())
    }

    async fn run(&self, _attempt: &Attempt, input: Value) -> Result<Value, ExecError> {
        Ok(input)
    }
}
