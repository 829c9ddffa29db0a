"""The HTTP clients: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

Both have the same methods with the same arguments; the asyncio one's are coroutines
and its `stream_events` an async iterator. Answers are the server's JSON as plain dicts
(the shapes are typed in `ferry.types`); every error answer is raised as `FerryError`,
and so is a server that cannot be reached (`status` 0, `code` `unreachable`).

Choices:

- `submit_and_wait` submits with `POST /v1/jobs?wait=` and then, while the job has not
  ended, asks `GET /v1/jobs/{id}?wait=` again (each wait at most the server's 60 s),
  until the job ends or the caller's `timeout` runs out (`WaitTimeout`). A server
  that does not know `?wait` answers at once; the loop then backs off (50 ms doubling to
  1 s) instead of spinning, so it works against any server, only less promptly.
- Waiting `GET`s are retried when the connection fails (until the deadline): they
  change nothing. Submissions are never retried by the client: pass an
  `idempotency_key` and retry yourself if you need to.
- `stream_events` reconnects when the stream is cut before its final event, resuming
  with `Last-Event-ID`, so the events it yields have no gap and no repeat; it ends
  after the final event (`succeeded`, `dead`, `cancelled`; a run's `run_finished`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, cast

import httpx

from . import _core
from ._core import FINAL_JOB_STATES, FINAL_RUN_STATES, Event, FerryError, WaitTimeout
from .types import Job, JobSpec, Run, RunAccepted, Submitted, WorkflowAccepted

__all__ = ["Client", "AsyncClient"]

# Extra read time beyond a server-side wait before the client gives up on the answer.
_WAIT_SLACK = 10.0
# Longest pause between two reconnections of an event stream.
_MAX_RECONNECT_PAUSE = 5.0


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: Optional[float]) -> float:
    if deadline is None:
        return _core.MAX_SERVER_WAIT
    return deadline - time.monotonic()


class _Base:
    def __init__(self, url: Optional[str], token: Optional[str], timeout: float) -> None:
        self.url = _core.default_url(url)
        self.token = _core.default_token(token)
        self.timeout = timeout

    def _timeout_for_wait(self, wait: Optional[float]) -> httpx.Timeout:
        if wait is None:
            return httpx.Timeout(self.timeout)
        return httpx.Timeout(self.timeout, read=min(wait, _core.MAX_SERVER_WAIT) + _WAIT_SLACK)


class Client(_Base):
    """A blocking client of the Ferry API.

    `Client()` talks to `FERRY_SERVER` (default `http://127.0.0.1:7700`) with
    `FERRY_TOKEN` if set; `Client(url, token=…)` says otherwise. `timeout` bounds each
    plain request (waiting requests get their wait on top). Use it as a context manager,
    or call `close()`. `client.runs` and `client.workflows` hold the workflow calls.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        http: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = http or httpx.Client(base_url=self.url, headers=_core.headers(self.token), timeout=timeout,
                                          trust_env=False)
        self.runs = Runs(self)
        self.workflows = Workflows(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None,
                wait: Optional[float] = None) -> Any:
        """One API call: the decoded JSON answer, or `FerryError`."""
        resp = self._send(method, path, json=json, params=params, wait=wait)
        return _core.decode(resp)

    def _send(self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None,
              wait: Optional[float] = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=json, params=params,
                                      timeout=self._timeout_for_wait(wait))
        except httpx.TransportError as e:
            raise _core.transport_error(e) from e

    # -- jobs ---------------------------------------------------------------------------
    def submit(self, kind: str, input: Any = None, **spec: Any) -> Submitted:
        """Submits a job: `{"id", "state", "created"}` (`created` is false when an
        `idempotency_key` matched an existing job). `spec` takes any job field
        (`queue`, `priority`, `max_attempts`, `backoff`, `timeout_ms`, `delay_ms`,
        `run_at`, `labels`, `idempotency_key`, `on_limit`, …); `None` leaves it out."""
        return cast("Submitted", self.request("POST", "/v1/jobs", json=_core.spec(kind, input, **spec)))

    def submit_batch(self, jobs: Sequence[JobSpec]) -> List[Submitted]:
        """Submits up to 1,000 jobs at once, all or nothing (`POST /v1/jobs/batch`);
        answers in the same order. Build specs with `ferry.job_spec(kind, input, …)`."""
        return cast("List[Submitted]", self.request("POST", "/v1/jobs/batch", json={"jobs": list(jobs)})["jobs"])

    def submit_and_wait(self, kind: str, input: Any = None, *, timeout: Optional[float] = 60.0,
                        **spec: Any) -> Job:
        """Submits a job and waits until it has ended (succeeded, dead or cancelled):
        the whole job, as `get` answers it; `job["output"]` on success, `job["error"]`
        otherwise. Raises `WaitTimeout` (with the job's id and last state) when it has
        not ended within `timeout` seconds (`None`: wait as long as it takes)."""
        deadline = _deadline(timeout)
        wait = max(0.001, _left(deadline))
        resp = self._send("POST", "/v1/jobs", json=_core.spec(kind, input, **spec),
                          params={"wait": _core.wait_param(wait)}, wait=wait)
        body = _core.decode(resp)
        if _core.is_job_view(body) and body["state"] in FINAL_JOB_STATES:
            return cast("Job", body)
        return self.wait(body["id"], timeout=None if deadline is None else max(0.0, _left(deadline)))

    def get(self, id: str, *, wait: Optional[float] = None) -> Job:
        """The job (`GET /v1/jobs/{id}`): state, attempts, output, error. With `wait`
        (seconds, at most 60), the server answers as soon as the job has ended, or with
        its current state when the wait is over."""
        params = None if wait is None else {"wait": _core.wait_param(wait)}
        return cast("Job", self.request("GET", f"/v1/jobs/{id}", params=params, wait=wait))

    def wait(self, id: str, *, timeout: Optional[float] = 60.0) -> Job:
        """Waits until job `id` has ended and answers it; `WaitTimeout` after `timeout`."""
        return cast("Job", _wait_loop_sync(self, f"/v1/jobs/{id}", id, FINAL_JOB_STATES, timeout))

    def cancel(self, id: str) -> Dict[str, Any]:
        """Cancels a job: a waiting one never runs, a running attempt is stopped
        (a remote worker hears of it at its next heartbeat). Answers `{"id", "state"}`."""
        return cast("Dict[str, Any]", self.request("POST", f"/v1/jobs/{id}/cancel", json={}))

    def replay(self, id: str) -> Dict[str, Any]:
        """Runs a dead or cancelled job again, with fresh attempts."""
        return cast("Dict[str, Any]", self.request("POST", f"/v1/jobs/{id}/replay", json={}))

    def list_jobs(self, **filters: Any) -> Dict[str, Any]:
        """`GET /v1/jobs?state=&queue=&kind=&limit=&cursor=`: `{"items", "next_cursor"}`."""
        return cast("Dict[str, Any]", self.request("GET", "/v1/jobs", params=_core.query(filters.items())))

    def events(self, id: str, *, after: Optional[int] = None) -> List[Event]:
        """The job's event log so far, in order (after event id `after`)."""
        return _core.events_of(self.request("GET", f"/v1/jobs/{id}/events", params=_core.query([("after", after)])))

    def stream_events(self, id: str, *, after: Optional[int] = None, reconnect: bool = True) -> Iterator[Event]:
        """The job's events, live (Server-Sent Events): those after `after` (all when
        `None`), then each as it is written, ending after the job's final event. A
        dropped connection is resumed from the last event seen (`reconnect=False`
        raises `FerryError` instead)."""
        return _stream_sync(self, f"/v1/jobs/{id}/events", after, _core.FINAL_JOB_EVENTS, reconnect)


