"""The worker against a real server: real worker processes (`python -m ferry worker
tests.tasks:app`), jobs submitted from this test process. Each test has a server of its
own, with 3 s leases and 1 s heartbeats."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List

import ferry
from tests.conftest import STATE_DEADLINE, Server, WorkerProcess, mark, wait_for, wait_mark, wait_state

QUICK_BACKOFF = {"initial_ms": 50, "max_ms": 50, "multiplier": 1, "jitter": "none"}

StartWorker = Callable[..., WorkerProcess]


def test_jobs_from_another_process(fresh_server: Callable[..., Server], start_worker: StartWorker) -> None:
    server = fresh_server()
    worker = start_worker(server)
    with server.client() as c:
        job = c.submit_and_wait("py_echo", {"x": 1}, timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded", job
        assert job["output"] == {"echo": {"x": 1}, "attempt": 1, "pid": worker.pid}
        assert job["queue"] == "remote"
        types = [e.type for e in c.events(job["id"])]
        assert "progress" in types and "log" in types, types
        assert types.index("progress") < types.index("succeeded")
        events = {e.type: e.data for e in c.events(job["id"])}
        assert events["progress"] == {"attempt": 1, "progress": {"done": 1, "total": 1}}, events
        assert events["log"] == {"attempt": 1, "line": "echo on attempt 1"}, events

    # Many at once, from the asyncio client: more than the worker's 4 slots.
    async def many() -> List[Dict[str, Any]]:
        async with ferry.AsyncClient(server.url) as ac:
            return await asyncio.gather(*(ac.submit_and_wait("py_echo", {"i": i}, timeout=STATE_DEADLINE)
                                          for i in range(20)))

    jobs = asyncio.run(many())
    assert [j["output"]["echo"] for j in jobs] == [{"i": i} for i in range(20)]


def test_retries_on_an_exception(fresh_server: Callable[..., Server], start_worker: StartWorker) -> None:
    server = fresh_server()
    start_worker(server)
    with server.client() as c:
        job = c.submit_and_wait("py_flaky", {"fail_until": 3}, max_attempts=5, backoff=QUICK_BACKOFF,
                                timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded", job
        assert job["output"]["attempt"] == 3 and job["attempts_used"] == 3
        failed = [a for a in job["attempts"] if a.get("error")]
        assert len(failed) == 2
        for a in failed:
            assert a["error"]["retryable"] is True
            assert "ConnectionError" in a["error"]["type"] + a["error"]["message"], a["error"]
            assert "flaky on attempt" in a["error"]["message"]

        # ferry.Retry's retry_after replaces the backoff (here a long one that would not
        # let the job end within the deadline).
        job = c.submit_and_wait("py_flaky", {"retry_after": 0.2}, max_attempts=3,
                                backoff={"initial_ms": 3_600_000, "max_ms": 3_600_000, "multiplier": 1,
                                         "jitter": "none"},
                                timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded" and job["output"]["attempt"] == 2, job


def test_non_retryable_goes_to_the_dead_letter_queue(fresh_server: Callable[..., Server],
                                                     start_worker: StartWorker) -> None:
    server = fresh_server()
    start_worker(server)
    with server.client() as c:
        job = c.submit_and_wait("py_flaky", {"fatal": "width"}, max_attempts=5, backoff=QUICK_BACKOFF,
                                timeout=STATE_DEADLINE)
        assert job["state"] == "dead", job
        assert job["attempts_used"] == 1
        assert job["error"]["retryable"] is False
        assert "ValueError" in job["error"]["type"] + job["error"]["message"]
        assert "bad input: width" in job["error"]["message"]

        failed = c.submit_and_wait("py_flaky", {"fail": "no such image"}, max_attempts=5, timeout=STATE_DEADLINE)
        assert failed["state"] == "dead" and failed["attempts_used"] == 1
        assert failed["error"]["type"] == "validation" and failed["error"]["retryable"] is False

        dead = {j["id"] for j in c.list_jobs(state="dead")["items"]}
        assert {job["id"], failed["id"]} <= dead


def test_kill_9_mid_job_is_retried_elsewhere(fresh_server: Callable[..., Server], start_worker: StartWorker,
                                             marks: Path) -> None:
    server = fresh_server()
    first = start_worker(server)
    with server.client() as c:
        # A timeout far beyond the session's (3 s): the attempt must end as worker_lost
        # when the session times out, long before its own timeout would end it.
        sub = c.submit("py_slow", {"quick_from": 2}, max_attempts=3, backoff=QUICK_BACKOFF, timeout_ms=120_000)
        assert wait_mark(marks, sub["id"], 1, "started") == str(first.pid)
        first.kill()  # SIGKILL: no release, no DELETE; the session times out
        second = start_worker(server)

        def first_attempt_ended() -> Any:
            job = c.get(sub["id"])
            return job if job["attempts"] and job["attempts"][0].get("finished_at") else None

        # The killed worker's session ends after 3 s without a call (its lease call's wait,
        # at most 30 s, included): well within this deadline, far from the job's timeout.
        job = wait_for("the killed worker's attempt to end", first_attempt_ended, deadline=STATE_DEADLINE)
        lost = job["attempts"][0]
        assert lost["error"]["type"] == "worker_lost" and lost["error"]["retryable"] is True, lost
        job = c.wait(sub["id"], timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded", job
        assert job["output"]["pid"] == second.pid and job["output"]["attempt"] == 2


def test_a_session_the_server_gave_up_is_registered_again(fresh_server: Callable[..., Server],
                                                           start_worker: StartWorker) -> None:
    """A worker paused past the session's timeout (SIGSTOP: a long GC pause, a suspended
    laptop) finds its session gone when it wakes, registers again and goes on serving."""
    server = fresh_server()
    worker = start_worker(server, "--lease-wait", "0.5")  # its long poll ends while it is stopped

    def sessions(c: ferry.Client) -> List[Dict[str, Any]]:
        return list(c.request("GET", "/v1/workers/sessions")["sessions"])

    with server.client() as c:
        assert c.submit_and_wait("py_echo", {"before": 1}, timeout=STATE_DEADLINE)["state"] == "succeeded"
        (first,) = sessions(c)
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            wait_for("the server to give the stopped worker's session up", lambda: not sessions(c))
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        job = c.submit_and_wait("py_echo", {"after": 1}, timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded" and job["output"]["pid"] == worker.pid, job
        (second,) = sessions(c)
        assert second["session"] != first["session"]
    assert "registering again" in worker.log()


def test_sigterm_drains(fresh_server: Callable[..., Server], start_worker: StartWorker, marks: Path,
                        tmp_path: Path) -> None:
    server = fresh_server()
    worker = start_worker(server, "--grace", "5")
    finish_soon = tmp_path / "finish-soon"
    never = tmp_path / "never"
    with server.client() as c:
        quick = c.submit("py_slow", {"until": str(finish_soon)})
        stuck = c.submit("py_slow", {"until": str(never)})
        wait_mark(marks, quick["id"], 1, "started")
        wait_mark(marks, stuck["id"], 1, "started")
        sessions = c.request("GET", "/v1/workers/sessions")["sessions"]
        assert [x["name"] for x in sessions] == [f"python@{socket.gethostname()}:{worker.pid}"], sessions
        worker.terminate()
        wait_for("the worker to say it is stopping", lambda: "stopping" in worker.log())
        # Still within the grace: the first job ends, the second outlives the grace.
        finish_soon.write_text("go")
        assert worker.wait(timeout=60) == 0, worker.log()
        log = worker.log()
        assert "handed back" in log and "closed" in log, log
        assert c.request("GET", "/v1/workers/sessions")["sessions"] == []  # closed with DELETE

        done = c.get(quick["id"])
        assert done["state"] == "succeeded" and done["output"]["pid"] == worker.pid, done
        # Released: queued again (the node records the release as the attempt's end)...
        back = wait_state(c, stuck["id"], "queued")
        assert back["attempts_used"] == 0, back  # ...and the attempt does not count
        assert back["attempts"][0]["outcome"] == "released", back
        assert mark(marks, stuck["id"], 1, "stopped-shutdown").exists()

        never.write_text("go")
        other = start_worker(server)
        job = c.wait(stuck["id"], timeout=STATE_DEADLINE)
        assert job["state"] == "succeeded" and job["output"]["pid"] == other.pid, job


def test_cancel_reaches_a_running_task(fresh_server: Callable[..., Server], start_worker: StartWorker,
                                       marks: Path) -> None:
    server = fresh_server()
    start_worker(server)
    with server.client() as c:
        async_job = c.submit("py_wait", {"seconds": 300})
        sync_job = c.submit("py_slow", {"seconds": 300})
        wait_mark(marks, async_job["id"], 1, "started")
        wait_mark(marks, sync_job["id"], 1, "started")
        c.cancel(async_job["id"])
        c.cancel(sync_job["id"])
        # The cancel reaches the tasks within a heartbeat: the async one's sleep is
        # cancelled, the sync one sees ctx.cancelled.
        wait_mark(marks, async_job["id"], 1, "cancelled-cancelled")
        wait_mark(marks, sync_job["id"], 1, "stopped-cancelled")
        assert c.wait(async_job["id"], timeout=STATE_DEADLINE)["state"] == "cancelled"
        assert c.wait(sync_job["id"], timeout=STATE_DEADLINE)["state"] == "cancelled"
        # The worker goes on serving.
        assert c.submit_and_wait("py_echo", {"after": "cancel"}, timeout=STATE_DEADLINE)["state"] == "succeeded"


def test_workflow_mixing_a_remote_kind_with_http(fresh_server: Callable[..., Server],
                                                 start_worker: StartWorker) -> None:
    server = fresh_server()
    start_worker(server)  # registers py_echo, so the workflow may name it
    with server.client() as c:
        c.workflows.register({
            "name": "py-mixed",
            "nodes": [
                {"id": "probe", "kind": "http", "input": {"url": f"{server.url}/healthz"}},
                {"id": "echo", "kind": "py_echo", "depends_on": ["probe"],
                 "input": {"status": "{{ nodes.probe.output.status }}", "who": "{{ input.who }}"}},
                {"id": "after", "kind": "noop", "depends_on": ["echo"], "input": "{{ nodes.echo.output.echo }}"},
            ],
        })
        run = c.runs.start_and_wait("py-mixed", {"who": "python"}, timeout=STATE_DEADLINE)
        assert run["state"] == "succeeded", run
        events = c.runs.events(run["id"])
        kinds = {e.raw.get("node") for e in events if e.type == "succeeded"}
        assert {"probe", "echo", "after"} <= kinds, [(e.type, e.raw.get("node")) for e in events]
        finished = next(e for e in events if e.type == "run_finished")
        assert finished is not None
        after = _node(run, "after")
        assert after["output"] == {"status": 200, "who": "python"}, after


def _node(run: Dict[str, Any], node_id: str) -> Dict[str, Any]:
    nodes = run["nodes"]
    if isinstance(nodes, dict):
        return nodes[node_id]
    return next(n for n in nodes if n.get("id") == node_id)

