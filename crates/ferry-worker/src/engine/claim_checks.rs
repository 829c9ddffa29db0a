//! Claim checks on the worker's side (see `ferry_store::blobs`): a job input that is a
//! reference (`{"$blob": {"hash", "size"}}`, kept by the API at submission, or passed on
//! by a workflow template) is read back before the kind runs, so an executor never sees a
//! reference; an output over `blobs.claim_check_bytes` is kept as a blob and the job row
//! and its events hold only the reference. Both run inside the attempt, under its
//! timeout.

use super::Inner;
use crate::executor::Attempt;
use ferry_core::{ErrorType, ExecError};
use ferry_store::{BlobError, ClaimedJob};
use serde_json::Value;

/// A blob failure of the attempt's own claim checks.
fn failure(e: BlobError, what: &str) -> ExecError {
    let kind = match &e {
        BlobError::TimedOut(_) => ErrorType::Timeout,
        BlobError::TooLarge { .. } => ErrorType::ResourceLimit,
        // The input's blob went (pruned past the retention, or deleted): nothing to run.
        BlobError::NotFound(_) => ErrorType::NotFound,
        BlobError::BadHash(_) | BlobError::NotJson(_) => ErrorType::Validation,
        BlobError::Store(_) => ErrorType::Internal,
    };
    ExecError::new(kind, format!("{what}: {e}"))
}

/// The job's input, its claim check resolved.
pub(super) async fn resolve_input(
    inner: &Inner,
    job: &ClaimedJob,
    attempt: &Attempt,
    input: Value,
) -> Result<Value, ExecError> {
    if ferry_store::blobs::parse_reference(&input).is_none() {
        return Ok(input);
    }
    let input = inner
        .blobs
        .within(attempt.timeout)
        .resolve(&job.workspace, input)
        .await
        .map_err(|e| failure(e, "the job's claim-checked input"))?;
    // A reference a workflow template passed on was not checked at submission: the
    // content is checked now, as the API would have.
    if let Some(executor) = inner.registry.get(&job.kind) {
        executor.validate(&input).map_err(|e| ExecError::new(ErrorType::Validation, e.to_string()))?;
    }
    Ok(input)
}

/// The attempt's output, kept as a blob (and answered as its reference) when it is over
/// the claim-check threshold; refused past `blobs.max_bytes`.
pub(super) async fn keep_output(
    inner: &Inner,
    job: &ClaimedJob,
    attempt: &Attempt,
    output: Value,
) -> Result<Value, ExecError> {
    inner.blobs.within(attempt.timeout).check_in(&job.workspace, output).await.map_err(|e| match e {
        BlobError::TooLarge { size, max } => ExecError::new(
            ErrorType::ResourceLimit,
            format!("output is {size} bytes; the limit is {max} bytes (blobs.max_bytes)"),
        ),
        e => failure(e, "keeping the output as a blob"),
    })
}
