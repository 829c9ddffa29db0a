"""Tasks: how a function is registered to serve a kind (`Registry`, `@ferry.task`), what it
knows of its attempt (`Context`), and how its exceptions become the protocol's errors
(`Retry`, `Fail`, `error_of`). The `Worker` (worker.py) runs them."""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

__all__ = ["Context", "Retry", "Fail", "Registry", "TaskDef", "task", "default_registry", "error_of"]

log = logging.getLogger("ferry.worker")

MAX_EVENTS_PER_ATTEMPT = 1000  # past it the server answers 429 event_limit
MAX_EVENT_BYTES = 4096
MAX_MESSAGE_CHARS = 4000

F = TypeVar("F", bound=Callable[..., Any])
ExcTypes = Union[Type[BaseException], Tuple[Type[BaseException], ...]]
# Sends an attempt's event (session, event); callable from any thread.
Emit = Callable[[str, Dict[str, Any]], None]


class Retry(Exception):
    """Raise to fail this attempt *retryably*: the job is retried with its backoff, or
    after `retry_after` seconds when given, until its attempts run out.

    `type` is the error type recorded (default `Retry`): one of Ferry's types
    (`rate_limited`, `network`, …) or any name."""

    def __init__(self, message: str = "", retry_after: Optional[float] = None, *, type: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.type = type


class Fail(Exception):
    """Raise to fail the job for good: no retry, it goes to the dead-letter queue.

    `type` is the error type recorded (default `Fail`), e.g. `validation`."""

    def __init__(self, message: str = "", *, type: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.type = type


@dataclass
class TaskDef:
    """A registered task: the kind it serves, its queue (`None`: the server's default
    for remote kinds, `remote`), the function and how its exceptions map."""

    kind: str
    fn: Callable[..., Any]
    queue: Optional[str] = None
    retry_on: Tuple[Type[BaseException], ...] = ()
    no_retry_on: Tuple[Type[BaseException], ...] = ()
    is_async: bool = False
    takes_ctx: bool = False
    ctx_keyword: bool = False

    def registration(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"kind": self.kind}
        if self.queue:
            out["queue"] = self.queue
        return out


def _as_tuple(types: Optional[ExcTypes]) -> Tuple[Type[BaseException], ...]:
    if types is None:
        return ()
    if isinstance(types, tuple):
        return types
    if isinstance(types, (list, set, frozenset)):
        return tuple(types)
    return (types,)


def _takes_ctx(fn: Callable[..., Any]) -> Tuple[bool, bool]:
    """(passes a context, as the keyword `ctx`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False, False
    params = list(sig.parameters.values())
    if "ctx" in sig.parameters and sig.parameters["ctx"].kind in (
            inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        p = sig.parameters["ctx"]
        return True, p.kind == inspect.Parameter.KEYWORD_ONLY
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return True, False
    return len(positional) >= 2, False


class Registry:
    """Tasks by kind. `Worker.task` registers on the worker's own registry; the
    module-level `ferry.task` on `ferry.default_registry`, which every `Worker` also
    serves unless made with `use_default_registry=False`."""

    def __init__(self) -> None:
        self.tasks: Dict[str, TaskDef] = {}

    def task(self, kind: str, *, queue: Optional[str] = None, retry_on: Optional[ExcTypes] = None,
             no_retry_on: Optional[ExcTypes] = None) -> Callable[[F], F]:
        """Registers the decorated function as the handler of `kind` (on `queue`)."""

        def decorate(fn: F) -> F:
            self.add(kind, fn, queue=queue, retry_on=retry_on, no_retry_on=no_retry_on)
            return fn

        return decorate

    def add(self, kind: str, fn: Callable[..., Any], *, queue: Optional[str] = None,
            retry_on: Optional[ExcTypes] = None, no_retry_on: Optional[ExcTypes] = None) -> TaskDef:
        if kind in self.tasks and self.tasks[kind].fn is not fn:
            raise ValueError(f"kind {kind!r} already has a task: {self.tasks[kind].fn!r}")
        takes, kw = _takes_ctx(fn)
        td = TaskDef(kind=kind, fn=fn, queue=queue, retry_on=_as_tuple(retry_on), no_retry_on=_as_tuple(no_retry_on),
                     is_async=inspect.iscoroutinefunction(fn), takes_ctx=takes, ctx_keyword=kw)
        self.tasks[kind] = td
        return td


default_registry = Registry()


def task(kind: str, *, queue: Optional[str] = None, retry_on: Optional[ExcTypes] = None,
         no_retry_on: Optional[ExcTypes] = None) -> Callable[[F], F]:
    """`@ferry.task("resize", queue="images")`: registers on `ferry.default_registry`."""
    return default_registry.task(kind, queue=queue, retry_on=retry_on, no_retry_on=no_retry_on)


class Context:
    """What a task knows of its attempt, and how it reports.

    - `job_id`, `attempt` (the fencing token, 1 for the first), `kind`, `queue`,
      `workspace`, `run` (the workflow run's id, or `None`), `input`.
    - `timeout` (seconds) and `deadline` (a `time.time()` value): Ferry fails the attempt
      with `timeout` then, whatever the task does. `remaining()` is the time left.
    - `cancelled`: a `threading.Event`, set when Ferry tells the worker to stop this
      attempt (`cancel_reason` is `cancelled`, `timeout` or `lost`) or the worker is
      shutting down and hands the job back (`shutdown`). Check it in long loops.
    - `progress(value)`, `log(line)`: the job's `progress` and `log` events. Callable
      from any thread; sent in the background, before the attempt's result.
    """

    def __init__(self, job: Dict[str, Any], session: str, emit: Emit) -> None:
        self._emit_to = emit
        self.session = session
        self.job_id: str = job["id"]
        self.attempt: int = int(job["attempt"])
        self.kind: str = job.get("kind", "")
        self.queue: Optional[str] = job.get("queue")
        self.workspace: Optional[str] = job.get("workspace")
        self.run: Optional[str] = job.get("run")
        self.input: Any = job.get("input")
        timeout_ms = job.get("timeout_ms")
        self.timeout: Optional[float] = None if timeout_ms is None else timeout_ms / 1000.0
        self.soft_timeout: Optional[float] = (None if job.get("soft_timeout_ms") is None
                                              else job["soft_timeout_ms"] / 1000.0)
        self.started = time.time()
        self.deadline: Optional[float] = None if self.timeout is None else self.started + self.timeout
        self.cancelled = threading.Event()
        self.cancel_reason: Optional[str] = None
        self._events_sent = 0

    def remaining(self) -> Optional[float]:
        """Seconds left before the attempt's hard timeout (`None`: no timeout known)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def progress(self, value: Any) -> None:
        """Records the job's progress (any JSON, at most 4 KiB)."""
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_EVENT_BYTES:
            raise ValueError(f"progress is {size} bytes of JSON; at most {MAX_EVENT_BYTES}")
        self._emit({"progress": value})

    def log(self, line: str) -> None:
        """Adds a line to the job's log (cut to 4,096 bytes)."""
        raw = str(line).encode()
        if len(raw) > MAX_EVENT_BYTES:
            raw = raw[:MAX_EVENT_BYTES]
        self._emit({"log": raw.decode(errors="ignore")})

    def _emit(self, body: Dict[str, Any]) -> None:
        if self._events_sent >= MAX_EVENTS_PER_ATTEMPT:
            if self._events_sent == MAX_EVENTS_PER_ATTEMPT:
                log.warning("job %s attempt %s: past %d events, the rest are dropped", self.job_id, self.attempt,
                            MAX_EVENTS_PER_ATTEMPT)
                self._events_sent += 1
            return
        self._events_sent += 1
        event = {"id": self.job_id, "attempt": self.attempt, **body}
        self._emit_to(self.session, event)


def error_of(td: TaskDef, e: BaseException) -> Dict[str, Any]:
    """The protocol's `error` for an exception a task raised."""
    if isinstance(e, Retry):
        err: Dict[str, Any] = {"type": e.type or "Retry", "message": _message(e.message, e), "retryable": True}
        if e.retry_after is not None:
            err["retry_after_ms"] = max(0, int(round(float(e.retry_after) * 1000)))
        return err
    if isinstance(e, Fail):
        return {"type": e.type or "Fail", "message": _message(e.message, e), "retryable": False}
    retryable = True
    if td.no_retry_on and isinstance(e, td.no_retry_on):
        retryable = False
    elif td.retry_on and not isinstance(e, td.retry_on):
        retryable = False
    return {"type": type(e).__name__, "message": _message(str(e), e), "retryable": retryable}


def _message(text: str, e: BaseException) -> str:
    text = text or type(e).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "…"
    return text

