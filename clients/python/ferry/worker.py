"""The remote worker: Python functions serving Ferry kinds over the worker protocol
(`docs/worker-protocol.md`, version 1).

    app = ferry.Worker("http://127.0.0.1:7700", concurrency=10)

    @app.task("resize", queue="images")
    def resize(input, ctx):
        ctx.progress({"done": 0})
        return {"path": ...}

    app.run()          # or: python -m ferry worker mymodule:app

How it works, and the choices made:

- One `Worker` is one session (`POST /v1/workers/sessions`) serving every kind it has,
  with `concurrency` slots. It leases with `max` = its free slots and a long poll
  (`wait_ms` = the server's `max_wait_ms`), so an idle worker costs one waiting request;
  with no free slot it does not lease at all.
- A sync function runs in a thread pool of `concurrency` threads, an `async def` one as
  a task on the worker's event loop. A function takes the job's input, and optionally a
  second argument (or a keyword argument named `ctx`): the `Context` of the attempt.
- Heartbeats (`heartbeat_ms`, from the server) run on their own task, so a busy loop of
  results never delays them. A cancel they bring (`cancelled`, `timeout`, `lost`) sets
  `ctx.cancelled` (a `threading.Event`, for sync and async functions alike) and cancels
  an async function's task; a sync function stops when it next looks at the event. Ferry
  has already recorded the attempt's end then, so its result is not sent.
- Results are sent in batches (up to 100 a call) by one sender that sends an attempt's
  pending progress and log events before its result (the server refuses them after).
- Exceptions: `ferry.Retry` is a retryable failure (with `retry_after` replacing the
  backoff), `ferry.Fail` a non-retryable one (the job goes to the dead-letter queue).
  Any other exception is retryable, typed with its class name, unless the task says
  otherwise: `no_retry_on=(ValueError,)` makes those non-retryable, and `retry_on=(...)`
  makes every exception *not* listed there non-retryable. A result that is not JSON is a
  non-retryable `TypeError`.
- `unknown_session` from any call (the server timed the session out, e.g. after a long
  pause of this process): the worker registers again and drops what it was running
  (Ferry has failed those attempts with `worker_lost` and retries them).
- SIGTERM or SIGINT (or `stop()`): stop leasing (a pending long poll is ended by a second
  lease call with `wait_ms` 0, as the protocol says; a job that call brings is released),
  wait up to `grace` seconds (default 30) for the running functions, hand back what is
  left with `release` (the job is queued again at once, the attempt not counted), close
  the session (`DELETE`), and return 0. A second signal skips the rest of the grace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar, Union

import httpx

from . import _core
from ._core import FerryError

__all__ = ["Worker", "Context", "Retry", "Fail", "Registry", "TaskDef", "task", "default_registry"]

log = logging.getLogger("ferry.worker")

PROTOCOL = 1
MAX_BATCH = 100  # results or events per call (protocol §4, §5)
MAX_EVENTS_PER_ATTEMPT = 1000  # past it the server answers 429 event_limit
MAX_EVENT_BYTES = 4096
MAX_MESSAGE_CHARS = 4000
# How long a stopping worker waits for its pending long poll to end once a second lease
# call has asked it to (protocol §2: at once).
_LEASE_END_WAIT = 2.0

F = TypeVar("F", bound=Callable[..., Any])
ExcTypes = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


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

    def __init__(self, worker: "Worker", job: Dict[str, Any], session: str) -> None:
        self._worker = worker
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
        self._worker._threadsafe(self._worker._add_event, self.session, event)


@dataclass
class _Running:
    ctx: Context
    td: TaskDef
    task: Optional["asyncio.Task[None]"] = None
    abandoned: bool = False  # Ferry named it in a heartbeat's cancel, or the session was lost
    released: bool = False  # handed back at shutdown


@dataclass
class _Outgoing:
    session: str
    body: Dict[str, Any]


@dataclass
class _Session:
    id: str
    heartbeat_ms: int = 5000
    session_timeout_ms: int = 30000
    max_wait_ms: int = 30000
    raw: Dict[str, Any] = field(default_factory=dict)


class Worker:
    """A remote worker process (one session). See the module's docstring.

    `url`, `token`: the server (default `FERRY_SERVER` / `FERRY_TOKEN`, as the CLI).
    `concurrency`: jobs run at once (1 to 1,000). `name`: the session's label in
    `GET /v1/workers` (default `python@HOST:PID`). `grace`: seconds a shutdown waits for
    running tasks before handing them back. `lease_wait`: longest long poll, seconds
    (default: the server's `max_wait_ms`). `transport`: an httpx transport to use
    instead of the network (tests).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        concurrency: int = 10,
        name: Optional[str] = None,
        grace: float = 30.0,
        lease_wait: Optional[float] = None,
        registry: Optional[Registry] = None,
        use_default_registry: bool = True,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        if not 1 <= concurrency <= 1000:
            raise ValueError("concurrency must be 1 to 1,000")
        self.url = _core.default_url(url)
        self.token = _core.default_token(token)
        self.concurrency = concurrency
        self.name = name
        self.grace = grace
        self.lease_wait = lease_wait
        self.registry = registry or Registry()
        self.use_default_registry = use_default_registry
        self.transport = transport
        self.session: Optional[_Session] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._running: Dict[Tuple[str, int], _Running] = {}
        self._events: List[_Outgoing] = []
        self._results: List[_Outgoing] = []
        self._stop_requested = False
        self._hard_requested = False

    # -- registration -------------------------------------------------------------------
    def task(self, kind: str, *, queue: Optional[str] = None, retry_on: Optional[ExcTypes] = None,
             no_retry_on: Optional[ExcTypes] = None) -> Callable[[F], F]:
        """`@app.task("resize", queue="images", no_retry_on=(ValueError,))`."""
        return self.registry.task(kind, queue=queue, retry_on=retry_on, no_retry_on=no_retry_on)

    @property
    def tasks(self) -> Dict[str, TaskDef]:
        """Every task this worker serves: its own, and the default registry's."""
        out: Dict[str, TaskDef] = {}
        if self.use_default_registry:
            out.update(default_registry.tasks)
        out.update(self.registry.tasks)
        return out

    # -- running ------------------------------------------------------------------------
    def run(self) -> int:
        """Runs the worker until SIGTERM/SIGINT (or `stop()`), then drains; returns 0.
        Must be called from the main thread (it installs the signal handlers)."""
        return asyncio.run(self.serve(install_signals=True))

    def stop(self, *, now: bool = False) -> None:
        """Asks the worker to shut down (from any thread): as on SIGTERM, or with
        `now=True` without waiting for running tasks (they are handed back)."""
        self._stop_requested = True
        self._hard_requested = self._hard_requested or now
        self._threadsafe(self._wake_stop)

    async def serve(self, *, install_signals: bool = False) -> int:
        """The worker as a coroutine: for an application that runs its own event loop."""
        tasks = self.tasks
        if not tasks:
            raise ValueError("the worker has no task: register one with @app.task(kind) or @ferry.task(kind)")
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._hard = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._outgoing = asyncio.Event()
        self._sender_idle = asyncio.Event()
        self._sender_idle.set()
        self._reopen_lock = asyncio.Lock()
        if self._stop_requested:
            self._wake_stop()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                                           thread_name_prefix="ferry-task")
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_core.headers(self.token), trust_env=False,
                                       timeout=httpx.Timeout(30.0), transport=self.transport,
                                       limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))
        heartbeat = sender = None
        try:
            await self._open()
            if self.session is None:  # stopped before a session could be opened
                return 0
            heartbeat = asyncio.ensure_future(self._heartbeat_loop())
            sender = asyncio.ensure_future(self._send_loop())
            await self._lease_loop()
            await self._drain()
            return 0
        finally:
            for t in (heartbeat, sender):
                if t is not None:
                    t.cancel()
            for t in (heartbeat, sender):
                if t is not None:
                    try:
                        await t
                    except (asyncio.CancelledError, Exception):
                        pass
            await self._close_session()
            await self._http.aclose()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            # A sync task still running past the grace was handed back; its thread is left
            # to end on its own (it was told through ctx.cancelled).
            self._pool.shutdown(wait=False, cancel_futures=True)

    def busy_threads(self) -> int:
        """Sync tasks whose threads are still running (after `run()` returns, those
        that outlived the grace; `python -m ferry worker` exits without them)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith("ferry-task") and t.is_alive())

    # -- plumbing -----------------------------------------------------------------------
    def _threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            fn(*args)
        else:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _wake_stop(self) -> None:
        if getattr(self, "_stopping", None) is None:
            return
        self._stopping.set()
        if self._hard_requested:
            self._hard.set()

    def _on_signal(self, sig: int) -> None:
        if self._stopping.is_set():
            log.warning("%s again: handing back the running jobs now", signal.Signals(sig).name)
            self._hard_requested = True
            self._hard.set()
        else:
            log.info("%s: stopping (no new jobs; up to %.0f s for the %d running)", signal.Signals(sig).name,
                     self.grace, len(self._running))
            self._stop_requested = True
        self._stopping.set()

    async def _call(self, method: str, path: str, body: Any = None, *, read_timeout: Optional[float] = None) -> Any:
        timeout = httpx.Timeout(30.0, read=read_timeout) if read_timeout is not None else httpx.Timeout(30.0)
        try:
            resp = await self._http.request(method, path, json=body, timeout=timeout)
        except httpx.TransportError as e:
            raise _core.transport_error(e) from e
        return _core.decode(resp)

    async def _open(self) -> None:
        """Opens a session, retrying while the server cannot be reached (or answers 5xx)
        until stopped; a refusal (a kind or queue conflict, a bad token) is raised."""
        hostname = socket.gethostname()
        name = (self.name or f"python@{hostname}:{os.getpid()}")[:128]
        body = {"protocol": PROTOCOL, "name": name, "concurrency": self.concurrency,
                "kinds": [td.registration() for td in self._tasks.values()]}
        pause = 0.2
        while not self._stopping.is_set():
            try:
                answer = await self._call("POST", "/v1/workers/sessions", body)
            except FerryError as e:
                if e.status != 0 and e.status < 500 and e.status != 429:
                    raise
                log.warning("cannot open a session at %s (%s); trying again in %.1f s", self.url, e, pause)
                await self._sleep_or_stop(pause)
                pause = min(pause * 2, 5.0)
                continue
            self.session = _Session(id=answer["session"], heartbeat_ms=int(answer.get("heartbeat_ms", 5000)),
                                    session_timeout_ms=int(answer.get("session_timeout_ms", 30000)),
                                    max_wait_ms=int(answer.get("max_wait_ms", 30000)), raw=answer)
            log.info("session %s open at %s: %s, concurrency %d", self.session.id, self.url,
                     ", ".join(f"{t.kind}@{t.queue or 'remote'}" for t in self._tasks.values()), self.concurrency)
            return

    async def _reopen(self, lost: str) -> None:
        """`unknown_session` for session `lost`: register again (once, however many calls
        found out) and drop what the lost session ran."""
        async with self._reopen_lock:
            if self.session is None or self.session.id != lost:
                return
            log.warning("session %s is unknown to the server (timed out?): registering again, dropping %d "
                        "running jobs", lost, len(self._running))
            for r in list(self._running.values()):
                if r.ctx.session == lost:
                    self._abandon(r, "lost")
            self._events = [e for e in self._events if e.session != lost]
            self._results = [r for r in self._results if r.session != lost]
            self.session = None
            await self._open()

    async def _sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # -- leasing ------------------------------------------------------------------------
    async def _lease(self, session: str, max_jobs: int, wait_ms: int) -> List[Dict[str, Any]]:
        answer = await self._call("POST", f"/v1/workers/sessions/{session}/lease", {"max": max_jobs,
                                                                                    "wait_ms": wait_ms},
                                  read_timeout=wait_ms / 1000.0 + 15.0)
        return list(answer.get("jobs", []))

    async def _lease_loop(self) -> None:
        pause = 0.2
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                stop_wait = asyncio.ensure_future(self._stopping.wait())
                slot_wait = asyncio.ensure_future(self._slot_freed.wait())
                await asyncio.wait({stop_wait, slot_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                slot_wait.cancel()
                continue
            session = self.session
            if session is None:
                return
            wait_ms = session.max_wait_ms
            if self.lease_wait is not None:
                wait_ms = min(wait_ms, int(self.lease_wait * 1000))
            lease = asyncio.ensure_future(self._lease(session.id, free, wait_ms))
            stop_wait = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({lease, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if not lease.done():
                # Stopping while the long poll waits: a second lease call ends the first
                # (protocol §2); whatever either brings is handed back.
                await self._end_pending_lease(session.id, lease)
                return
            try:
                jobs = lease.result()
            except FerryError as e:
                if e.code == "unknown_session":
                    await self._reopen(session.id)
                    continue
                log.warning("lease failed (%s); trying again in %.1f s", e, pause)
                await self._sleep_or_stop(pause)
                pause = min(pause * 2, 5.0)
                continue
            pause = 0.2
            for job in jobs:
                if self._stopping.is_set() or session is not self.session:
                    self._queue_result(session.id, {"id": job["id"], "attempt": job["attempt"], "release": True})
                else:
                    self._start(session.id, job)

    async def _end_pending_lease(self, session: str, lease: "asyncio.Future[List[Dict[str, Any]]]") -> None:
        extra: List[Dict[str, Any]] = []
        try:
            extra = await asyncio.wait_for(self._lease(session, 1, 0), timeout=10.0)
        except (FerryError, asyncio.TimeoutError) as e:
            log.debug("ending the pending lease: %s", e)
        try:
            extra += await asyncio.wait_for(asyncio.shield(lease), timeout=_LEASE_END_WAIT)
        except (FerryError, asyncio.TimeoutError) as e:
            # Not ended by the second call: give up on it (the connection is closed; the
            # session's DELETE fails anything the server still hands it).
            log.debug("the pending lease did not end: %s", e)
            lease.cancel()
        for job in extra:
            self._queue_result(session, {"id": job["id"], "attempt": job["attempt"], "release": True})

    # -- running a job ------------------------------------------------------------------
    def _start(self, session: str, job: Dict[str, Any]) -> None:
        td = self._tasks.get(job.get("kind", ""))
        if td is None:  # the server should not send a kind this session did not register
            self._queue_result(session, {"id": job["id"], "attempt": job["attempt"], "error": {
                "type": "validation", "message": f"this worker has no task for kind {job.get('kind')!r}",
                "retryable": True}})
            return
        ctx = Context(self, job, session)
        r = _Running(ctx=ctx, td=td)
        self._running[(ctx.job_id, ctx.attempt)] = r
        r.task = asyncio.ensure_future(self._execute(r))

    async def _execute(self, r: _Running) -> None:
        ctx, td = r.ctx, r.td
        args: List[Any] = [ctx.input]
        kwargs: Dict[str, Any] = {}
        if td.takes_ctx:
            if td.ctx_keyword:
                kwargs["ctx"] = ctx
            else:
                args.append(ctx)
        result: Optional[Dict[str, Any]] = None
        key = (ctx.job_id, ctx.attempt)
        try:
            if td.is_async:
                output = await td.fn(*args, **kwargs)
            else:
                assert self._loop is not None
                output = await self._loop.run_in_executor(self._pool, functools.partial(td.fn, *args, **kwargs))
            try:
                json.dumps(output)
                result = {"id": ctx.job_id, "attempt": ctx.attempt, "output": output}
            except (TypeError, ValueError) as e:
                result = {"id": ctx.job_id, "attempt": ctx.attempt, "error": {
                    "type": "TypeError", "message": f"the task's result is not JSON: {e}", "retryable": False}}
        except asyncio.CancelledError:
            result = None  # Ferry stopped the attempt, or the worker handed it back
        except BaseException as e:  # noqa: BLE001 - a task's failure of any kind is the job's
            result = {"id": ctx.job_id, "attempt": ctx.attempt, "error": _error_of(td, e)}
            if not (r.abandoned or r.released):
                log.warning("job %s (%s) attempt %d failed: %s", ctx.job_id, td.kind, ctx.attempt,
                            result["error"]["message"], exc_info=not isinstance(e, (Retry, Fail)))
        finally:
            if self._running.get(key) is r:
                del self._running[key]
            self._slot_freed.set()
        if result is not None and not r.abandoned and not r.released:
            self._queue_result(ctx.session, result)

    def _abandon(self, r: _Running, reason: str) -> None:
        r.abandoned = True
        r.ctx.cancel_reason = reason
        r.ctx.cancelled.set()
        if r.td.is_async and r.task is not None:
            r.task.cancel()

    # -- heartbeats ---------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            session = self.session
            interval = (session.heartbeat_ms if session else 1000) / 1000.0
            await asyncio.sleep(interval)
            session = self.session
            if session is None:
                continue
            try:
                answer = await self._call("POST", f"/v1/workers/sessions/{session.id}/heartbeat", {})
            except FerryError as e:
                if e.code == "unknown_session":
                    asyncio.ensure_future(self._reopen(session.id))
                else:
                    log.warning("heartbeat failed: %s", e)
                continue
            for c in (answer or {}).get("cancel", []):
                r = self._running.get((c.get("id"), c.get("attempt")))
                if r is not None and r.ctx.session == session.id:
                    log.info("job %s attempt %s: stop (%s)", c.get("id"), c.get("attempt"), c.get("reason"))
                    self._abandon(r, str(c.get("reason", "cancelled")))

    # -- results and events -------------------------------------------------------------
    def _add_event(self, session: str, event: Dict[str, Any]) -> None:
        self._events.append(_Outgoing(session, event))
        self._outgoing.set()

    def _queue_result(self, session: str, body: Dict[str, Any]) -> None:
        self._results.append(_Outgoing(session, body))
        self._outgoing.set()

    async def _send_loop(self) -> None:
        pause = 0.1
        while True:
            if not self._events and not self._results:
                self._sender_idle.set()
                self._outgoing.clear()
                await self._outgoing.wait()
            self._sender_idle.clear()
            try:
                await self._send_pending()
                pause = 0.1
            except FerryError as e:
                log.warning("sending results failed (%s); trying again in %.1f s", e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _send_pending(self) -> None:
        """Sends every pending event, then every pending result (events first: the server
        refuses an attempt's events once it has its result)."""
        for which, path, key in ((self._events, "events", "events"), (self._results, "complete", "results")):
            while which:
                session = which[0].session
                if self.session is None or session != self.session.id:
                    which.pop(0)  # a lost session's: refused anyway
                    continue
                batch: List[_Outgoing] = []
                while which and len(batch) < MAX_BATCH and which[0].session == session:
                    batch.append(which.pop(0))
                try:
                    answer = await self._call("POST", f"/v1/workers/sessions/{session}/{path}",
                                              {key: [o.body for o in batch]})
                except FerryError as e:
                    if e.code == "unknown_session":
                        await self._reopen(session)
                        continue
                    if e.status == 0 or e.status >= 500 or e.status == 429 and path == "complete":
                        which[0:0] = batch  # put back, in order, and try again
                        raise
                    # A refusal of the batch (one bad entry): send them one by one so the
                    # others get through; the bad one is logged and dropped.
                    if len(batch) > 1:
                        for o in batch:
                            await self._send_one(path, key, o)
                    else:
                        log.error("the server refused %s %s: %s", path, batch[0].body.get("id"), e)
                    continue
                if path == "complete":
                    for o, res in zip(batch, (answer or {}).get("results", [])):
                        if not res.get("accepted", True):
                            log.info("job %s attempt %s: result refused (the attempt is no longer this "
                                     "session's)", o.body.get("id"), o.body.get("attempt"))

    async def _send_one(self, path: str, key: str, o: _Outgoing) -> None:
        try:
            await self._call("POST", f"/v1/workers/sessions/{o.session}/{path}", {key: [o.body]})
        except FerryError as e:
            log.error("the server refused %s for job %s: %s", path, o.body.get("id"), e)

    async def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self._events or self._results or not self._sender_idle.is_set()) and time.monotonic() < deadline:
            self._outgoing.set()
            await asyncio.sleep(0.02)

    # -- shutdown -----------------------------------------------------------------------
    async def _drain(self) -> None:
        if self._running and not self._hard.is_set():
            log.info("waiting up to %.0f s for %d running jobs", self.grace, len(self._running))
            deadline = time.monotonic() + self.grace
            while self._running and not self._hard.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._slot_freed.clear()
                freed = asyncio.ensure_future(self._slot_freed.wait())
                hard = asyncio.ensure_future(self._hard.wait())
                await asyncio.wait({freed, hard}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                freed.cancel()
                hard.cancel()
        for r in list(self._running.values()):
            log.info("job %s attempt %d: handed back (release)", r.ctx.job_id, r.ctx.attempt)
            r.released = True
            r.ctx.cancel_reason = "shutdown"
            r.ctx.cancelled.set()
            self._queue_result(r.ctx.session, {"id": r.ctx.job_id, "attempt": r.ctx.attempt, "release": True})
            if r.td.is_async and r.task is not None:
                r.task.cancel()
        await self._flush(10.0)

    async def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        try:
            await self._call("DELETE", f"/v1/workers/sessions/{session.id}")
            log.info("session %s closed", session.id)
        except FerryError as e:
            if e.code != "unknown_session":
                log.warning("closing session %s: %s", session.id, e)


def _error_of(td: TaskDef, e: BaseException) -> Dict[str, Any]:
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

