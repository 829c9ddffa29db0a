"""The shapes of the API's answers, as `TypedDict`s (plain dicts at run time).

Only the fields a client commonly reads are listed; the server's answers carry more
(`GET /v1/openapi.json` is the exact reference), and those are in the dict too.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict


class JobError(TypedDict, total=False):
    type: str
    message: str
    retryable: bool
    severity: Optional[str]


class Attempt(TypedDict, total=False):
    attempt: int
    worker: str
    started_at: str
    finished_at: Optional[str]
    outcome: Optional[str]
    error: Optional[JobError]


class Submitted(TypedDict):
    """The answer to a submission: `POST /v1/jobs`, each entry of a batch."""

    id: str
    state: str
    created: bool


class Job(TypedDict, total=False):
    """`GET /v1/jobs/{id}`."""

    id: str
    kind: str
    queue: str
    state: str
    priority: int
    input: Any
    labels: Dict[str, str]
    max_attempts: int
    attempts_used: int
    timeout_ms: int
    created_at: str
    run_at: str
    updated_at: str
    finished_at: Optional[str]
    output: Any
    error: Optional[JobError]
    attempts: List[Attempt]


class JobSpec(TypedDict, total=False):
    """A job to submit (`ferry.job_spec(kind, input, **fields)` builds one)."""

    kind: str
    input: Any
    queue: str
    priority: int
    max_attempts: int
    backoff: Dict[str, Any]
    timeout_ms: int
    soft_timeout_ms: int
    total_timeout_ms: int
    delay_ms: int
    run_at: str
    labels: Dict[str, str]
    idempotency_key: str
    on_limit: str
    breaker: str
    ordering_key: str


class RunAccepted(TypedDict):
    """The answer to `POST /v1/runs`."""

    id: str
    version: int
    state: str
    created: bool


class Run(TypedDict, total=False):
    """`GET /v1/runs/{id}`: the run and each node (`nodes`)."""

    id: str
    workflow: str
    version: int
    state: str
    input: Any
    nodes: Any
    error: Any
    created_at: str
    finished_at: Optional[str]


class WorkflowAccepted(TypedDict):
    name: str
    version: int


__all__ = ["Attempt", "Job", "JobError", "JobSpec", "Run", "RunAccepted", "Submitted", "WorkflowAccepted"]
