"""What the sync and asyncio clients and the worker share: configuration defaults, the
error type, answer decoding, wait durations and the Server-Sent Events parser.

Nothing here does I/O: the two clients wrap these helpers around `httpx.Client` and
`httpx.AsyncClient` respectively, so both behave the same way by construction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union, cast

import httpx

from .types import JobSpec

DEFAULT_URL = "http://127.0.0.1:7700"

#: A job in one of these states will not change any more (until a replay).
FINAL_JOB_STATES = frozenset({"succeeded", "dead", "cancelled"})
#: A run in one of these states has ended.
FINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: The event after which the server closes a job's stream (README: Event streams).
FINAL_JOB_EVENTS = frozenset({"succeeded", "dead", "cancelled"})
#: The event after which the server closes a run's stream.
FINAL_RUN_EVENTS = frozenset({"run_finished"})

#: The longest wait the server accepts in `?wait=` (60 s).
MAX_SERVER_WAIT = 60.0

JSON = Any
Timeout = Union[float, int, None]


class FerryError(Exception):
    """An error answer of the Ferry API: `{"error": {"code", "message", "field"}}`.

    `status` is the HTTP status (0 when the server could not be reached or answered
    something that is not Ferry's error shape: then `code` says which); `code` is the
    stable error code (`invalid_field`, `not_found`, `unknown_session`, …); `field`
    names the offending part of the request, when there is one. `retry_after` is the
    `Retry-After` header of a 429 or 503, in seconds.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


class WaitTimeout(TimeoutError):
    """The job or run had not ended when the caller's timeout ran out. `last` is the
    last state seen (the whole `GET` answer), `id` the job's or run's id: it goes on
    running, and can be waited for again or cancelled."""

    def __init__(self, id: str, last: Optional[Dict[str, Any]]) -> None:
        state = (last or {}).get("state")
        super().__init__(f"{id} has not ended yet (state {state})")
        self.id = id
        self.last = last


def default_url(url: Optional[str]) -> str:
    """The server's URL: `url`, else `FERRY_SERVER` (as the CLI reads it), else
    `http://127.0.0.1:7700`. A URL without a scheme gets `http://`, as in the CLI."""
    url = url or os.environ.get("FERRY_SERVER") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def default_token(token: Optional[str]) -> Optional[str]:
    """The bearer token: `token`, else `FERRY_TOKEN`, else none (open mode on loopback)."""
    if token:
        return token
    return os.environ.get("FERRY_TOKEN") or None


def headers(token: Optional[str]) -> Dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": "ferry-client-python/0.1"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


def retry_after(resp: httpx.Response) -> Optional[float]:
    return parse_retry_after(resp.headers.get("retry-after"))


def parse_retry_after(raw: Optional[str]) -> Optional[float]:
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_from(resp: httpx.Response) -> FerryError:
    """The `FerryError` of an error answer (any status ≥ 400)."""
    return error_of(resp.status_code, resp.content, resp.reason_phrase, retry_after(resp))


def error_of(status: int, content: bytes, reason: str, after: Optional[float]) -> FerryError:
    """The `FerryError` of an error answer from its parts (any HTTP client's)."""
    try:
        err = json.loads(content)["error"]
        return FerryError(status, str(err["code"]), str(err.get("message", "")), err.get("field"), after)
    except (ValueError, KeyError, TypeError):
        text = content[:500].decode(errors="replace") if content else reason
        return FerryError(status, "http_error", text or f"HTTP {status}", None, after)


def decode(resp: httpx.Response) -> Any:
    """The JSON body of a successful answer (`None` for 204), or raises its `FerryError`."""
    if resp.status_code >= 400:
        raise error_from(resp)
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


def transport_error(exc: Exception) -> FerryError:
    return FerryError(0, "unreachable", f"{type(exc).__name__}: {exc}")


def wait_param(seconds: float) -> str:
    """A `?wait=` value the server accepts (`500ms`, `30s`), at most 60 s, at least 1 ms."""
    seconds = min(max(seconds, 0.001), MAX_SERVER_WAIT)
    ms = int(round(seconds * 1000))
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{max(ms, 1)}ms"


def ms(value: Union[float, int, None]) -> Optional[int]:
    return None if value is None else int(round(value * 1000))


def job_spec(kind: str, input: JSON = None, **fields: Any) -> "JobSpec":
    """A job spec for `POST /v1/jobs` or `Client.submit_batch`: `kind`, `input` and the
    fields given that are not `None` (see `spec`)."""
    return cast("JobSpec", spec(kind, input, **fields))


def spec(kind: str, input: JSON = None, **fields: Any) -> Dict[str, Any]:
    """A job spec for `POST /v1/jobs` or a batch: `kind`, `input` and the fields given
    (`queue`, `priority`, `max_attempts`, `backoff`, `timeout_ms`, `delay_ms`, `run_at`,
    `labels`, `idempotency_key`, `on_limit`, `breaker`, `ordering_key`, …) that are not
    `None`. A `datetime` for `run_at` is sent as RFC 3339."""
    spec: Dict[str, Any] = {"kind": kind}
    if input is not None:
        spec["input"] = input
    for name, value in fields.items():
        if value is None:
            continue
        if name == "run_at" and hasattr(value, "isoformat"):
            value = value.isoformat()
        spec[name] = value
    return spec


def is_job_view(body: Any) -> bool:
    """Whether an answer is a whole job (`GET /v1/jobs/{id}`) rather than a submit answer."""
    return isinstance(body, dict) and "kind" in body and "state" in body


@dataclass
class Event:
    """One event of a job's or run's log.

    `id` increases in commit order (resume after it with `after=` or `Last-Event-ID`);
    `type` is the event's type (`queued`, `started`, `progress`, `log`, `succeeded`,
    `run_finished`, …); `data` its own data; `raw` the whole event as the server sent it
    (a run's copy of a job event also has `node`, `item` and `job_id` there).
    """

    id: int
    type: str
    data: Any = None
    at: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], sse_id: Optional[str] = None, sse_type: Optional[str] = None) -> "Event":
        raw = dict(obj)
        ident = raw.get("id", sse_id)
        try:
            ident = int(ident)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            ident = 0
        kind = raw.get("type") or sse_type or "message"
        return cls(id=ident, type=str(kind), data=raw.get("data"), at=raw.get("at"), raw=raw)


class SSEParser:
    """An incremental Server-Sent Events parser: feed it lines (without their line
    break), get whole events back. Comments (`: keep-alive`) are skipped."""

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._type: Optional[str] = None
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Tuple[Optional[str], Optional[str], str]]:
        if line == "":
            if not self._data:
                self._type = None
                return None
            out = (self._id, self._type, "\n".join(self._data))
            self._type, self._data = None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            self._id = value
        return None


def sse_event(sse_id: Optional[str], sse_type: Optional[str], data: str) -> Event:
    """The `Event` of one Server-Sent Event (`data:` is the event as JSON)."""
    try:
        obj = json.loads(data)
    except ValueError:
        obj = {"data": data}
    if not isinstance(obj, dict):
        obj = {"data": obj}
    if sse_type and "type" not in obj:
        obj["type"] = sse_type
    return Event.from_json(obj, sse_id, sse_type)


def events_of(body: Any) -> List[Event]:
    return [Event.from_json(e) for e in (body or {}).get("events", [])]


def query(params: Iterable[Tuple[str, Any]]) -> Dict[str, str]:
    return {k: str(v) for k, v in params if v is not None}
