//! One attempt of one job, from its claim to its recorded end.
//!
//! [`run_attempt`] runs the kind's executor under the attempt's timeout (bounded by the
//! retry budget, plus a grace period for a kind that enforces its own), the job's cancel
//! token and the drain's hard stop; a job with a cache key may be answered from the result
//! cache instead ([`run_or_reuse`]). The outcome becomes a [`FinishResult`]: a success,
//! or through [`decide`] (the engine's one use of [`decide_after_failure`]) a retry or
//! death; a hard stop hands the job back. The attempt holds its queue slot until its end
//! is recorded, or, on a queue that prefetches, only while its work runs (while fewer
//! than `EngineConfig::unrecorded_max` ends of this process wait to be recorded).

use super::breakers::{self, Gate};
use super::claim_checks;
use super::order::{self, Behind};
use super::{Inner, finisher};
use crate::executor::{Attempt, Executor};
use ferry_core::breaker::Held;
use ferry_core::severity::severity;
use ferry_core::time;
use ferry_core::{Decision, ErrorType, ExecError, JobError, RetryState, Severity, decide_after_failure};
use ferry_store::{ClaimedJob, Finish, FinishResult, Wait};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// How long past its timeout the engine waits for a kind that enforces its own.
const OWN_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Runs the attempt, or answers it from the result cache: a job with a cache key whose
/// workspace has a success under the same key within the kind's TTL gets that output,
/// marked `"cached": true` and `"cached_from": <job id>`, without running. A failed
/// lookup only means running.
async fn run_or_reuse(
    inner: &Inner,
    job: &ClaimedJob,
    executor: &dyn Executor,
    attempt: &Attempt,
    input: serde_json::Value,
) -> Result<serde_json::Value, ExecError> {
    if let (Some(key), Some(policy)) = (&job.cache_key, executor.cache(&input))
        && !policy.ttl.is_zero()
    {
        let since =
            time::now_micros().saturating_sub(time::ms(u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX)));
        match inner.store.cached_output(&job.workspace, key, since).await {
            Ok(Some((from, mut output))) => {
                if let Some(obj) = output.as_object_mut() {
                    obj.insert("cached".into(), true.into());
                    obj.insert("cached_from".into(), from.to_string().into());
                }
                metrics::counter!("ferry_result_cache_total", "kind" => job.kind.clone(), "outcome" => "hit")
                    .increment(1);
                return Ok(output);
            }
            Ok(None) => {
                metrics::counter!("ferry_result_cache_total", "kind" => job.kind.clone(), "outcome" => "miss")
                    .increment(1);
            }
            Err(e) => tracing::warn!(job = %job.id, error = %e, "result cache lookup failed; running"),
        }
    }
    executor.run(attempt, input).await
}

/// How an attempt stopped early (or never started).
enum Stop {
    Cancelled,
    Shutdown,
    /// Its circuit breaker held it back.
    Held(Held),
    /// An earlier job of its ordering key has not ended.
    Behind(Behind),
}

