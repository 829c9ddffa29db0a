"""The worker's mechanics against an in-memory stand-in of the worker protocol (an httpx
mock transport): what it sends and when. Needs no server; the real thing is
test_worker.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import httpx
import pytest

import ferry


class FakeFerry:
    """The five calls of protocol version 1, in memory, with a record of every request."""

    def __init__(self, heartbeat_ms: int = 50, max_wait_ms: int = 2000) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.max_wait_ms = max_wait_ms
        self.calls: List[Dict[str, Any]] = []
        self.sessions: Dict[str, Dict[str, Any]] = {}
        self.queue: List[Dict[str, Any]] = []
        self.results: List[Dict[str, Any]] = []
        self.events: List[Dict[str, Any]] = []
        self.cancels: List[Dict[str, Any]] = []
        self.closed: List[str] = []
        self.new_work = asyncio.Event()
        self.lease_generation: Dict[str, int] = {}

    def add_job(self, kind: str, input: Any, attempt: int = 1) -> str:
        job_id = str(uuid.uuid4())
        self.queue.append({"id": job_id, "attempt": attempt, "kind": kind, "queue": "remote",
                           "workspace": "default", "run": None, "input": input, "timeout_ms": 30000,
                           "soft_timeout_ms": None})
        self.new_work.set()
        return job_id

    def result(self, job_id: str) -> Optional[Dict[str, Any]]:
        return next((r for r in self.results if r["id"] == job_id), None)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.calls.append({"method": request.method, "path": path, "body": body})
        parts = path.strip("/").split("/")  # v1 workers sessions [id [verb]]
        if request.method == "POST" and len(parts) == 3:
            assert body["protocol"] == 1
            sid = f"node:{uuid.uuid4()}"
            self.sessions[sid] = {"body": body, "held": set()}
            return httpx.Response(201, json={"session": sid, "protocol": 1, "heartbeat_ms": self.heartbeat_ms,
                                             "session_timeout_ms": 30000, "max_wait_ms": self.max_wait_ms})
        sid = parts[3]
        if sid not in self.sessions:
            return httpx.Response(404, json={"error": {"code": "unknown_session", "message": "no such session",
                                                       "field": None}})
        s = self.sessions[sid]
        if request.method == "DELETE":
            del self.sessions[sid]
            self.closed.append(sid)
            return httpx.Response(204)
        verb = parts[4]
        if verb == "lease":
            gen = self.lease_generation.get(sid, 0) + 1
            self.lease_generation[sid] = gen
            free = s["body"]["concurrency"] - len(s["held"])
            assert body["max"] <= s["body"]["concurrency"], body
            end = time.monotonic() + body["wait_ms"] / 1000
            while True:
                if sid not in self.sessions:
                    return httpx.Response(404, json={"error": {"code": "unknown_session", "message": "gone",
                                                               "field": None}})
                if self.lease_generation.get(sid) != gen:  # a second lease ends this one
                    return httpx.Response(200, json={"jobs": []})
                if self.queue and free > 0:
                    n = min(body["max"], free, len(self.queue))
                    jobs, self.queue = self.queue[:n], self.queue[n:]
                    for j in jobs:
                        s["held"].add((j["id"], j["attempt"]))
                    return httpx.Response(200, json={"jobs": jobs})
                left = end - time.monotonic()
                if left <= 0:
                    return httpx.Response(200, json={"jobs": []})
                self.new_work.clear()
                try:
                    await asyncio.wait_for(self.new_work.wait(), timeout=min(left, 0.05))
                except asyncio.TimeoutError:
                    pass
        if verb == "heartbeat":
            cancels = [c for c in self.cancels if (c["id"], c["attempt"]) in s["held"]]
            for c in cancels:
                s["held"].discard((c["id"], c["attempt"]))
                self.cancels.remove(c)
            return httpx.Response(200, json={"cancel": cancels})
        if verb == "events":
            accepted = []
            for e in body["events"]:
                ok = (e["id"], e["attempt"]) in s["held"]
                accepted.append(ok)
                if ok:
                    self.events.append(e)
            return httpx.Response(200, json={"accepted": accepted})
        if verb == "complete":
            out = []
            for r in body["results"]:
                ok = (r["id"], r["attempt"]) in s["held"]
                s["held"].discard((r["id"], r["attempt"]))
                if ok:
                    self.results.append(r)
                    if r.get("release"):
                        self.queue.append({"id": r["id"], "attempt": r["attempt"] + 1, "kind": "?", "input": None})
                out.append({"id": r["id"], "accepted": ok})
            return httpx.Response(200, json={"results": out})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path, "field": None}})


def make_worker(fake: FakeFerry, **kw: Any) -> ferry.Worker:
    return ferry.Worker("http://fake", concurrency=kw.pop("concurrency", 2), use_default_registry=False,
                        transport=httpx.MockTransport(fake.handler), **kw)


async def until(check: Any, deadline: float = 10.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_results_events_and_exceptions() -> None:
    async def main() -> None:
        fake = FakeFerry()
        app = make_worker(fake)

        @app.task("echo", queue="images")
        def echo(input: Any, ctx: ferry.Context) -> Any:
            ctx.progress({"done": 1})
            ctx.log("line")
            return {"echo": input, "attempt": ctx.attempt}

        @app.task("boom", no_retry_on=(KeyError,))
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

        task = asyncio.ensure_future(app.serve())
        ok = fake.add_job("echo", {"x": 1})
        errs = {k: fake.add_job("boom", {"raise": k}) for k in ("retry", "fail", "key", "object", "other")}
        await until(lambda: all(fake.result(i) for i in [ok, *errs.values()]))
        reg = fake.calls[0]["body"]
        assert sorted(reg["kinds"], key=lambda k: k["kind"]) == [{"kind": "boom"}, {"kind": "echo", "queue": "images"}]
        assert reg["concurrency"] == 2
        assert fake.result(ok)["output"] == {"echo": {"x": 1}, "attempt": 1}
        assert [e.get("progress", e.get("log")) for e in fake.events] == [{"done": 1}, "line"]
        # The attempt's events were sent before its result.
        paths = [c["path"].rsplit("/", 1)[-1] for c in fake.calls if c["body"] and (
            any(e["id"] == ok for e in c["body"].get("events", [])) or
            any(r["id"] == ok for r in c["body"].get("results", [])))]
        assert paths.index("events") < paths.index("complete"), paths
        e = {k: fake.result(i)["error"] for k, i in errs.items()}
        assert e["retry"] == {"type": "Retry", "message": "later", "retryable": True, "retry_after_ms": 1500}
        assert e["fail"] == {"type": "validation", "message": "never", "retryable": False}
        assert e["key"]["type"] == "KeyError" and e["key"]["retryable"] is False
        assert e["object"]["type"] == "TypeError" and e["object"]["retryable"] is False
        assert e["other"] == {"type": "ConnectionError", "message": "down", "retryable": True}
        app.stop()
        assert await task == 0
        assert fake.closed and not fake.sessions

    run(main())


def test_retry_on_limits_what_is_retryable() -> None:
    td = ferry.Registry().add("k", lambda i: None, retry_on=(TimeoutError,))
    from ferry.worker import _error_of

    assert _error_of(td, TimeoutError("t"))["retryable"] is True
    assert _error_of(td, ValueError("v"))["retryable"] is False


def test_lease_never_asks_past_free_slots_and_cancel_reaches_tasks() -> None:
    async def main() -> None:
        fake = FakeFerry()
        app = make_worker(fake, concurrency=3)
        seen: Dict[str, threading.Event] = {}
        started: List[str] = []
        cancelled_async: List[str] = []

        @app.task("sync_wait")
        def sync_wait(input: Any, ctx: ferry.Context) -> Any:
            started.append(ctx.job_id)
            seen[ctx.job_id] = ctx.cancelled
            ctx.cancelled.wait(10)
            return {"reason": ctx.cancel_reason}

        @app.task("async_wait")
        async def async_wait(input: Any, *, ctx: ferry.Context) -> Any:
            started.append(ctx.job_id)
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled_async.append(ctx.cancel_reason or "")
                raise
            return None

        task = asyncio.ensure_future(app.serve())
        a = fake.add_job("sync_wait", {})
        b = fake.add_job("async_wait", {})
        c = fake.add_job("sync_wait", {})
        d = fake.add_job("sync_wait", {})
        await until(lambda: len(started) == 3)
        leases = [x["body"]["max"] for x in fake.calls if x["path"].endswith("/lease")]
        assert all(m <= 3 for m in leases) and leases[0] == 3, leases
        assert d not in started
        fake.cancels += [{"id": a, "attempt": 1, "reason": "cancelled"}, {"id": b, "attempt": 1, "reason": "timeout"}]
        await until(lambda: cancelled_async == ["timeout"] and seen[a].is_set())
        await until(lambda: d in started)  # a slot freed
        # Ferry named them: their results are not sent.
        await asyncio.sleep(0.1)
        assert fake.result(a) is None and fake.result(b) is None
        fake.cancels += [{"id": c, "attempt": 1, "reason": "cancelled"}, {"id": d, "attempt": 1, "reason": "lost"}]
        await until(lambda: seen[c].is_set() and seen[d].is_set())
        app.stop()
        assert await task == 0

    run(main())


def test_stop_ends_the_long_poll_then_releases_after_the_grace() -> None:
    async def main() -> None:
        fake = FakeFerry(max_wait_ms=30000)
        app = make_worker(fake, concurrency=2, grace=0.3)
        started: List[ferry.Context] = []

        @app.task("forever")
        def forever(input: Any, ctx: ferry.Context) -> Any:
            started.append(ctx)
            ctx.cancelled.wait(10)
            return "ignored"

        task = asyncio.ensure_future(app.serve())
        job = fake.add_job("forever", {})
        await until(lambda: started)
        # The worker now long-polls for its second slot (30 s).
        await until(lambda: sum(1 for c in fake.calls if c["path"].endswith("/lease")) >= 2)
        t0 = time.monotonic()
        app.stop()
        assert await task == 0
        assert time.monotonic() - t0 < 5  # neither the 30 s poll nor more than the grace
        assert started[0].cancelled.is_set() and started[0].cancel_reason == "shutdown"
        assert fake.result(job) == {"id": job, "attempt": 1, "release": True}
        leases = [c["body"] for c in fake.calls if c["path"].endswith("/lease")]
        assert leases[-1]["wait_ms"] == 0  # the call that ended the pending one
        assert fake.calls[-1]["method"] == "DELETE"

    run(main())


def test_unknown_session_registers_again() -> None:
    async def main() -> None:
        fake = FakeFerry()
        app = make_worker(fake)

        @app.task("echo")
        def echo(input: Any) -> Any:
            return input

        task = asyncio.ensure_future(app.serve())
        await until(lambda: fake.sessions)
        first = next(iter(fake.sessions))
        del fake.sessions[first]  # the server forgot it (timed out)
        await until(lambda: fake.sessions and next(iter(fake.sessions)) != first)
        job = fake.add_job("echo", {"again": True})
        await until(lambda: fake.result(job))
        assert fake.result(job)["output"] == {"again": True}
        app.stop()
        assert await task == 0

    run(main())


def test_a_worker_needs_a_task() -> None:
    with pytest.raises(ValueError):
        run(ferry.Worker("http://fake", use_default_registry=False).serve())


def test_module_level_task_registry() -> None:
    reg = ferry.default_registry

    @ferry.task("py_unit_default", queue="q")
    def f(input: Any) -> Any:
        return input

    try:
        app = ferry.Worker("http://fake")
        assert app.tasks["py_unit_default"].queue == "q"
        assert "py_unit_default" not in ferry.Worker("http://fake", use_default_registry=False).tasks
    finally:
        del reg.tasks["py_unit_default"]
