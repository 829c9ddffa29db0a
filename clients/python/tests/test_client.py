"""The client against a real server, with built-in kinds only (no worker needed)."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from typing import List, Optional

import pytest

import ferry
from tests.conftest import Server, wait_state

QUICK_BACKOFF = {"initial_ms": 10, "max_ms": 10, "multiplier": 1, "jitter": "none"}


def test_submit_get_and_wait(server: Server) -> None:
    with server.client() as c:
        sub = c.submit("noop", {"n": 1}, labels={"t": "client"})
        assert sub["created"] is True and sub["state"] in ("queued", "running", "succeeded")
        job = c.wait(sub["id"], timeout=30)
        assert job["state"] == "succeeded" and job["output"] == {"n": 1}
        assert c.get(sub["id"])["labels"] == {"t": "client"}

        job = c.submit_and_wait("noop", {"n": 2}, timeout=30)
        assert job["state"] == "succeeded" and job["output"] == {"n": 2}


def test_submit_and_wait_reports_failure_and_timeout(server: Server) -> None:
    with server.client() as c:
        dead = c.submit_and_wait("fail", {"retryable": False, "message": "nope"}, timeout=30)
        assert dead["state"] == "dead"
        assert dead["error"]["retryable"] is False and "nope" in dead["error"]["message"]

        retried = c.submit_and_wait("fail", {"type": "network", "times": 1}, backoff=QUICK_BACKOFF, timeout=30)
        assert retried["state"] == "succeeded" and retried["attempts_used"] == 2

        with pytest.raises(ferry.WaitTimeout) as info:
            c.submit_and_wait("sleep", {"ms": 60000}, timeout=0.5)
        job_id = info.value.id
        assert info.value.last is not None and info.value.last["state"] in ("queued", "running")
        assert c.cancel(job_id)["state"] in ("cancelled", "running")
        assert c.wait(job_id, timeout=30)["state"] == "cancelled"


def test_errors_are_ferry_errors(server: Server) -> None:
    with server.client() as c:
        with pytest.raises(ferry.FerryError) as info:
            c.submit("noop", priority="high")
        assert info.value.status == 400 and info.value.field == "priority" and info.value.code

        with pytest.raises(ferry.FerryError) as info:
            c.get(str(uuid.uuid4()))
        assert info.value.status == 404

    with ferry.Client("http://127.0.0.1:9", timeout=2) as down:
        with pytest.raises(ferry.FerryError) as info:
            down.get(str(uuid.uuid4()))
        assert info.value.status == 0 and info.value.code == "unreachable"


def test_batch(server: Server) -> None:
    with server.client() as c:
        answers = c.submit_batch([ferry.job_spec("noop", {"i": i}) for i in range(5)])
        assert len(answers) == 5
        for i, a in enumerate(answers):
            assert c.wait(a["id"], timeout=30)["output"] == {"i": i}


def test_stream_events_and_resume(server: Server) -> None:
    with server.client() as c:
        sub = c.submit("sleep", {"ms": 200})
        events = list(c.stream_events(sub["id"]))
        types = [e.type for e in events]
        assert types[0] == "queued" and "started" in types and types[-1] == "succeeded", types
        ids = [e.id for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        # The same log, as JSON.
        assert [e.id for e in c.events(sub["id"])] == ids
        # Resuming after the first event gives exactly the rest.
        again = list(c.stream_events(sub["id"], after=events[0].id))
        assert [e.id for e in again] == ids[1:]


class CuttingProxy:
    """A loopback TCP proxy that cuts each of its first `cuts` connections right after
    the first event the server sent through it: a stream dropped mid-way."""

    def __init__(self, upstream_port: int, cuts: int) -> None:
        self.upstream_port = upstream_port
        self.cuts = cuts
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections <= self.cuts
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump_up() -> None:
            try:
                while True:
                    data = client.recv(65536)
                    if not data:
                        break
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        seen = b""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if cut:
                    # Pass on the first event whole, then cut the connection.
                    seen += data
                    at = seen.find(b"data:")
                    end = seen.find(b"\n\n", at) if at >= 0 else -1
                    if end >= 0:
                        client.sendall(data[: len(data) - (len(seen) - end - 2)])
                        break
                client.sendall(data)
        except OSError:
            pass
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_stream_resumes_after_a_dropped_connection(server: Server) -> None:
    with server.client() as c:
        sub = c.submit("sleep", {"ms": 300})
        expected = [e.id for e in c.stream_events(sub["id"])]
    proxy = CuttingProxy(server.port, cuts=2)
    try:
        with ferry.Client(proxy.url, timeout=10) as c:
            got = [e.id for e in c.stream_events(sub["id"])]
            assert got == expected
            assert proxy.connections >= 3  # two cut, then one to the end
            with pytest.raises(ferry.FerryError):
                proxy.cuts = proxy.connections + 1  # the next connection is cut too
                list(c.stream_events(sub["id"], reconnect=False))
    finally:
        proxy.close()


WORKFLOW = {
    "name": "py-client-chain",
    "nodes": [
        {"id": "a", "kind": "noop", "input": {"n": "{{ input.n }}"}},
        {"id": "b", "kind": "noop", "depends_on": ["a"], "input": {"from_a": "{{ nodes.a.output.n }}"}},
    ],
}


def test_runs(server: Server) -> None:
    with server.client() as c:
        reg = c.workflows.register(WORKFLOW)
        assert reg["name"] == "py-client-chain" and reg["version"] >= 1
        run = c.runs.start_and_wait("py-client-chain", {"n": 7}, timeout=30)
        assert run["state"] == "succeeded", run
        started = c.runs.start("py-client-chain", {"n": 8})
        events = list(c.runs.stream_events(started["id"]))
        assert events[-1].type == "run_finished"
        assert c.runs.get(started["id"])["state"] == "succeeded"
        assert any(r["id"] == started["id"] for r in c.runs.list(workflow="py-client-chain")["items"])


def test_async_client(server: Server) -> None:
    async def main() -> None:
        async with ferry.AsyncClient(server.url) as c:
            jobs = await asyncio.gather(*(c.submit_and_wait("noop", {"i": i}, timeout=30) for i in range(10)))
            assert [j["output"] for j in jobs] == [{"i": i} for i in range(10)]
            sub = await c.submit("sleep", {"ms": 100})
            types: List[str] = [e.type async for e in c.stream_events(sub["id"])]
            assert types[-1] == "succeeded"
            with pytest.raises(ferry.WaitTimeout) as info:
                await c.submit_and_wait("sleep", {"ms": 60000}, timeout=0.3)
            await c.cancel(info.value.id)
            assert (await c.wait(info.value.id, timeout=30))["state"] == "cancelled"
            with pytest.raises(ferry.FerryError) as info:
                await c.submit("no-such-kind")
            assert info.value.status == 400
            await c.workflows.register(WORKFLOW)
            run = await c.runs.start_and_wait("py-client-chain", {"n": 1}, timeout=30)
            assert run["state"] == "succeeded"
            last: Optional[str] = None
            async for ev in c.runs.stream_events(run["id"]):
                last = ev.type
            assert last == "run_finished"

    asyncio.run(main())


def test_cancel(server: Server) -> None:
    with server.client() as c:
        sub = c.submit("sleep", {"ms": 60000})
        wait_state(c, sub["id"], "running")
        c.cancel(sub["id"])
        assert c.wait(sub["id"], timeout=30)["state"] == "cancelled"
