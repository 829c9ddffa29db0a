"""The worker's mechanics, with the `Worker` running in this process (on an event loop of
its own thread) against a real server: what reaches Ferry, how many calls a busy worker
makes, caps, cancels and shutdown. The worker as a separate process is test_worker.py."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

import ferry
from ferry.tasks import error_of
from tests.conftest import STATE_DEADLINE, Server, wait_for, wait_state


class Running:
    """A `Worker` serving on its own thread until `stop()`; `code` is what `serve` returned."""

    def __init__(self, app: ferry.Worker) -> None:
        self.app = app
        self.code: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for("the worker's session", lambda: self.app.session is not None or not self.thread.is_alive())
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            self.code = asyncio.run(self.app.serve())
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e

    def stop(self, now: bool = False) -> Any:
        self.app.stop(now=now)
        self.thread.join(STATE_DEADLINE)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error:
            raise self.error
        return self.code


@pytest.fixture
def serve() -> Iterator[Callable[[ferry.Worker], Running]]:
    made: List[Running] = []

    def start(app: ferry.Worker) -> Running:
        r = Running(app)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.thread.is_alive():
            r.stop(now=True)


def unique(name: str) -> str:
    """A kind of this test's own (kinds are registered on the store, per server)."""
    return f"py_{name}_{uuid.uuid4().hex[:8]}"


def sessions(server: Server) -> List[Dict[str, Any]]:
    with server.client() as c:
        return list(c.request("GET", "/v1/workers/sessions").get("sessions", []))


def test_results_events_and_exceptions(fresh_server: Callable[..., Server],
                                       serve: Callable[[ferry.Worker], Running]) -> None:
    server = fresh_server()
    app = ferry.Worker(server.url, concurrency=2, use_default_registry=False)
    echo_kind, boom_kind = unique("echo"), unique("boom")

    @app.task(echo_kind, queue="py_images")
    def echo(input: Any, ctx: ferry.Context) -> Any:
        ctx.progress({"done": 1})
        ctx.log("line")
        return {"echo": input, "attempt": ctx.attempt}

    @app.task(boom_kind, no_retry_on=(KeyError,))
    async def boom(input: Dict[str, str]) -> Any:
        kind = input["raise"]
        if kind == "retry":
            raise ferry.Retry("later", retry_after=1.5)
        if kind == "fail":
            raise ferry.Fail("never", type="validation")
        if kind == "key":
            raise KeyError("k")
        if kind == "object":
            return object()
        raise ConnectionError("down")

    worker = serve(app)
    (session,) = sessions(server)
    assert session["concurrency"] == 2
    with server.client() as c:
        ok = c.submit_and_wait(echo_kind, {"x": 1}, timeout=STATE_DEADLINE)
        assert ok["state"] == "succeeded" and ok["output"] == {"echo": {"x": 1}, "attempt": 1}, ok
        assert ok["queue"] == "py_images"
        # The attempt's events reached Ferry: they were sent before its result (the
        # server refuses an attempt's events once it has its result).
        events = c.events(ok["id"])
        assert [e.data for e in events if e.type == "progress"] == [{"attempt": 1, "progress": {"done": 1}}]
        assert any(e.type == "log" and "line" in str(e.data) for e in events), [e.raw for e in events]

        errors = {}
        for what in ("fail", "key", "object", "other"):
            job = c.submit_and_wait(boom_kind, {"raise": what}, max_attempts=1, timeout=STATE_DEADLINE)
            assert job["state"] == "dead", job
            errors[what] = job["attempts"][-1]["error"]
        assert errors["fail"]["type"] == "validation" and errors["fail"]["message"] == "never"
        assert errors["fail"]["retryable"] is False
        # An exception's class is not one of Ferry's types: recorded as `task`, the class
        # name leading the message.
        assert errors["key"]["type"] == "task" and errors["key"]["retryable"] is False
        assert errors["key"]["message"].startswith("KeyError")
        assert errors["object"]["type"] == "task" and errors["object"]["retryable"] is False
        assert errors["object"]["message"].startswith("TypeError") and "not JSON" in errors["object"]["message"]
        assert errors["other"]["type"] == "task" and errors["other"]["retryable"] is True
        assert errors["other"]["message"].startswith("ConnectionError") and "down" in errors["other"]["message"]

        # ferry.Retry's retry_after sets when the next attempt may start.
        sub = c.submit(boom_kind, {"raise": "retry"}, max_attempts=2,
                       backoff={"initial_ms": 3_600_000, "max_ms": 3_600_000, "multiplier": 1, "jitter": "none"})
        job = wait_for("the first attempt's end",
                       lambda: (lambda j: j if j["attempts"] and j["attempts"][0].get("error") else None)(
                           c.get(sub["id"])))
        err = job["attempts"][0]["error"]
        assert err["type"] == "task" and err["message"].startswith("Retry") and err["retryable"] is True, err
        assert job["state"] not in ("succeeded", "dead"), job  # the hour-long backoff did not apply
    assert worker.stop() == 0
    assert sessions(server) == []  # closed on the way out