class Runs:
    """Workflow runs: `client.runs.start(...)`, `.get`, `.wait`, `.start_and_wait`,
    `.cancel`, `.list`, `.events`, `.stream_events`."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def start(self, workflow: str, input: Any = None, *, version: Optional[int] = None,
              idempotency_key: Optional[str] = None, on_limit: Optional[str] = None) -> RunAccepted:
        """Starts a run of the workflow's latest version (or `version`):
        `{"id", "version", "state", "created"}`."""
        body = _core.spec(workflow, input, version=version, idempotency_key=idempotency_key, on_limit=on_limit)
        body["workflow"] = body.pop("kind")
        return cast("RunAccepted", self._c.request("POST", "/v1/runs", json=body))

    def start_and_wait(self, workflow: str, input: Any = None, *, timeout: Optional[float] = 60.0,
                       **options: Any) -> Run:
        """Starts a run and waits until it has ended: the whole run (`get`'s answer)."""
        deadline = _deadline(timeout)
        body = _core.spec(workflow, input, **options)
        body["workflow"] = body.pop("kind")
        wait = max(0.001, _left(deadline))
        answer = self._c.request("POST", "/v1/runs", json=body, params={"wait": _core.wait_param(wait)}, wait=wait)
        if isinstance(answer, dict) and "nodes" in answer and answer.get("state") in FINAL_RUN_STATES:
            return cast("Run", answer)
        return self.wait(answer["id"], timeout=None if deadline is None else max(0.0, _left(deadline)))

    def get(self, id: str, *, wait: Optional[float] = None) -> Run:
        """The run: its state and every node's state, attempts, output, error and jobs."""
        params = None if wait is None else {"wait": _core.wait_param(wait)}
        return cast("Run", self._c.request("GET", f"/v1/runs/{id}", params=params, wait=wait))

    def wait(self, id: str, *, timeout: Optional[float] = 60.0) -> Run:
        """Waits until run `id` has ended and answers it; `WaitTimeout` after `timeout`."""
        return cast("Run", _wait_loop_sync(self._c, f"/v1/runs/{id}", id, FINAL_RUN_STATES, timeout))

    def cancel(self, id: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", self._c.request("POST", f"/v1/runs/{id}/cancel", json={}))

    def list(self, **filters: Any) -> Dict[str, Any]:
        """`GET /v1/runs?state=&workflow=&limit=&cursor=`."""
        return cast("Dict[str, Any]", self._c.request("GET", "/v1/runs", params=_core.query(filters.items())))

    def events(self, id: str, *, after: Optional[int] = None) -> List[Event]:
        return _core.events_of(self._c.request("GET", f"/v1/runs/{id}/events", params=_core.query([("after", after)])))

    def stream_events(self, id: str, *, after: Optional[int] = None, reconnect: bool = True) -> Iterator[Event]:
        """The run's events, live, ending after `run_finished` (see `Client.stream_events`)."""
        return _stream_sync(self._c, f"/v1/runs/{id}/events", after, _core.FINAL_RUN_EVENTS, reconnect)


class Workflows:
    """Workflow definitions: `client.workflows.register({...})`, `.get(name)`, `.list()`."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def register(self, definition: Mapping[str, Any]) -> WorkflowAccepted:
        """Registers a workflow (the JSON form of the YAML in the README): a new version
        of its name, `{"name", "version"}`."""
        return cast("WorkflowAccepted", self._c.request("POST", "/v1/workflows", json=dict(definition)))

    def get(self, name: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", self._c.request("GET", f"/v1/workflows/{name}"))

    def list(self) -> Dict[str, Any]:
        return cast("Dict[str, Any]", self._c.request("GET", "/v1/workflows"))


def _backoff(pause: float) -> float:
    return min(1.0, max(0.05, pause * 2))


def _wait_loop_sync(c: Client, path: str, id: str, final: FrozenSet[str], timeout: Optional[float]) -> Dict[str, Any]:
    deadline = _deadline(timeout)
    last: Optional[Dict[str, Any]] = None
    pause = 0.0
    while True:
        left = _left(deadline)
        if last is not None and left <= 0:
            raise WaitTimeout(id, last)
        wait = max(0.001, min(left, _core.MAX_SERVER_WAIT))
        started = time.monotonic()
        try:
            last = c.request("GET", path, params={"wait": _core.wait_param(wait)}, wait=wait)
        except FerryError as e:
            if e.status != 0 and e.status < 500:
                raise
            # Unreachable or a 5xx: a read changes nothing, so try again until the deadline.
            if _left(deadline) <= 0:
                raise
            pause = _backoff(pause)
            time.sleep(min(pause, max(0.0, _left(deadline))))
            continue
        assert last is not None
        if last.get("state") in final:
            return last
        # An early answer that has not ended: the server does not wait (an older one):
        # poll with a growing pause instead of spinning.
        if time.monotonic() - started < wait / 2:
            pause = _backoff(pause)
            time.sleep(max(0.0, min(pause, _left(deadline))))
        else:
            pause = 0.0


async def _wait_loop_async(c: "AsyncClient", path: str, id: str, final: FrozenSet[str],
                           timeout: Optional[float]) -> Dict[str, Any]:
    deadline = _deadline(timeout)
    last: Optional[Dict[str, Any]] = None
    pause = 0.0
    while True:
        left = _left(deadline)
        if last is not None and left <= 0:
            raise WaitTimeout(id, last)
        wait = max(0.001, min(left, _core.MAX_SERVER_WAIT))
        started = time.monotonic()
        try:
            last = await c.request("GET", path, params={"wait": _core.wait_param(wait)}, wait=wait)
        except FerryError as e:
            if e.status != 0 and e.status < 500:
                raise
            if _left(deadline) <= 0:
                raise
            pause = _backoff(pause)
            await asyncio.sleep(min(pause, max(0.0, _left(deadline))))
            continue
        assert last is not None
        if last.get("state") in final:
            return last
        if time.monotonic() - started < wait / 2:
            pause = _backoff(pause)
            await asyncio.sleep(max(0.0, min(pause, _left(deadline))))
        else:
            pause = 0.0


def _stream_headers(last_id: Optional[int]) -> Dict[str, str]:
    h = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id is not None:
        h["Last-Event-ID"] = str(last_id)
    return h


def _stream_timeout(c: _Base) -> httpx.Timeout:
    # The server sends a keep-alive comment every 15 s by default: a read that waits far
    # longer means the connection is gone, so reconnect.
    return httpx.Timeout(c.timeout, read=max(c.timeout, 60.0))


def _revoked(ev: Event) -> FerryError:
    """The error of a stream's final `revoked` event (its token was revoked)."""
    err = ev.raw.get("error")
    if not isinstance(err, dict) and isinstance(ev.data, dict):
        err = ev.data.get("error")
    if not isinstance(err, dict):
        err = {}
    return FerryError(401, str(err.get("code", "unauthenticated")), str(err.get("message", "token revoked")))


def _stream_sync(c: Client, path: str, after: Optional[int], final: FrozenSet[str], reconnect: bool) -> Iterator[Event]:
    last_id = after
    pause = 0.0
    while True:
        try:
            with c._http.stream("GET", path, headers=_stream_headers(last_id), timeout=_stream_timeout(c)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    err = _core.error_from(resp)
                    if not reconnect or not (err.status in (429, 503) or err.status >= 500):
                        raise err
                    time.sleep(err.retry_after if err.retry_after is not None else _backoff(pause))
                    pause = _backoff(pause)
                    continue
                parser = _core.SSEParser()
                for line in resp.iter_lines():
                    got = parser.feed(line)
                    if got is None:
                        continue
                    ev = _core.sse_event(*got)
                    if ev.type == "revoked":
                        raise _revoked(ev)
                    if last_id is not None and ev.id and ev.id <= last_id:
                        continue
                    if ev.id:
                        last_id = ev.id
                    pause = 0.0
                    yield ev
                    if ev.type in final:
                        return
        except httpx.TransportError as e:
            if not reconnect:
                raise _core.transport_error(e) from e
        if not reconnect:
            raise FerryError(0, "stream_closed", f"the event stream of {path} closed before its final event")
        # The stream ended before its final event (or the connection failed): resume.
        pause = _backoff(pause)
        time.sleep(min(pause, _MAX_RECONNECT_PAUSE))


class AsyncClient(_Base):
    """The asyncio client: the same methods as `Client`, as coroutines
    (`stream_events` is an async iterator). Use `async with AsyncClient() as c:` or
    `await c.aclose()`."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = http or httpx.AsyncClient(base_url=self.url, headers=_core.headers(self.token),
                                               timeout=timeout, trust_env=False)
        self.runs = AsyncRuns(self)
        self.workflows = AsyncWorkflows(self)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Optional[Mapping[str, Any]] = None, wait: Optional[float] = None) -> Any:
        resp = await self._send(method, path, json=json, params=params, wait=wait)
        return _core.decode(resp)

    async def _send(self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None,
                    wait: Optional[float] = None) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json, params=params,
                                            timeout=self._timeout_for_wait(wait))
        except httpx.TransportError as e:
            raise _core.transport_error(e) from e

    async def submit(self, kind: str, input: Any = None, **spec: Any) -> Submitted:
        return cast("Submitted", await self.request("POST", "/v1/jobs", json=_core.spec(kind, input, **spec)))

    async def submit_batch(self, jobs: Sequence[JobSpec]) -> List[Submitted]:
        answer = await self.request("POST", "/v1/jobs/batch", json={"jobs": list(jobs)})
        return cast("List[Submitted]", answer["jobs"])

    async def submit_and_wait(self, kind: str, input: Any = None, *, timeout: Optional[float] = 60.0,
                              **spec: Any) -> Job:
        deadline = _deadline(timeout)
        wait = max(0.001, _left(deadline))
        resp = await self._send("POST", "/v1/jobs", json=_core.spec(kind, input, **spec),
                                params={"wait": _core.wait_param(wait)}, wait=wait)
        body = _core.decode(resp)
        if _core.is_job_view(body) and body["state"] in FINAL_JOB_STATES:
            return cast("Job", body)
        return await self.wait(body["id"], timeout=None if deadline is None else max(0.0, _left(deadline)))

    async def get(self, id: str, *, wait: Optional[float] = None) -> Job:
        params = None if wait is None else {"wait": _core.wait_param(wait)}
        return cast("Job", await self.request("GET", f"/v1/jobs/{id}", params=params, wait=wait))

    async def wait(self, id: str, *, timeout: Optional[float] = 60.0) -> Job:
        return cast("Job", await _wait_loop_async(self, f"/v1/jobs/{id}", id, FINAL_JOB_STATES, timeout))

    async def cancel(self, id: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self.request("POST", f"/v1/jobs/{id}/cancel", json={}))

    async def replay(self, id: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self.request("POST", f"/v1/jobs/{id}/replay", json={}))

    async def list_jobs(self, **filters: Any) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self.request("GET", "/v1/jobs", params=_core.query(filters.items())))

    async def events(self, id: str, *, after: Optional[int] = None) -> List[Event]:
        body = await self.request("GET", f"/v1/jobs/{id}/events", params=_core.query([("after", after)]))
        return _core.events_of(body)

    def stream_events(self, id: str, *, after: Optional[int] = None,
                      reconnect: bool = True) -> AsyncIterator[Event]:
        return _stream_async(self, f"/v1/jobs/{id}/events", after, _core.FINAL_JOB_EVENTS, reconnect)


class AsyncRuns:
    """`AsyncClient.runs`: the asyncio form of `Runs`."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def start(self, workflow: str, input: Any = None, *, version: Optional[int] = None,
                    idempotency_key: Optional[str] = None, on_limit: Optional[str] = None) -> RunAccepted:
        body = _core.spec(workflow, input, version=version, idempotency_key=idempotency_key, on_limit=on_limit)
        body["workflow"] = body.pop("kind")
        return cast("RunAccepted", await self._c.request("POST", "/v1/runs", json=body))

    async def start_and_wait(self, workflow: str, input: Any = None, *, timeout: Optional[float] = 60.0,
                             **options: Any) -> Run:
        deadline = _deadline(timeout)
        body = _core.spec(workflow, input, **options)
        body["workflow"] = body.pop("kind")
        wait = max(0.001, _left(deadline))
        answer = await self._c.request("POST", "/v1/runs", json=body, params={"wait": _core.wait_param(wait)},
                                       wait=wait)
        if isinstance(answer, dict) and "nodes" in answer and answer.get("state") in FINAL_RUN_STATES:
            return cast("Run", answer)
        return await self.wait(answer["id"], timeout=None if deadline is None else max(0.0, _left(deadline)))

    async def get(self, id: str, *, wait: Optional[float] = None) -> Run:
        params = None if wait is None else {"wait": _core.wait_param(wait)}
        return cast("Run", await self._c.request("GET", f"/v1/runs/{id}", params=params, wait=wait))

    async def wait(self, id: str, *, timeout: Optional[float] = 60.0) -> Run:
        return cast("Run", await _wait_loop_async(self._c, f"/v1/runs/{id}", id, FINAL_RUN_STATES, timeout))

    async def cancel(self, id: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self._c.request("POST", f"/v1/runs/{id}/cancel", json={}))

    async def list(self, **filters: Any) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self._c.request("GET", "/v1/runs", params=_core.query(filters.items())))

    async def events(self, id: str, *, after: Optional[int] = None) -> List[Event]:
        body = await self._c.request("GET", f"/v1/runs/{id}/events", params=_core.query([("after", after)]))
        return _core.events_of(body)

    def stream_events(self, id: str, *, after: Optional[int] = None,
                      reconnect: bool = True) -> AsyncIterator[Event]:
        return _stream_async(self._c, f"/v1/runs/{id}/events", after, _core.FINAL_RUN_EVENTS, reconnect)


class AsyncWorkflows:
    """`AsyncClient.workflows`: the asyncio form of `Workflows`."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def register(self, definition: Mapping[str, Any]) -> WorkflowAccepted:
        return cast("WorkflowAccepted", await self._c.request("POST", "/v1/workflows", json=dict(definition)))

    async def get(self, name: str) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self._c.request("GET", f"/v1/workflows/{name}"))

    async def list(self) -> Dict[str, Any]:
        return cast("Dict[str, Any]", await self._c.request("GET", "/v1/workflows"))


async def _stream_async(c: AsyncClient, path: str, after: Optional[int], final: FrozenSet[str],
                        reconnect: bool) -> AsyncIterator[Event]:
    last_id = after
    pause = 0.0
    while True:
        try:
            async with c._http.stream("GET", path, headers=_stream_headers(last_id),
                                      timeout=_stream_timeout(c)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    err = _core.error_from(resp)
                    if not reconnect or not (err.status in (429, 503) or err.status >= 500):
                        raise err
                    await asyncio.sleep(err.retry_after if err.retry_after is not None else _backoff(pause))
                    pause = _backoff(pause)
                    continue
                parser = _core.SSEParser()
                async for line in resp.aiter_lines():
                    got = parser.feed(line)
                    if got is None:
                        continue
                    ev = _core.sse_event(*got)
                    if ev.type == "revoked":
                        raise _revoked(ev)
                    if last_id is not None and ev.id and ev.id <= last_id:
                        continue
                    if ev.id:
                        last_id = ev.id
                    pause = 0.0
                    yield ev
                    if ev.type in final:
                        return
        except httpx.TransportError as e:
            if not reconnect:
                raise _core.transport_error(e) from e
        if not reconnect:
            raise FerryError(0, "stream_closed", f"the event stream of {path} closed before its final event")
        pause = _backoff(pause)
        await asyncio.sleep(min(pause, _MAX_RECONNECT_PAUSE))