/// Runs one claimed job's attempt and records its end; `permit` is the job's queue slot,
/// given back when the work ends if `early` (the queue's jobs are short enough to
/// prefetch), else once the end is recorded.
pub(super) async fn run_attempt(inner: Arc<Inner>, job: ClaimedJob, permit: OwnedSemaphorePermit, early: bool) {
    // A prefetched job is registered already, with the token a cancel may have fired.
    let cancel = inner.running.register(job.id, job.attempt);
    let wait = (job.started_at - job.run_at).max(0) as f64 / 1e6;
    metrics::histogram!("ferry_pickup_wait_seconds", "queue" => job.queue.clone()).record(wait);

    let started = Instant::now();
    // The attempt may not run past the retry budget either.
    let mut timeout_ms = job.timeout_ms;
    let mut cut_by_budget = false;
    if let Some(deadline) = job.deadline_at {
        let left = (deadline - job.started_at).max(0) as u64 / 1000;
        if left < timeout_ms {
            timeout_ms = left;
            cut_by_budget = true;
        }
    }
    let attempt = Attempt {
        job_id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        workspace: job.workspace.clone(),
        user: job.user.clone(),
        run: job.run_id,
        number: job.attempt,
        cancel: cancel.clone(),
        started,
        timeout: Duration::from_millis(timeout_ms),
        soft_timeout: job.soft_timeout_ms.map(|t| Duration::from_millis(t.min(timeout_ms))),
        runs: inner.runs.clone(),
    };
    let budget_over = job.deadline_at.is_some_and(|d| d <= job.started_at);
    let executor = inner.registry.get(&job.kind);
    let input = serde_json::from_str::<serde_json::Value>(&job.input);
    // The job's own breaker, else its kind's for this input.
    let breaker = match (&executor, &input) {
        _ if !inner.cfg.breakers.enabled || budget_over => None,
        (Some(executor), Ok(input)) => job.breaker.clone().or_else(|| executor.breaker_key(input)),
        _ => None,
    };
    // Its ordering key's earlier jobs first, then its breaker.
    let behind = match &job.ordering_key {
        Some(key) if !budget_over => order::ahead(&inner, &job, key).await,
        _ => None,
    };
    let gate = match (&behind, &breaker) {
        (None, Some(key)) => breakers::admit(&inner, &job, key).await,
        _ => Gate::Go,
    };
    let probe = matches!(gate, Gate::Probe);
    let outcome: Result<Result<serde_json::Value, ExecError>, Stop> = match (executor, input, gate, behind) {
        // Claimed too late to start within the budget: the executor does not run at all.
        _ if budget_over => Ok(Err(ExecError::new(
            ErrorType::BudgetExhausted,
            "the retry budget ran out before the attempt could start",
        ))),
        // Held back by its order or its breaker: the executor does not run.
        (_, _, _, Some(behind)) => Err(Stop::Behind(behind)),
        (_, _, Gate::Held(held), None) => Err(Stop::Held(held)),
        // The API refuses unknown kinds, so this is a worker built without a kind another
        // node accepts: retryable, so that a worker that has it can take the job.
        (None, _, _, None) => Ok(Err(ExecError::new(
            ErrorType::Validation,
            format!("this worker has no executor for kind `{}`", job.kind),
        )
        .retryable(true))),
        (Some(executor), input, _, None) => match input {
            Err(e) => Ok(Err(ExecError::new(ErrorType::Internal, format!("stored input is not JSON: {e}")))),
            Ok(input) => tokio::select! {
                // Claim checks: a referenced input is read back before the kind runs (it
                // never sees the reference), a large output kept as a blob before its end
                // is recorded; both count against the attempt's timeout.
                r = async {
                    let input = claim_checks::resolve_input(&inner, &job, &attempt, input).await?;
                    let output = run_or_reuse(&inner, &job, executor.as_ref(), &attempt, input).await?;
                    claim_checks::keep_output(&inner, &job, &attempt, output).await
                } => Ok(r),
                // A kind that ends its own attempts gets a grace period to report.
                _ = tokio::time::sleep(Duration::from_millis(timeout_ms) + if executor.enforces_timeout() {
                    OWN_TIMEOUT_GRACE
                } else {
                    Duration::ZERO
                }) => Ok(Err(ExecError::new(
                    ErrorType::Timeout,
                    if cut_by_budget {
                        format!("the retry budget ran out after {timeout_ms} ms of this attempt")
                    } else {
                        format!("attempt timed out after {timeout_ms} ms")
                    },
                ))),
                _ = cancel.cancelled() => Err(Stop::Cancelled),
                _ = inner.hard_stop.cancelled() => Err(Stop::Shutdown),
            },
        },
    };
    // Executors holding resources outside their future watch the token.
    cancel.cancel();
    // On a queue whose jobs are short enough to prefetch, the slot goes to the next job
    // as soon as the work is over, while this end is recorded: its throughput is bound
    // by its jobs, not by the finish's round trip. The store may then briefly show this
    // job running next to the one that took its slot, as it shows prefetched jobs
    // running. Longer jobs keep the slot until their end is committed, so for them the
    // store never shows more attempts running than the concurrency. So do all jobs while
    // `EngineConfig::unrecorded_max` ends wait to be recorded: a store that falls behind
    // slows claims.
    let unrecorded = if early { inner.unrecorded.clone().try_acquire_owned().ok() } else { None };
    let permit = unrecorded.is_none().then_some(permit);
    let elapsed = started.elapsed().as_secs_f64();

    // What the attempt said of its target, before its end is recorded.
    // (A job handed back unrun said nothing of it.)
    if let (Some(key), Ok(ended)) = (&breaker, &outcome)
        && !ended.as_ref().is_err_and(|e| e.hand_back)
    {
        breakers::record(&inner, &job, key, probe, ended.as_ref().err()).await;
    }
    let result = match outcome {
        Err(Stop::Behind(Behind { after, wait })) => {
            Some(FinishResult::Deferred { retry_in: wait, wait: Wait::Order { after } })
        }
        Err(Stop::Held(held)) => Some(match held {
            // A gate holds back only a job with a breaker.
            Held::Wait { wait } => {
                FinishResult::Deferred { retry_in: wait, wait: Wait::Breaker(breaker.unwrap_or_default()) }
            }
            Held::Dead(error) => {
                let error = error.with_severity(severity(
                    ErrorType::CircuitOpen,
                    job.attempts_counted,
                    true,
                    dead_floor(&inner, &job),
                ));
                FinishResult::Dead { error: error.clone(), attempt_error: error, output: None }
            }
        }),
        // Cancelled by a user or the lease is gone: the store already moved the job on
        // (a node job's run learns it now rather than at the next sweep).
        Err(Stop::Cancelled) => {
            if let Some(run) = job.run_id {
                let _ = inner.advancer.send(run);
            }
            None
        }
        Err(Stop::Shutdown) => Some(FinishResult::Released),
        // Not run (a remote worker that is stopping gave it back): as at a shutdown.
        Ok(Err(e)) if e.hand_back => Some(FinishResult::Released),
        Ok(Ok(output)) => Some(succeeded(&inner, &job, output)),
        Ok(Err(e)) => Some(failed(&inner, &job, e)),
    };
    let label = match &result {
        None => "cancelled",
        Some(FinishResult::Succeeded { .. }) => "succeeded",
        Some(FinishResult::Released) => "released",
        Some(FinishResult::Deferred { .. }) => "held",
        Some(_) => "failed",
    };
    metrics::histogram!("ferry_attempt_duration_seconds", "queue" => job.queue.clone(), "kind" => job.kind.clone(), "outcome" => label)
        .record(elapsed);
    if let Some(result) = result {
        let failure = failure_of(&result);
        let final_state = match &result {
            FinishResult::Succeeded { .. } => Some("succeeded"),
            FinishResult::Dead { .. } => Some("dead"),
            _ => None,
        };
        // After its end is recorded, an ordered job lets its key's next job go; one held
        // back by its order, itself if it has become the head meanwhile.
        let order_step = match &result {
            FinishResult::Deferred { wait: Wait::Order { .. }, .. } => Some(false),
            _ => final_state.map(|_| true),
        };
        let fin = Finish { id: job.id, attempt: job.attempt, queue: job.queue.clone(), result };
        if finisher::finish(&inner, fin).await {
            if let (Some(key), Some(ended)) = (&job.ordering_key, order_step) {
                order::released(&inner, &job, key, ended).await;
            }
            count_failure(failure);
            match job.run_id {
                Some(run) => {
                    let _ = inner.advancer.send(run);
                }
                None => inner.freed.notify_one(),
            }
            if let Some(state) = final_state {
                metrics::counter!("ferry_jobs_finished_total", "queue" => job.queue.clone(), "kind" => job.kind.clone(), "state" => state)
                    .increment(1);
            }
        }
    }
    inner.running.remove(job.id, job.attempt);
    drop(permit);
}

