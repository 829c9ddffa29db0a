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
  with `concurrency` slots.
- One pump leases and sends results, so that a busy worker makes about one call per
  batch of jobs rather than two per job:
  - A lease asks for the free slots (`max`) with a long poll (`wait_ms` = the server's
    `max_wait_ms`), so an idle worker costs one waiting request; with no free slot it
    does not lease at all.
  - The results ready when it leases ride in the same call (`complete` with `lease`:
    the server records them, then leases).
  - When the last lease brought as many jobs as it asked for (work is waiting), a freed
    slot waits up to `batch_window` (default 2 ms) for the others, until every slot is
    free, and a result that ends while such a call is on its way
    waits up to 2 ms for it to come back. Otherwise (the worker is keeping up) a result
    is sent at once on its own, beside the waiting long poll.
- A sync function runs in a thread pool of `concurrency` threads, an `async def` one as
  a task on the worker's event loop. A function takes the job's input, and optionally a
  second argument (or a keyword argument named `ctx`): the `Context` of the attempt.
- Heartbeats (`heartbeat_ms`, from the server) run on their own task, so a busy loop of
  results never delays them. A cancel they bring (`cancelled`, `timeout`, `lost`) sets
  `ctx.cancelled` (a `threading.Event`, for sync and async functions alike) and cancels
  an async function's task; a sync function stops when it next looks at the event. Ferry
  has already recorded the attempt's end then, so its result is not sent.
- Progress and log events are sent in batches (up to 100 a call) on their own task; an
  attempt's events are always sent before its result (the server refuses them after).
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
  lease call with `wait_ms` 0, as the protocol says; a job either call brings is
  released), wait up to `grace` seconds (default 30) for the running functions, hand
  back what is left with `release` (the job is queued again at once, the attempt not
  counted), close the session (`DELETE`), and return 0. A second signal skips the rest
  of the grace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import aiohttp

from . import _core
from ._core import FerryError
from .tasks import (Context, ExcTypes, F, Fail, Registry, Retry, TaskDef, default_registry, error_of,
                    task)

__all__ = ["Worker", "Context", "Retry", "Fail", "Registry", "TaskDef", "task", "default_registry"]

log = logging.getLogger("ferry.worker")

PROTOCOL = 1
MAX_BATCH = 100  # results or events per call (protocol §4, §5)
# How long a stopping worker waits for its pending long poll to end once a second lease
# call has asked it to (protocol §2: at once).
_LEASE_END_WAIT = 2.0
# While work is waiting (the last lease was full), how long a result that ends during a
# lease call waits for that call to come back, to ride in the next one.
_HOLD = 0.002
# How long an idle worker that just started sync tasks waits for their threads to take
# them before its next long poll (building a request holds the GIL those threads need).
_ENTRY_WAIT = 0.001
# A call's connect and read timeout, seconds (a lease's read waits its long poll too).
_CALL_TIMEOUT = 30.0


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


@dataclass
class _PumpState:
    call: Optional["asyncio.Future[Any]"] = None  # the lease call on its way
    carried: List[_Outgoing] = field(default_factory=list)  # the results it carries
    session: str = ""
    asked: int = 0
    since: float = 0.0
    full: bool = False  # the last lease brought all it asked for: work is waiting
    gather_since: Optional[float] = None  # a slot is free, waiting for others
    entry: Optional[Tuple[int, float]] = None  # sync tasks to enter their threads, until


