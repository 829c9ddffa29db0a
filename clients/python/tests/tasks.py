"""The tasks of the worker tests' worker process (`python -m ferry worker tests.tasks:app`).

Tasks write marker files named `JOB.ATTEMPT.WHAT` into `FERRY_TEST_MARKS` (holding the
worker's pid) so that a test can wait for "the task has started" or "the task saw its
cancel" instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Dict

import ferry

app = ferry.Worker(concurrency=4, use_default_registry=False)

MARKS = Path(os.environ.get("FERRY_TEST_MARKS", "."))


def mark(ctx: ferry.Context, what: str) -> None:
    (MARKS / f"{ctx.job_id}.{ctx.attempt}.{what}").write_text(str(os.getpid()))


@app.task("py_echo")
def echo(input: Any, ctx: ferry.Context) -> Dict[str, Any]:
    """Sync: reports progress and a log line, answers its input."""
    ctx.progress({"done": 1, "total": 1})
    ctx.log(f"echo on attempt {ctx.attempt}")
    return {"echo": input, "attempt": ctx.attempt, "pid": os.getpid()}


@app.task("py_flaky", no_retry_on=(ValueError,))
async def flaky(input: Dict[str, Any], ctx: ferry.Context) -> Dict[str, Any]:
    """Async: fails as its input says.

    - `fail_until`: a retryable `ConnectionError` on attempts before this one;
    - `retry_after`: `ferry.Retry(retry_after=…)` on the first attempt;
    - `fatal`: a `ValueError`, non-retryable for this task (`no_retry_on`);
    - `fail`: `ferry.Fail`, non-retryable, type `validation`.
    """
    await asyncio.sleep(0)
    if input.get("fatal"):
        raise ValueError(f"bad input: {input['fatal']}")
    if input.get("fail"):
        raise ferry.Fail(str(input["fail"]), type="validation")
    if ctx.attempt == 1 and input.get("retry_after") is not None:
        raise ferry.Retry("not yet", retry_after=float(input["retry_after"]))
    if ctx.attempt < int(input.get("fail_until", 1)):
        raise ConnectionError(f"flaky on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@app.task("py_slow", queue="py_slow")
def slow(input: Dict[str, Any], ctx: ferry.Context) -> Dict[str, Any]:
    """Sync, on a queue of its own: runs until the file `until` exists (or `seconds`
    pass), or until told to stop; from attempt `quick_from` on it returns at once."""
    mark(ctx, "started")
    if ctx.attempt >= int(input.get("quick_from", 1 << 30)):
        mark(ctx, "finished")
        return {"attempt": ctx.attempt, "pid": os.getpid(), "quick": True}
    until = input.get("until")
    end = time.monotonic() + float(input.get("seconds", 300))
    while time.monotonic() < end:
        if until and os.path.exists(until):
            break
        if ctx.cancelled.wait(0.02):
            mark(ctx, f"stopped-{ctx.cancel_reason}")
            return {"stopped": ctx.cancel_reason}
    mark(ctx, "finished")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@app.task("py_wait")
async def wait(input: Dict[str, Any], ctx: ferry.Context) -> Dict[str, Any]:
    """Async: sleeps `seconds`; a cancel cancels the sleep (and writes a marker)."""
    mark(ctx, "started")
    try:
        await asyncio.sleep(float(input.get("seconds", 300)))
    except asyncio.CancelledError:
        mark(ctx, f"cancelled-{ctx.cancel_reason}")
        raise
    return {"slept": input.get("seconds")}
