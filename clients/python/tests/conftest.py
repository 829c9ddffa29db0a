"""Fixtures: a real `ferry server` (the binary named by `FERRY_BIN`) on a free loopback
port with a temporary SQLite data directory, and real worker processes
(`python -m ferry worker tests.tasks:app`).

Nothing here sleeps to let something happen: every wait polls for a signal (a log line,
a marker file a task writes, a job's state) with a generous deadline.

With `--postgres`, every server runs on PostgreSQL at `FERRY_TEST_DATABASE_URL`, in a
schema of its own (dropped afterwards with `psql` when it is there).

Without `FERRY_BIN` (nor a built `target/release/ferry` in the repository) every test
is skipped with a message, unless `CI=true`: then they fail. The same goes for the
worker tests against a server that does not speak the worker protocol yet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

import ferry

HERE = Path(__file__).resolve().parent
PKG = HERE.parent  # clients/python: the worker processes' working directory
REPO = PKG.parent.parent
CI = os.environ.get("CI") == "true"

# Deadlines: generous, since the machine may be busy building; a passing test never
# waits them out.
START_DEADLINE = 30.0
STATE_DEADLINE = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--postgres", action="store_true",
                     help="run every server on PostgreSQL at FERRY_TEST_DATABASE_URL (default "
                          "postgres://postgres@127.0.0.1:5432/test), each in a schema of its own, instead of SQLite")


POSTGRES_URL = os.environ.get("FERRY_TEST_DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/test"
_postgres = False


def pytest_configure(config: pytest.Config) -> None:
    global _postgres
    _postgres = bool(config.getoption("--postgres"))


def skip_or_fail(reason: str) -> None:
    if CI:
        pytest.fail(f"CI=true, so this must run: {reason}")
    sys.stderr.write(f"\n*** skipping: {reason} ***\n")
    pytest.skip(reason)


def wait_for(what: str, check: Callable[[], Any], deadline: float = STATE_DEADLINE, pause: float = 0.02) -> Any:
    """Polls `check` until it answers something truthy; fails after `deadline` seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while True:
        try:
            last = check()
        except (ferry.FerryError, OSError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferry_bin() -> str:
    path = os.environ.get("FERRY_BIN")
    if not path:
        built = REPO / "target" / "release" / "ferry"
        if built.is_file():
            path = str(built)
    if not path or not os.access(path, os.X_OK):
        skip_or_fail("no ferry binary: set FERRY_BIN (the Rust test crates/ferry/tests/sdk_python.rs does), "
                     f"or build target/release/ferry (FERRY_BIN={path!r})")
    return str(path)


class Server:
    """A `ferry server` subprocess; `url`, `client()`, `stop()`."""

    def __init__(self, binary: str, env: Dict[str, str], tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.log_path = tmp / "server.log"
        self.env = dict(env)
        self.schema: Optional[str] = None
        args = ["--data-dir", str(self.data_dir)]
        if _postgres:
            self.schema = f"py_sdk_{uuid.uuid4().hex[:16]}"
            self.env["FERRY_DATABASE_SCHEMA"] = self.schema
            args = ["--database", POSTGRES_URL]
        last_error = ""
        for _ in range(3):  # a free port may be taken between the probe and the bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [binary, "server", "--listen", f"127.0.0.1:{self.port}", *args],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
            try:
                wait_for(f"the server at {self.url}", self._healthy, deadline=START_DEADLINE)
                return
            except AssertionError as e:
                last_error = str(e)
                self.stop()
        raise RuntimeError(f"the server did not start: {last_error}\n{self.log_tail()}")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self) -> ferry.Client:
        return ferry.Client(self.url, timeout=30.0)

    def has_worker_protocol(self) -> bool:
        with urllib.request.urlopen(self.url + "/v1/openapi.json", timeout=10) as r:
            doc = json.load(r)
        return any(p.startswith("/v1/workers/sessions") for p in doc.get("paths", {}))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.schema and shutil.which("psql"):
            subprocess.run(["psql", POSTGRES_URL, "-q", "-c", f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)


def server_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_LOG"] = os.environ.get("FERRY_TEST_SERVER_LOG", "warn")
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def binary() -> str:
    return ferry_bin()


@pytest.fixture(scope="module")
def server(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module's client tests (they need no isolation from each other)."""
    s = Server(binary, server_env(), tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture
def fresh_server(binary: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """A factory of servers of this test's own, with `FERRY_*` settings: the worker
    tests take one each, with short leases and heartbeats, so that a job left behind by
    one test never lands in another's worker."""
    made: List[Server] = []

    def make(**settings: str) -> Server:
        env = server_env({"FERRY_LEASE_MS": "3000", "FERRY_HEARTBEAT_MS": "1000", **settings})
        s = Server(binary, env, Path(tempfile.mkdtemp(dir=tmp_path)))
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


class WorkerProcess:
    """`python -m ferry worker tests.tasks:app` against a server: `pid`, `log()`,
    `terminate()`, `kill()`."""

    def __init__(self, server: Server, marks: Path, tmp: Path, args: List[str]) -> None:
        self.log_path = tmp / f"worker-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env["FERRY_TEST_MARKS"] = str(marks)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferry", "worker", "tests.tasks:app", "--url", server.url, *args],
            cwd=str(PKG), stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        wait_for("the worker's session", self._open, deadline=START_DEADLINE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _open(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.log()}")
        return " open at " in self.log()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """The directory where tasks write their marker files (`JOB.ATTEMPT.WHAT`)."""
    d = tmp_path / "marks"
    d.mkdir()
    return d


@pytest.fixture
def start_worker(marks: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    made: List[WorkerProcess] = []

    def start(server: Server, *args: str) -> WorkerProcess:
        if not getattr(server, "_protocol_checked", False):
            if not server.has_worker_protocol():
                skip_or_fail(f"the server {ferry_bin()} does not serve the worker protocol (/v1/workers/sessions)")
            server._protocol_checked = True  # type: ignore[attr-defined]
        w = WorkerProcess(server, marks, tmp_path, list(args))
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()
    for w in made:
        if w.proc.returncode not in (0, -9):
            sys.stderr.write(f"worker {w.pid} exited with {w.proc.returncode}:\n{w.log()[-4000:]}\n")


def mark(marks: Path, job_id: str, attempt: int, what: str) -> Path:
    return marks / f"{job_id}.{attempt}.{what}"


def wait_mark(marks: Path, job_id: str, attempt: int, what: str, deadline: float = STATE_DEADLINE) -> str:
    path = mark(marks, job_id, attempt, what)
    wait_for(f"marker {path.name}", path.exists, deadline=deadline)
    return path.read_text()


def wait_state(client: ferry.Client, job_id: str, states: Any, deadline: float = STATE_DEADLINE) -> Dict[str, Any]:
    wanted = {states} if isinstance(states, str) else set(states)

    def check() -> Any:
        job = client.get(job_id)
        return job if job["state"] in wanted else None

    return wait_for(f"job {job_id} in {sorted(wanted)}", check, deadline=deadline)