class Worker:
    """A remote worker process (one session). See the module's docstring.

    `url`, `token`: the server (default `FERRY_SERVER` / `FERRY_TOKEN`, as the CLI).
    `concurrency`: jobs run at once (1 to 1,000). `name`: the session's label in
    `GET /v1/workers` (default `python@HOST:PID`). `grace`: seconds a shutdown waits for
    running tasks before handing them back. `lease_wait`: longest long poll, seconds
    (default: the server's `max_wait_ms`). `batch_window`: while work is waiting, how
    long a freed slot waits for others before the worker leases again, with their
    results in the same call (seconds, default 0.002; 0 leases at once).
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
        batch_window: float = 0.002,
        registry: Optional[Registry] = None,
        use_default_registry: bool = True,
    ) -> None:
        if not 1 <= concurrency <= 1000:
            raise ValueError("concurrency must be 1 to 1,000")
        self.url = _core.default_url(url)
        self.token = _core.default_token(token)
        self.concurrency = concurrency
        self.name = name
        self.grace = grace
        self.lease_wait = lease_wait
        if not 0 <= batch_window <= 1:
            raise ValueError("batch_window must be 0 to 1 second")
        self.batch_window = batch_window
        self.registry = registry or Registry()
        self.use_default_registry = use_default_registry
        self.session: Optional[_Session] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._running: Dict[Tuple[str, int], _Running] = {}
        self._events: List[_Outgoing] = []
        self._results: List[_Outgoing] = []
        self._stop_requested = False
        self._hard_requested = False
        # What the worker did: jobs leased, and calls made by their path's last part
        # (`sessions`, `lease`, `complete`, `events`, `heartbeat`) or `close`.
        self.stats: Dict[str, Any] = {"jobs": 0, "calls": {}}
        self._busy = 0  # sync tasks running on a pool thread
        self._submitted = 0  # sync tasks handed to the pool, ever
        self._entered = 0  # ... and that started running there
        self._tell_entry = False  # a thread that starts a task wakes the pump
        self._busy_lock = threading.Lock()

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
        self._wake = asyncio.Event()  # the pump has something to look at
        self._events_ready = asyncio.Event()
        self._events_lock = asyncio.Lock()
        self._reopen_lock = asyncio.Lock()
        self._plain: Optional["asyncio.Future[None]"] = None  # results sent on their own
        self._retry_at = 0.0  # after a failed call, no call before this (monotonic)
        self._pause = 0.2
        if self._stop_requested:
            self._wake_stop()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                                           thread_name_prefix="ferry-task")
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        # The protocol's calls go through aiohttp, not httpx: about a fifth of httpx's time a
        # call on asyncio (its parser is compiled), which is most of a busy worker's time.
        self._http = aiohttp.ClientSession(headers=_core.headers(self.token), trust_env=False,
                                           connector=aiohttp.TCPConnector(limit=8))
        heartbeat = sender = None
        try:
            await self._open()
            if self.session is None:  # stopped before a session could be opened
                return 0
            heartbeat = asyncio.ensure_future(self._heartbeat_loop())
            sender = asyncio.ensure_future(self._event_loop())
            await self._pump()
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
            await self._http.close()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            # A sync task still running past the grace was handed back; its thread is left
            # to end on its own (it was told through ctx.cancelled).
            self._pool.shutdown(wait=False, cancel_futures=True)

    def busy_threads(self) -> int:
        """Sync tasks whose threads are still running (after `run()` returns, those
        that outlived the grace; `python -m ferry worker` exits without them)."""
        with self._busy_lock:
            return self._busy

    def _in_thread(self, call: Callable[[], Any]) -> Any:
        """Runs a sync task's function on a pool thread, counted in `busy_threads`."""
        with self._busy_lock:
            self._busy += 1
            self._entered += 1
            tell = self._tell_entry
        if tell:
            self._threadsafe(self._wake.set)
        try:
            return call()
        finally:
            with self._busy_lock:
                self._busy -= 1

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
        self._wake.set()
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
        self._wake.set()

    async def _call(self, method: str, path: str, body: Any = None, *, read_timeout: Optional[float] = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=None, connect=_CALL_TIMEOUT, sock_connect=_CALL_TIMEOUT,
                                        sock_read=_CALL_TIMEOUT if read_timeout is None else read_timeout)
        calls = self.stats["calls"]
        what = "close" if method == "DELETE" else path.rsplit("/", 1)[-1]
        calls[what] = calls.get(what, 0) + 1
        try:
            async with self._http.request(method, self.url + path, json=body, timeout=timeout) as resp:
                content = await resp.read()
                if resp.status >= 400:
                    raise _core.error_of(resp.status, content, resp.reason or "",
                                         _core.parse_retry_after(resp.headers.get("retry-after")))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _core.transport_error(e) from e
        return json.loads(content) if content else None

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
            self._wake.set()
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

    # -- the pump: leases, and the results that ride with them --------------------------
    async def _pump(self) -> None:
        """Leases and sends results until the worker stops (see the module's docstring)."""
        p = _PumpState()
        while True:
            self._wake.clear()
            if p.call is not None and p.call.done():
                self._took(p)
                continue
            session = self.session
            if self._stopping.is_set():
                if p.call is not None and session is not None:
                    await self._end_call(session.id, p)
                return
            now = time.monotonic()
            free = self.concurrency - len(self._running)
            timer: Optional[float] = None
            if p.entry is not None:
                target, until = p.entry
                with self._busy_lock:
                    entered = self._entered >= target
                if entered or now >= until:
                    p.entry, self._tell_entry = None, False
                else:
                    timer = until - now
            if p.call is None and p.entry is None and session is not None and free > 0 and now >= self._retry_at:
                # While work is waiting, a freed slot waits a moment for the others.
                if p.full and self._running:
                    if p.gather_since is None:
                        p.gather_since = now
                    timer = p.gather_since + self.batch_window - now
                if timer is None or timer <= 0:
                    await self._lease(session, p, free)
                    continue
            if self._results and self._plain is None and session is not None and now >= self._retry_at:
                # Results that no lease will carry soon go on their own (while a session
                # is being opened again, none: the lost one's are refused anyway).
                if p.call is None and free <= 0:
                    self._send_plain()
                elif p.call is not None:
                    hold = p.since + _HOLD - now if p.full else 0.0
                    if hold <= 0:
                        self._send_plain()
                    else:
                        timer = hold if timer is None else min(timer, hold)
            if now < self._retry_at:
                timer = self._retry_at - now if timer is None else min(timer, self._retry_at - now)
            await self._wait_wake(timer)

    async def _wait_wake(self, timeout: Optional[float]) -> None:
        if timeout is None:
            await self._wake.wait()
            return
        assert self._loop is not None
        handle = self._loop.call_later(max(timeout, 0.0), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            handle.cancel()

    async def _lease(self, session: _Session, p: "_PumpState", free: int) -> None:
        """Starts a lease call carrying the results ready now (their events go first)."""
        if not await self._flush_events():
            self._back_off()
            return
        p.gather_since = None
        p.carried = self._take_results(session.id)
        p.asked = free
        p.session = session.id
        wait_ms = session.max_wait_ms
        if self.lease_wait is not None:
            wait_ms = min(wait_ms, int(self.lease_wait * 1000))
        lease = {"max": free, "wait_ms": wait_ms}
        read_timeout = wait_ms / 1000.0 + 15.0
        if p.carried:
            body = {"results": [o.body for o in p.carried], "lease": lease}
            call = self._call("POST", f"/v1/workers/sessions/{session.id}/complete", body, read_timeout=read_timeout)
        else:
            call = self._call("POST", f"/v1/workers/sessions/{session.id}/lease", lease, read_timeout=read_timeout)
        p.call = asyncio.ensure_future(call)
        p.call.add_done_callback(lambda _: self._wake.set())
        p.since = time.monotonic()

    def _took(self, p: "_PumpState") -> None:
        """A lease call came back: start its jobs (or hand them back when stopping)."""
        assert p.call is not None
        call, p.call = p.call, None
        carried, p.carried = p.carried, []
        try:
            answer = call.result() or {}
        except FerryError as e:
            p.full = False
            self._failed(p.session, carried, e)
            return
        self._pause = 0.2
        self._note_refusals(carried, answer)
        jobs = list(answer.get("jobs") or [])
        p.full = len(jobs) >= p.asked
        self.stats["jobs"] += len(jobs)
        session = self.session
        for job in jobs:
            if self._stopping.is_set() or session is None or session.id != p.session:
                self._queue_result(p.session, {"id": job["id"], "attempt": job["attempt"], "release": True})
            else:
                self._start(p.session, job)
        if jobs and not p.full and self._entered < self._submitted:
            # An idle worker: let the sync tasks just started take the GIL before the next
            # long poll is built (their pickup, not the poll, is what waits for work).
            p.entry, self._tell_entry = (self._submitted, time.monotonic() + _ENTRY_WAIT), True

    async def _end_call(self, session: str, p: "_PumpState") -> None:
        """Stopping with a lease call on its way: a second lease call ends it (protocol §2);
        whatever either brings is handed back."""
        assert p.call is not None
        extra: List[Dict[str, Any]] = []
        if not p.call.done():
            try:
                answer = await asyncio.wait_for(
                    self._call("POST", f"/v1/workers/sessions/{session}/lease", {"max": 1, "wait_ms": 0}),
                    timeout=10.0)
                extra += (answer or {}).get("jobs") or []
            except (FerryError, asyncio.TimeoutError) as e:
                log.debug("ending the pending lease: %s", e)
        try:
            answer = await asyncio.wait_for(asyncio.shield(p.call), timeout=_LEASE_END_WAIT)
            self._note_refusals(p.carried, answer or {})
            extra += (answer or {}).get("jobs") or []
        except FerryError as e:
            self._failed(p.session, p.carried, e)
        except asyncio.TimeoutError as e:
            # Not ended by the second call: give up on it (the connection is closed; the
            # session's DELETE fails anything the server still hands it). Its results are
            # sent again (a result already recorded is refused, harmlessly).
            log.debug("the pending lease did not end: %s", e)
            p.call.cancel()
            self._results[0:0] = p.carried
        p.call, p.carried = None, []
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
        ctx = Context(job, session, self._emit)
        r = _Running(ctx=ctx, td=td)
        if not td.is_async:
            self._submitted += 1
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
                call = functools.partial(td.fn, *args, **kwargs)
                output = await self._loop.run_in_executor(self._pool, self._in_thread, call)
            try:
                json.dumps(output)
                result = {"id": ctx.job_id, "attempt": ctx.attempt, "output": output}
            except (TypeError, ValueError) as e:
                result = {"id": ctx.job_id, "attempt": ctx.attempt, "error": {
                    "type": "TypeError", "message": f"the task's result is not JSON: {e}", "retryable": False}}
        except asyncio.CancelledError:
            result = None  # Ferry stopped the attempt, or the worker handed it back
        except BaseException as e:  # noqa: BLE001 - a task's failure of any kind is the job's
            result = {"id": ctx.job_id, "attempt": ctx.attempt, "error": error_of(td, e)}
            if not (r.abandoned or r.released):
                log.warning("job %s (%s) attempt %d failed: %s", ctx.job_id, td.kind, ctx.attempt,
                            result["error"]["message"], exc_info=not isinstance(e, (Retry, Fail)))
        finally:
            if self._running.get(key) is r:
                del self._running[key]
            self._slot_freed.set()
            self._wake.set()
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
        self._events_ready.set()

    def _emit(self, session: str, event: Dict[str, Any]) -> None:
        """A task's progress or log event, from any thread."""
        self._threadsafe(self._add_event, session, event)

    def _queue_result(self, session: str, body: Dict[str, Any]) -> None:
        self._results.append(_Outgoing(session, body))
        self._wake.set()

    def _take_results(self, session: str) -> List[_Outgoing]:
        """Up to a batch of the pending results of `session` (a lost session's are dropped:
        the server would refuse them)."""
        self._results = [o for o in self._results if o.session == session]
        batch, self._results = self._results[:MAX_BATCH], self._results[MAX_BATCH:]
        return batch

    def _send_plain(self) -> None:
        """Sends pending results on their own (a `complete` without `lease`), in the
        background; the pump is woken when it is done."""
        self._plain = asyncio.ensure_future(self._complete_plain())
        self._plain.add_done_callback(self._plain_done)

    def _plain_done(self, _: "asyncio.Future[None]") -> None:
        self._plain = None
        self._wake.set()

    async def _complete_plain(self) -> None:
        session = self.session
        if session is None:
            return
        if not await self._flush_events():
            self._back_off()
            return
        batch = self._take_results(session.id)
        if not batch:
            return
        try:
            answer = await self._call("POST", f"/v1/workers/sessions/{session.id}/complete",
                                      {"results": [o.body for o in batch]})
        except FerryError as e:
            self._failed(session.id, batch, e)
            return
        self._pause = 0.2
        self._note_refusals(batch, answer or {})

    def _failed(self, session: str, batch: List[_Outgoing], e: FerryError) -> None:
        """A call carrying `batch` failed: register again, try again later, or (a refusal
        of the batch: one bad entry) send them one by one so the others get through."""
        if e.code == "unknown_session":
            asyncio.ensure_future(self._reopen(session))
        elif e.status == 0 or e.status >= 500 or e.status == 429:
            log.warning("sending results or leasing failed (%s); trying again in %.1f s", e, self._pause)
            self._results[0:0] = batch  # put back, in order
            self._back_off()
        elif len(batch) > 1:
            asyncio.ensure_future(self._send_each("complete", "results", batch))
        elif batch:
            log.error("the server refused the result of job %s: %s", batch[0].body.get("id"), e)
        else:
            log.error("the server refused a lease call: %s", e)
            self._back_off()

    def _back_off(self) -> None:
        """No lease or results call before a pause that grows with each failure in a row
        (0.2 s to 5 s; a call that goes through resets it)."""
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, 5.0)

    @staticmethod
    def _note_refusals(batch: List[_Outgoing], answer: Dict[str, Any]) -> None:
        for o, res in zip(batch, answer.get("results") or []):
            if not res.get("accepted", True):
                log.info("job %s attempt %s: result refused (the attempt is no longer this session's)",
                         o.body.get("id"), o.body.get("attempt"))

    async def _send_each(self, path: str, key: str, batch: List[_Outgoing]) -> None:
        for o in batch:
            try:
                await self._call("POST", f"/v1/workers/sessions/{o.session}/{path}", {key: [o.body]})
            except FerryError as e:
                log.error("the server refused %s for job %s: %s", path, o.body.get("id"), e)

    async def _event_loop(self) -> None:
        pause = 0.1
        while True:
            if not self._events:
                self._events_ready.clear()
                await self._events_ready.wait()
            if await self._flush_events():
                pause = 0.1
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _flush_events(self) -> bool:
        """Sends every pending event (one sender at a time); False when the server could
        not take them now (they are kept)."""
        async with self._events_lock:
            while self._events:
                session = self._events[0].session
                if self.session is None or session != self.session.id:
                    self._events.pop(0)  # a lost session's: refused anyway
                    continue
                batch: List[_Outgoing] = []
                while self._events and len(batch) < MAX_BATCH and self._events[0].session == session:
                    batch.append(self._events.pop(0))
                try:
                    await self._call("POST", f"/v1/workers/sessions/{session}/events",
                                     {"events": [o.body for o in batch]})
                except FerryError as e:
                    if e.code == "unknown_session":
                        await self._reopen(session)
                    elif e.status == 0 or e.status >= 500:
                        log.warning("sending events failed (%s)", e)
                        self._events[0:0] = batch
                        return False
                    elif len(batch) > 1:
                        await self._send_each("events", "events", batch)
                    else:
                        log.error("the server refused an event of job %s: %s", batch[0].body.get("id"), e)
            return True

    async def _flush(self, timeout: float) -> None:
        """Sends what is pending (at shutdown), for up to `timeout` seconds; nothing without a
        session (what a lost one held is refused anyway)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.session is not None:
            if self._plain is not None:
                await asyncio.wait({self._plain}, timeout=max(0.0, deadline - time.monotonic()))
                continue
            if not self._results and not self._events:
                return
            if not await self._flush_events() or time.monotonic() < self._retry_at:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            if self._results:
                self._send_plain()

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