fn succeeded(inner: &Inner, job: &ClaimedJob, output: serde_json::Value) -> FinishResult {
    // What stays inline is at most `blobs.claim_check_bytes`, which the configuration
    // keeps within this limit; the check stands for an engine configured otherwise.
    let size = serde_json::to_vec(&output).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > inner.cfg.max_output_bytes {
        let error = JobError {
            error_type: ErrorType::ResourceLimit,
            message: format!("output is {size} bytes; the limit is {} bytes", inner.cfg.max_output_bytes),
            retryable: false,
            severity: None,
        };
        return decide(inner, job, error, None, None);
    }
    FinishResult::Succeeded { output }
}

fn failed(inner: &Inner, job: &ClaimedJob, e: ExecError) -> FinishResult {
    decide(inner, job, e.to_job_error(), e.retry_after, e.output)
}

/// The queue's floor for the severity of a failure that kills one of its jobs.
fn dead_floor(inner: &Inner, job: &ClaimedJob) -> Option<Severity> {
    inner.cfg.dead_severity.get(&job.queue).copied()
}

/// The type and severity of the attempt's failure, if it failed.
pub(super) fn failure_of(result: &FinishResult) -> Option<(ErrorType, Severity)> {
    match result {
        FinishResult::Retry { error, .. } | FinishResult::Dead { attempt_error: error, .. } => {
            Some((error.error_type, error.severity.unwrap_or(Severity::Low)))
        }
        _ => None,
    }
}

/// Counts a failed attempt whose end was recorded in `ferry_failures_total{type,
/// severity}`: both label sets are Ferry's own catalogues, so the series stay bounded.
pub(super) fn count_failure(failure: Option<(ErrorType, Severity)>) {
    if let Some((error_type, severity)) = failure {
        metrics::counter!("ferry_failures_total", "type" => error_type.as_str(), "severity" => severity.as_str())
            .increment(1);
    }
}

/// What an attempt that failed with `error` becomes: a retry after the backoff (or the
/// executor's `retry_after`), or death when attempts or the retry budget ran out; with
/// the failure's severity (`ferry_core::severity`) on the attempt's error and the job's.
pub(super) fn decide(
    inner: &Inner,
    job: &ClaimedJob,
    error: JobError,
    retry_after: Option<Duration>,
    output: Option<serde_json::Value>,
) -> FinishResult {
    let state = RetryState {
        attempts_counted: job.attempts_counted,
        max_attempts: job.max_attempts,
        deadline_at: job.deadline_at,
        backoff: &job.backoff,
    };
    let now = time::now_micros();
    match decide_after_failure(state, error.clone(), retry_after, now, fastrand::f64()) {
        Decision::Retry { run_at, error } => {
            let level = severity(error.error_type, job.attempts_counted, false, None);
            let error = error.with_severity(level);
            FinishResult::Retry { retry_in: run_at - now, error, output }
        }
        Decision::Dead { error: final_error } => {
            let floor = dead_floor(inner, job);
            let level = severity(error.error_type, job.attempts_counted, true, floor);
            let attempt_error = error.with_severity(level);
            let level = severity(final_error.error_type, job.attempts_counted, true, floor);
            let final_error = final_error.with_severity(level);
            FinishResult::Dead { error: final_error, attempt_error, output }
        }
    }
}
