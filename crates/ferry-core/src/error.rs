//! The one catalogue of job error types.
//!
//! Every failed attempt is classified into exactly one [`ErrorType`]. The type decides
//! whether the failure is worth retrying by default: a network blip, a 5xx or a timeout
//! may well pass, a 4xx or a validation error will not. An executor may override the
//! default for one error (the `fail` kind does, on request), and the job's policy
//! (attempts, retry budget) decides whether a retryable error is actually retried.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use utoipa::ToSchema;

/// The catalogue of error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The attempt ran longer than its timeout.
    Timeout,
    /// A connection could not be made or broke.
    Network,
    /// A remote answered with an unsuccessful HTTP status.
    HttpStatus,
    /// A process exited with a non-zero status.
    ExitStatus,
    /// A resource limit (memory, CPU time, file size, processes) was hit.
    ResourceLimit,
    /// A circuit breaker in front of a failing dependency is open.
    CircuitOpen,
    /// The worker running the attempt stopped heartbeating (crashed or was cut off).
    WorkerLost,
    /// The job's input is not acceptable to its kind.
    Validation,
    /// The job was cancelled.
    Cancelled,
    /// A remote asked us to slow down (HTTP 429).
    RateLimited,
    /// The job's retry budget (`total_timeout_ms`) ran out.
    BudgetExhausted,
    /// An unexpected failure inside Ferry or an executor.
    Internal,
    /// Something the job names does not exist (a blob of its workspace).
    NotFound,
    /// An agent took more LLM steps than its `max_steps` or its run's (see
    /// [`crate::agent`]).
    StepLimit,
    /// An agent run spent its token budget, or its workspace spent the day's.
    TokenBudget,
    /// Agents handed the conversation on past the hand-off depth (a hand-off cycle ends
    /// here too).
    RoutingExhausted,
    /// An agent's final answer failed its output schema after every repair attempt.
    SchemaValidation,
    /// The job's own code failed: a remote worker's task raised an error whose type is not
    /// one of these (its name leads the message).
    Task,
}

impl ErrorType {
    /// Every type, in catalogue order.
    pub const ALL: [ErrorType; 18] = [
        ErrorType::Timeout,
        ErrorType::Network,
        ErrorType::HttpStatus,
        ErrorType::ExitStatus,
        ErrorType::ResourceLimit,
        ErrorType::CircuitOpen,
        ErrorType::WorkerLost,
        ErrorType::Validation,
        ErrorType::Cancelled,
        ErrorType::RateLimited,
        ErrorType::BudgetExhausted,
        ErrorType::Internal,
        ErrorType::NotFound,
        ErrorType::StepLimit,
        ErrorType::TokenBudget,
        ErrorType::RoutingExhausted,
        ErrorType::SchemaValidation,
        ErrorType::Task,
    ];

    /// Whether an error of this type is retried unless its source says otherwise.
    pub fn retryable_by_default(self) -> bool {
        match self {
            ErrorType::Timeout
            | ErrorType::Network
            | ErrorType::CircuitOpen
            | ErrorType::WorkerLost
            | ErrorType::RateLimited
            | ErrorType::Internal
            | ErrorType::Task => true,
            ErrorType::HttpStatus
            | ErrorType::ExitStatus
            | ErrorType::ResourceLimit
            | ErrorType::Validation
            | ErrorType::Cancelled
            | ErrorType::BudgetExhausted
            | ErrorType::NotFound
            | ErrorType::StepLimit
            | ErrorType::TokenBudget
            | ErrorType::RoutingExhausted
            | ErrorType::SchemaValidation => false,
        }
    }

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Timeout => "timeout",
            ErrorType::Network => "network",
            ErrorType::HttpStatus => "http_status",
            ErrorType::ExitStatus => "exit_status",
            ErrorType::ResourceLimit => "resource_limit",
            ErrorType::CircuitOpen => "circuit_open",
            ErrorType::WorkerLost => "worker_lost",
            ErrorType::Validation => "validation",
            ErrorType::Cancelled => "cancelled",
            ErrorType::RateLimited => "rate_limited",
            ErrorType::BudgetExhausted => "budget_exhausted",
            ErrorType::Internal => "internal",
            ErrorType::NotFound => "not_found",
            ErrorType::StepLimit => "step_limit",
            ErrorType::TokenBudget => "token_budget",
            ErrorType::RoutingExhausted => "routing_exhausted",
            ErrorType::SchemaValidation => "schema_validation",
            ErrorType::Task => "task",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ErrorType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown error type `{s}`"))
    }
}

/// A classified failure as recorded on a job and its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// The error's type from the catalogue.
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    /// A human-readable explanation.
    pub message: String,
    /// Whether this failure could be retried.
    pub retryable: bool,
    /// How urgently it needs a person (`crate::severity`), set where the worker decides
    /// what the failed attempt becomes; absent on errors recorded before severities were,
    /// and on errors that are no attempt's (a run's, a cancel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<crate::Severity>,
}

impl JobError {
    /// This error with its severity.
    pub fn with_severity(self, severity: crate::Severity) -> Self {
        JobError { severity: Some(severity), ..self }
    }

    /// An error whose retryability is the catalogue default for its type.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        JobError { error_type, message: message.into(), retryable: error_type.retryable_by_default(), severity: None }
    }
}

/// What an executor returns when an attempt fails.
#[derive(Debug, Clone)]
pub struct ExecError {
    /// The classification.
    pub error_type: ErrorType,
    /// Explanation for humans.
    pub message: String,
    /// Overrides the catalogue default when set.
    pub retryable: Option<bool>,
    /// A delay the remote asked for (HTTP `Retry-After`); replaces the backoff delay.
    pub retry_after: Option<Duration>,
    /// Output worth keeping even though the attempt failed (a response body, stderr).
    pub output: Option<serde_json::Value>,
    /// The target said it is gone for good (a webhook endpoint's 410): its breaker is
    /// disabled until an operator resets it.
    pub disables_target: bool,
    /// The attempt did not run and is handed back (a remote worker that is stopping
    /// released it): the job is queued again at once and the attempt does not count.
    pub hand_back: bool,
}

impl ExecError {
    /// An error of `error_type` with the catalogue's retryability.
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        ExecError {
            error_type,
            message: message.into(),
            retryable: None,
            retry_after: None,
            output: None,
            disables_target: false,
            hand_back: false,
        }
    }

    /// Sets whether this error is retryable.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Attaches output to the failure.
    pub fn with_output(mut self, output: serde_json::Value) -> Self {
        self.output = Some(output);
        self
    }

    /// Marks the target as gone for good (see [`ExecError::disables_target`]).
    pub fn disabling_target(mut self) -> Self {
        self.disables_target = true;
        self
    }

    /// Marks the attempt as handed back unrun (see [`ExecError::hand_back`]).
    pub fn hand_back(mut self) -> Self {
        self.hand_back = true;
        self
    }

    /// The recorded form of this error.
    pub fn to_job_error(&self) -> JobError {
        JobError {
            error_type: self.error_type,
            message: self.message.clone(),
            retryable: self.retryable.unwrap_or(self.error_type.retryable_by_default()),
            severity: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ErrorType::ALL {
            assert_eq!(t.as_str().parse::<ErrorType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
        assert!("nope".parse::<ErrorType>().is_err());
    }

    #[test]
    fn catalogue_defaults() {
        assert!(ErrorType::Network.retryable_by_default());
        assert!(ErrorType::Timeout.retryable_by_default());
        assert!(!ErrorType::Validation.retryable_by_default());
        assert!(!ExecError::new(ErrorType::Network, "x").retryable(false).to_job_error().retryable);
    }
}