def test_a_busy_worker_sends_results_with_its_leases(fresh_server: Callable[..., Server],
                                                     serve: Callable[[ferry.Worker], Running]) -> None:
    """With jobs waiting, the worker leases a batch and sends the batch's results with its
    next lease: far fewer calls than jobs, every job run once."""
    server = fresh_server()
    kind = unique("noop")
    app = ferry.Worker(server.url, concurrency=10, use_default_registry=False)
    ran: List[str] = []

    @app.task(kind)
    def noop(input: Any, ctx: ferry.Context) -> Any:
        ran.append(ctx.job_id)
        return input

    with server.client() as c:
        # The kind exists once a session registered it: a first worker's, stopped at once,
        # so that the jobs wait for the second all together.
        probe = ferry.Worker(server.url, concurrency=1, use_default_registry=False)
        probe.registry.add(kind, noop)
        assert serve(probe).stop() == 0
        n = 400
        ids = [a["id"] for a in c.submit_batch([ferry.job_spec(kind, {"i": i}) for i in range(n)])]
        worker = serve(app)
        jobs = [c.wait(i, timeout=STATE_DEADLINE) for i in ids]
    assert worker.stop() == 0
    assert all(j["state"] == "succeeded" and j["attempts_used"] == 1 for j in jobs)
    assert sorted(ran) == sorted(ids)  # each once
    calls = app.stats["calls"]
    assert app.stats["jobs"] == n
    # Two calls a job without batching (a lease and a complete); a batch of up to 10
    # a call with it. A quarter of a call per job leaves room for a busy machine.
    assert calls.get("lease", 0) + calls.get("complete", 0) <= n // 4, calls


def test_leases_only_free_slots_and_cancels_reach_tasks(fresh_server: Callable[..., Server],
                                                        serve: Callable[[ferry.Worker], Running]) -> None:
    server = fresh_server()
    app = ferry.Worker(server.url, concurrency=3, use_default_registry=False)
    sync_kind, async_kind = unique("sync_wait"), unique("async_wait")
    started: Dict[str, ferry.Context] = {}
    cancelled_async: List[str] = []

    @app.task(sync_kind)
    def sync_wait(input: Any, ctx: ferry.Context) -> Any:
        started[ctx.job_id] = ctx
        ctx.cancelled.wait(STATE_DEADLINE)
        return {"reason": ctx.cancel_reason}

    @app.task(async_kind)
    async def async_wait(input: Any, *, ctx: ferry.Context) -> Any:
        started[ctx.job_id] = ctx
        try:
            await asyncio.sleep(STATE_DEADLINE)
        except asyncio.CancelledError:
            cancelled_async.append(ctx.cancel_reason or "")
            raise

    serve(app)
    with server.client() as c:
        a = c.submit(sync_kind, {})["id"]
        b = c.submit(async_kind, {}, timeout_ms=1500, max_attempts=1)["id"]
        d = c.submit(sync_kind, {})["id"]
        e = c.submit(sync_kind, {})["id"]
        wait_for("three tasks started", lambda: len(started) == 3)
        first_three = set(started)
        assert len(first_three & {d, e}) == 1  # the fourth waits for a slot
        waiting = ({d, e} - first_three).pop()
        c.cancel(a)  # reaches the sync task at the worker's next heartbeat
        wait_for("the sync task told to stop", started[a].cancelled.is_set)
        assert started[a].cancel_reason == "cancelled"
        wait_for("the async task's timeout", lambda: cancelled_async == ["timeout"])
        # Ferry named them: their ends are Ferry's, not a result of the worker's.
        assert wait_state(c, a, "cancelled")["state"] == "cancelled"
        timed_out = wait_state(c, b, "dead")
        assert timed_out["attempts"][0]["error"]["type"] == "timeout", timed_out
        wait_for("the fourth task started in a freed slot", lambda: waiting in started)
        for job_id in (d, e):
            c.cancel(job_id)
        wait_for("the last two told to stop", lambda: started[d].cancelled.is_set() and started[e].cancelled.is_set())


def test_stop_hands_back_what_outlives_the_grace(fresh_server: Callable[..., Server],
                                                 serve: Callable[[ferry.Worker], Running]) -> None:
    server = fresh_server()
    kind = unique("forever")
    app = ferry.Worker(server.url, concurrency=2, grace=0.3, use_default_registry=False)
    started: List[ferry.Context] = []

    @app.task(kind)
    def forever(input: Any, ctx: ferry.Context) -> Any:
        started.append(ctx)
        ctx.cancelled.wait(STATE_DEADLINE)
        return "ignored"

    worker = serve(app)
    with server.client() as c:
        job = c.submit(kind, {})
        wait_for("the task started", lambda: started)
        # The second slot's long poll is waiting now; stopping ends it.
        assert worker.stop() == 0
        assert started[0].cancelled.is_set() and started[0].cancel_reason == "shutdown"
        # Handed back: queued again, the attempt not counted.
        back = wait_state(c, job["id"], "queued")
        assert back["attempts_used"] == 0, back
    assert sessions(server) == []


def test_pure_parts() -> None:
    td = ferry.Registry().add("k", lambda i: None, retry_on=(TimeoutError,))
    assert error_of(td, TimeoutError("t"))["retryable"] is True
    assert error_of(td, ValueError("v"))["retryable"] is False
    retry = error_of(td, ferry.Retry("later", retry_after=1.5))
    assert retry == {"type": "Retry", "message": "later", "retryable": True, "retry_after_ms": 1500}
    with pytest.raises(ValueError):
        asyncio.run(ferry.Worker("http://127.0.0.1:9", use_default_registry=False).serve())
    with pytest.raises(ValueError):
        ferry.Worker("http://127.0.0.1:9", batch_window=2)

    @ferry.task("py_unit_default", queue="q")
    def f(input: Any) -> Any:
        return input

    try:
        assert ferry.Worker("http://127.0.0.1:9").tasks["py_unit_default"].queue == "q"
        assert "py_unit_default" not in ferry.Worker("http://127.0.0.1:9", use_default_registry=False).tasks
    finally:
        del ferry.default_registry.tasks["py_unit_default"]

