#!/usr/bin/env python3
"""Side-by-side benchmark of Ferry and Celery: one harness drives and measures every system.

Run through `bash bench/run`, which builds Ferry and makes the virtualenv first. For every
round, every scenario and every system (in alternation), the driver starts a fresh
instance of the system (a Ferry server on a new data directory or a new PostgreSQL
database; a new redis-server and Celery worker), measures, and stops it. Everything it
starts is stopped on exit, on an error and on Ctrl-C. See bench/README.md.
"""

import argparse
import atexit
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid

import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))


class HttpResponse:
    def __init__(self, status, body):
        self.status_code, self.content = status, body

    @property
    def text(self):
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


class Http:
    """Ferry's client: Python's standard http.client on one keep-alive connection. A
    client library's own overhead is not Ferry's: `requests` adds about 0.5 ms to every
    call on this machine (measured: 0.6 ms against 0.16 ms for GET /healthz), which would
    be most of Ferry's pickup latency. Celery is measured through its own client."""

    def __init__(self):
        self.conn, self.hostport = None, None

    def request(self, method, url, data=None, headers=None, timeout=60):
        u = urllib.parse.urlsplit(url)
        path = u.path + (f"?{u.query}" if u.query else "")
        for attempt in (0, 1):
            if self.conn is None or self.hostport != u.netloc:
                self.conn, self.hostport = http.client.HTTPConnection(u.netloc, timeout=timeout), u.netloc
            try:
                self.conn.request(method, path, body=data, headers=headers or {})
                r = self.conn.getresponse()
                return HttpResponse(r.status, r.read())
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise

    def get(self, url, timeout=60):
        return self.request("GET", url, timeout=timeout)

    def post(self, url, data=None, headers=None, timeout=60):
        return self.request("POST", url, data=data, headers=headers, timeout=timeout)

SYSTEMS = ["ferry-sqlite", "ferry-postgres", "celery-threads", "celery-prefork"]
# Celery's threads pool is its documented choice for I/O-light work and was the faster
# of its two pools on pickup in a full run with both (BENCHMARKS.md); prefork is one flag away.
DEFAULT_SYSTEMS = ["ferry-sqlite", "ferry-postgres", "celery-threads"]
PEERS = [s for s in SYSTEMS if s.startswith("celery")]
SCENARIOS = ["throughput", "pickup", "load", "retry", "chain", "scale"]
JSON_HEADERS = {"Content-Type": "application/json"}
RESERVED_PORTS = {5432, 6379, 7700, 7701}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchTimeout(Exception):
    """A scenario ran past its time limit; `partial` says how far it got."""

    def __init__(self, msg, **partial):
        super().__init__(msg)
        self.partial = partial


# --------------------------------------------------------------------------------------
# Processes, temporary directories and databases: everything is undone on exit.

LIVE = []  # Popen objects, each the leader of its own process group
TEMP_DIRS = []
PG_DATABASES = []  # (admin url, database name)
_cleaned = False


def spawn(cmd, log_path, env=None, cwd=None):
    """Starts `cmd` in its own process group, output to `log_path`. With setpriv, the
    child also gets SIGTERM if the driver dies without cleaning up (e.g. SIGKILL)."""
    if shutil.which("setpriv"):
        cmd = ["setpriv", "--pdeathsig", "TERM", "--"] + list(cmd)
    with open(log_path, "ab") as out:
        p = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    LIVE.append(p)
    return p


def stop_process(p, grace=20.0):
    """SIGTERM to the process group, SIGKILL after `grace` seconds; then makes sure
    nothing of the group is left (prefork children)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    if p in LIVE:
        LIVE.remove(p)


def psql(admin_url, sql, db=None):
    url = admin_url
    if db:
        u = urllib.parse.urlsplit(admin_url)
        url = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed ({sql!r}): {out.stderr.strip()}")
    return out.stdout.strip()


def create_database(admin_url):
    name = "ferry_bench_" + secrets.token_hex(6)
    psql(admin_url, f"CREATE DATABASE {name}")
    PG_DATABASES.append((admin_url, name))
    u = urllib.parse.urlsplit(admin_url)
    return name, urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def drop_database(admin_url, name):
    try:
        psql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        log(f"warning: could not drop database {name}: {e}")
    if (admin_url, name) in PG_DATABASES:
        PG_DATABASES.remove((admin_url, name))


def cleanup():
    global _cleaned
    if _cleaned:
        return
    _cleaned = True
    for p in reversed(list(LIVE)):
        try:
            stop_process(p, grace=10)
        except Exception:  # noqa: BLE001
            pass
    for admin, name in list(PG_DATABASES):
        drop_database(admin, name)
    for d in TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in RESERVED_PORTS:
            return port


def proc_kb(path, key):
    """The `key:` line of a /proc file, in KiB; 0 if the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    """Proportional set size now (shared pages split between their users), in KiB."""
    return proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def vm_hwm_kb(pid):
    """Peak resident set size (VmHWM) of a process, in KiB; 0 if it is gone."""
    return proc_kb(f"/proc/{pid}/status", "VmHWM")


def descendants(pid):
    """Every process below `pid` (children, grandchildren...)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        cur = frontier.pop()
        kids = [c for c, p in parent_of.items() if p == cur]
        found += kids
        frontier += kids
    return found


def leaf_pid(p):
    """The real server process under a `setpriv` wrapper (setpriv execs, so it is p.pid)."""
    return p.pid


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    idx = min(len(sorted_vals) - 1, max(0, round((len(sorted_vals) - 1) * p)))
    return sorted_vals[idx]


def parse_rfc3339(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def latency_summary(lat_s, prefix=""):
    """p50/p99/max in milliseconds; an unfinished sample is +inf, and a percentile that
    lands on one is reported as null with `<name>_unfinished: true`."""
    vals = sorted(lat_s)
    out = {}
    for name, p in (("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)):
        v = percentile(vals, p)
        if v is None or math.isinf(v):
            out[prefix + name] = None
            out[prefix + name + "_unfinished"] = v is not None
        else:
            out[prefix + name] = round(v * 1000, 3)
    out[prefix + "samples"] = len(vals)
    out[prefix + "unfinished_samples"] = sum(1 for v in vals if math.isinf(v))
    return out


# --------------------------------------------------------------------------------------
# Producer processes: used for Celery's submissions (Python's GIL would make threads
# measure the harness rather than the broker) and, for both systems alike, for the
# steady arrivals of the latency-under-load scenario.

def producer_main(conn, spec, index, count):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if spec["system"] == "celery":
            sys.path.insert(0, HERE)
            import celery_app  # noqa: PLC0415

            app = celery_app.make_app(spec["port"])
            # Connects the producer and the result consumer, on a queue no worker reads.
            app.send_task("bench.noop", queue="bench-warmup")

            def make_submit():
                def submit(kind, n):
                    out = []
                    for _ in range(n):
                        t = time.time()
                        out.append((app.send_task(kind).id, t))
                    return out
                return submit
        else:
            url = spec["base"] + "/v1/jobs/batch"
            bodies = {}

            def make_submit():
                session = Http()
                session.get(spec["base"] + "/healthz", timeout=10)

                def submit(kind, n):
                    body = bodies.get((kind, n))
                    if body is None:
                        body = bodies[(kind, n)] = json.dumps({"jobs": [spec["jobs"][kind]] * n}).encode()
                    t = time.time()
                    r = session.post(url, data=body, headers=JSON_HEADERS, timeout=60)
                    if r.status_code >= 300:
                        raise RuntimeError(f"batch refused: {r.status_code} {r.text[:300]}")
                    return [(j["id"], t) for j in r.json()["jobs"]]
                return submit
        senders = [make_submit() for _ in range(spec.get("threads", 1))]
        conn.send(("ready", None))
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                if task["op"] == "bulk":
                    ids = []
                    left = task["n"]
                    while left > 0:
                        step = min(left, task.get("batch", 1000))
                        ids += [i for i, _ in senders[0](task["kind"], step)]
                        left -= step
                    conn.send(("ok", {"t_end": time.time(), "ids": ids if task.get("want_ids") else None}))
                elif task["op"] == "load":
                    outs = [None] * len(senders)

                    def sender(j):
                        outs[j] = load_sender(senders[j], task, index * len(senders) + j, count * len(senders))

                    threads = [threading.Thread(target=sender, args=(j,), daemon=True) for j in range(len(senders))]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    errs = [o for o in outs if isinstance(o, str)]
                    if errs:
                        raise RuntimeError(errs[0])
                    conn.send(("ok", {
                        "submitted": sum(o["submitted"] for o in outs),
                        "samples": [x for o in outs for x in o["samples"]],
                        "late_ticks": sum(o["late_ticks"] for o in outs),
                        "t_first": min((o["t_first"] for o in outs if o["t_first"]), default=None),
                        "t_last": max((o["t_last"] for o in outs if o["t_last"]), default=None),
                    }))
                else:
                    raise ValueError(f"unknown op {task['op']}")
            except Exception:  # noqa: BLE001 - sent to the driver
                conn.send(("error", traceback.format_exc()))
    except Exception:  # noqa: BLE001
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass


def load_sender(submit, task, first_tick, stride):
    """Sends the ticks first_tick, first_tick + stride, ... on schedule until the window
    ends. A tick that is due while this sender is still busy goes out as soon as it is
    free (and counts as late); ticks due after the window are not sent."""
    try:
        t0, tick, per_tick = task["t0"], task["tick_s"], task["per_tick"]
        end, every = t0 + task["duration_s"], task["sample_every"]
        k, submitted, samples, late, first, last = first_tick, 0, [], 0, None, None
        while True:
            due = t0 + k * tick
            now = time.time()
            if due >= end or now >= end:
                break
            if due > now:
                time.sleep(due - now)
            elif now - due > tick:
                late += 1
            got = submit(task["kind"], per_tick)
            first = got[0][1] if first is None else first
            last = got[-1][1]
            for pos, (jid, t) in enumerate(got):
                if (k * per_tick + pos) % every == 0:
                    samples.append((jid, t))
            submitted += len(got)
            k += stride
        return {"submitted": submitted, "samples": samples, "late_ticks": late, "t_first": first, "t_last": last}
    except Exception:  # noqa: BLE001
        return traceback.format_exc()


class Producers:
    def __init__(self, count, spec, timeout=90):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(count):
            a, b = ctx.Pipe()
            p = ctx.Process(target=producer_main, args=(b, spec, i, count), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        for c in self.conns:
            self._recv(c, timeout)

    def _recv(self, c, timeout):
        if not c.poll(timeout):
            raise BenchTimeout(f"producer did not answer within {timeout:.0f} s")
        status, value = c.recv()
        if status == "error":
            raise RuntimeError("producer failed:\n" + value)
        return value

    def send(self, tasks):
        for c, t in zip(self.conns, tasks):
            c.send(t)

    def results(self, timeout):
        deadline = time.time() + timeout
        return [self._recv(c, max(0.1, deadline - time.time())) for c in self.conns]

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


def split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------------------
# Ferry.

FERRY_NOOP = {"kind": "noop"}
FERRY_FLAKY = {
    "kind": "fail",
    "input": {"type": "network", "times": 2},
    "max_attempts": 3,
    # The shortest backoff the job spec accepts (backoff.rs: multiplier >= 1,
    # max_ms >= initial_ms): retry at once.
    "backoff": {"initial_ms": 0, "max_ms": 0, "multiplier": 1, "jitter": "none"},
}


class System:
    """What every system under test does alike. A subclass provides `wait_done(n,
    deadline, what)` (returns when n jobs finished, or raises BenchTimeout) and
    `STAMP_KIND`, the job the load scenario samples for its start time."""

    STAMP_KIND = None

    def load(self, p, limit):
        return run_load(self, self.STAMP_KIND, p, limit)

    def wait_load_done(self, total, deadline):
        try:
            return self.wait_done(total, deadline, "load"), None
        except BenchTimeout as e:
            return None, e.partial.get("unfinished")


class Ferry(System):
    STAMP_KIND = "noop"  # its attempt's `started_at` is the stamp

    def __init__(self, name, opts, run_dir):
        self.name, self.opts, self.run_dir = name, opts, run_dir
        self.backend = "postgres" if name == "ferry-postgres" else "sqlite"
        self.proc = None
        self.db = None

    def settings(self):
        s = {
            "binary": self.opts.ferry_bin,
            "backend": self.backend,
            "process": "one `ferry server` process: HTTP API and embedded workers",
            "queues.default.concurrency": self.opts.concurrency,
            "queues.default.max_depth": 0,
            "durability": "process (default)",
            "poll_ms": 1000, "lease_ms": 30000, "heartbeat_ms": 5000,
            "log": "warn",
            "submission": "POST /v1/jobs/batch, 1000 jobs per request, 4 client threads",
        }
        if self.backend == "postgres":
            s["database"] = "a fresh database per scenario on the local server (" + self.opts.pg_url + ")"
            s["database_max_connections"] = 16
        else:
            s["data_dir"] = "a fresh temporary directory per scenario"
        return s

    # lifecycle

    def start(self, tag, **_):
        self.dir = tempfile.mkdtemp(prefix=f"{tag}-", dir=self.run_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        lines = [
            f'listen = "127.0.0.1:{self.port}"',
            f'data_dir = "{self.dir}/data"',
            "shutdown_grace_ms = 2000",
        ]
        if self.backend == "postgres":
            name, url = create_database(self.opts.pg_url)
            self.db = name
            lines.append(f'database_url = "{url}"')
        lines += ["", "[queues.default]", f"concurrency = {self.opts.concurrency}", "max_depth = 0", ""]
        cfg = os.path.join(self.dir, "ferry.toml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env["FERRY_LOG"] = "warn"
        self.log_path = os.path.join(self.dir, "ferry.log")
        self.proc = spawn([self.opts.ferry_bin, "server", "--config", cfg], self.log_path, env=env)
        self.s = Http()
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry server exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                if self.s.get(self.base + "/readyz", timeout=2).status_code == 200:
                    break
            except (http.client.HTTPException, OSError):
                pass
            if time.time() > deadline:
                raise BenchTimeout("ferry server not ready within 60 s")
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.db:
            drop_database(self.opts.pg_url, self.db)
            self.db = None

    # API helpers

    def call(self, method, path, body=None, session=None, timeout=60):
        s = session or self.s
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        r = s.request(method, self.base + path, data=data, headers=JSON_HEADERS, timeout=timeout)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def counts(self):
        q = self.call("GET", "/v1/queues")
        open_, dead = 0, 0
        for queue in q["queues"]:
            for k in ("depth", "running", "scheduled", "retrying"):
                open_ += queue.get(k) or 0
            dead += queue.get("dead") or 0
        return open_, dead

    def bulk_submit(self, job, n, clients=4, first_ids=None):
        """Submits n copies of `job` in batches of 1000 from `clients` threads; returns
        (t_start, t_submitted)."""
        batches = split(n, max(1, math.ceil(n / 1000)))
        body_cache = {}
        lock = threading.Lock()
        queue = list(batches)
        errors = []
        go = threading.Event()
        sessions = [Http() for _ in range(clients)]
        for s in sessions:
            s.get(self.base + "/healthz", timeout=10)

        def worker(s):
            go.wait()
            while True:
                with lock:
                    if not queue or errors:
                        return
                    size = queue.pop()
                body = body_cache.get(size)
                if body is None:
                    body = json.dumps({"jobs": [job] * size}).encode()
                    with lock:
                        body_cache[size] = body
                try:
                    out = self.call("POST", "/v1/jobs/batch", body, session=s)
                    if first_ids is not None and not first_ids:
                        first_ids.append(out["jobs"][0]["id"])
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(e)
                    return

        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sessions]
        for t in threads:
            t.start()
        t0 = time.time()
        go.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return t0, time.time()

    def wait_done(self, n, deadline, what):
        while True:
            open_, dead = self.counts()
            if open_ == 0:
                if dead:
                    raise RuntimeError(f"{dead} jobs died")
                return time.time()
            if time.time() > deadline:
                raise BenchTimeout(f"{what}: {open_} of {n} jobs unfinished at the time limit",
                                   unfinished=open_, jobs=n)
            time.sleep(0.01)

    # scenarios

    def throughput(self, n, limit):
        t0, t_sub = self.bulk_submit(FERRY_NOOP, n)
        t1 = self.wait_done(n, t0 + limit, "throughput")
        return {"jobs": n, "seconds": t1 - t0, "jobs_per_s": n / (t1 - t0), "submit_seconds": t_sub - t0}

    def pickup(self, n, warmup, limit):
        deadline = time.time() + limit
        lat = []
        for i in range(warmup + n):
            t_sub = time.time()
            jid = self.call("POST", "/v1/jobs", FERRY_NOOP)["id"]
            while True:
                job = self.call("GET", f"/v1/jobs/{jid}")
                if job["state"] == "succeeded":
                    break
                if job["state"] in ("dead", "cancelled"):
                    raise RuntimeError(f"job {jid} ended {job['state']}")
                if time.time() > deadline:
                    raise BenchTimeout(f"pickup: {i} of {warmup + n} jobs done at the time limit")
                time.sleep(0.0005)
            if i >= warmup:
                lat.append(parse_rfc3339(job["attempts"][0]["started_at"]) - t_sub)
        return latency_summary(lat)

    def producer_spec(self):
        return {"system": "ferry", "base": self.base, "jobs": {"noop": FERRY_NOOP}}

    def sample_starts(self, ids):
        """Start time of each job's first attempt (inf if it has not started)."""
        out = {}
        lock = threading.Lock()
        chunks = [ids[i::4] for i in range(4)]

        def fetch(chunk):
            s = Http()
            for jid in chunk:
                job = self.call("GET", f"/v1/jobs/{jid}", session=s)
                att = job.get("attempts") or []
                v = parse_rfc3339(att[0]["started_at"]) if att else math.inf
                with lock:
                    out[jid] = v

        threads = [threading.Thread(target=fetch, args=(c,), daemon=True) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def retry(self, n, limit):
        first = []
        t0, t_sub = self.bulk_submit(FERRY_FLAKY, n, first_ids=first)
        t1 = self.wait_done(n, t0 + limit, "retry")
        attempts = len(self.call("GET", f"/v1/jobs/{first[0]}")["attempts"]) if first else None
        return {"jobs": n, "seconds": t1 - t0, "jobs_per_s": n / (t1 - t0), "submit_seconds": t_sub - t0,
                "attempts_of_first_job": attempts}

    def chain(self, steps, runs, limit):
        nodes = []
        for i in range(steps):
            node = {"id": f"s{i}", "kind": "noop"}
            if i:
                node["depends_on"] = [f"s{i - 1}"]
            nodes.append(node)
        self.call("POST", "/v1/workflows", {"name": "chain", "nodes": nodes})
        deadline = time.time() + limit
        totals, server = [], []
        for i in range(runs + 1):  # the first is a warm-up
            t0 = time.time()
            rid = self.call("POST", "/v1/runs", {"workflow": "chain"})["id"]
            while True:
                run = self.call("GET", f"/v1/runs/{rid}")
                if run["state"] not in ("queued", "running"):
                    break
                if time.time() > deadline:
                    raise BenchTimeout(f"chain: run {i} of {runs + 1} unfinished at the time limit")
                time.sleep(0.0005)
            t1 = time.time()
            if run["state"] != "succeeded":
                raise RuntimeError(f"run {rid} ended {run['state']}: {run.get('error')}")
            if i:
                totals.append(t1 - t0)
                if run.get("created_at") and run.get("finished_at"):
                    server.append(parse_rfc3339(run["finished_at"]) - parse_rfc3339(run["created_at"]))
        return chain_summary(totals, steps, server)

    def scale(self, n, limit):
        self.call("PUT", "/v1/queues/default", {"paused": True})
        time.sleep(1.5)  # workers apply queue settings within poll_ms (1 s)
        t_e0, t_e1 = self.bulk_submit(FERRY_NOOP, n)
        waiting, _ = self.counts()
        window = scale_window(n)
        t0 = time.time()
        self.call("PUT", "/v1/queues/default", {"paused": False})
        first = None
        deadline = t0 + limit
        while True:
            q = self.call("GET", "/v1/queues")
            d = next(x for x in q["queues"] if x["name"] == "default")
            open_ = sum(d.get(k) or 0 for k in ("depth", "running", "scheduled", "retrying"))
            if first is None and (d.get("running") or open_ < n):
                first = time.time()
            if open_ <= n - window:
                break
            if time.time() > deadline:
                raise BenchTimeout(f"scale: {open_} of {n} unfinished at the time limit", unfinished=open_)
            time.sleep(0.01)
        t1 = time.time()
        out = {
            "jobs": n, "waiting_at_resume": waiting, "enqueue_seconds": t_e1 - t_e0, "measured_jobs": window,
            "seconds": t1 - t0, "jobs_per_s": window / (t1 - t0),
            "first_pickup_after_s": (first or t1) - t0,
            "drain_jobs_per_s": window / (t1 - (first or t0)),
            "peak_mb": vm_hwm_kb(leaf_pid(self.proc)) / 1024,
            "pss_mb_at_end": pss_kb(leaf_pid(self.proc)) / 1024,
            "peak_detail": {"ferry_vmhwm_kb": vm_hwm_kb(leaf_pid(self.proc)),
                            "ferry_pss_kb_at_end": pss_kb(leaf_pid(self.proc))},
        }
        if self.backend == "postgres":
            pids = psql(self.opts.pg_url, f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db}'").split()
            out["peak_detail"]["postgres_backends"] = len(pids)
            out["peak_detail"]["postgres_backends_vmhwm_kb_sum"] = sum(vm_hwm_kb(int(p)) for p in pids)
        return out


# --------------------------------------------------------------------------------------
# Celery.

class CeleryPeer(System):
    STAMP_KIND = "bench.stamp"  # returns time.time() at the start of its body

    def __init__(self, name, opts, run_dir):
        self.name, self.opts, self.run_dir = name, opts, run_dir
        self.pool = name.split("-", 1)[1]
        self.redis = self.worker = self.app = None

    def settings(self):
        return {
            "pool": self.pool,
            "concurrency": self.opts.concurrency,
            "broker": "redis (db 0), own redis-server per scenario",
            "result_backend": "redis (db 1), same redis-server",
            "task_acks_late": True,
            "worker_prefetch_multiplier": 4,
            "serializer": "json",
            "worker flags": "--without-gossip --without-mingle --without-heartbeat -l WARNING",
            "redis": "redis-server with its defaults (RDB snapshots 3600 1 / 300 100 / 60 10000, no AOF)",
            "submission": "bulk backlogs (throughput, scale): one apply_async message copied with fresh ids, "
                          "written by pipelined LPUSH; one at a time (retry, load): apply_async (send_task) from "
                          f"{self.opts.celery_producers} producer processes",
        }

    def start(self, tag, worker=True):
        import redis  # noqa: PLC0415

        sys.path.insert(0, HERE)
        import celery_app  # noqa: PLC0415

        self.dir = tempfile.mkdtemp(prefix=f"{tag}-", dir=self.run_dir)
        self.port = free_port()
        self.redis_log = os.path.join(self.dir, "redis.log")
        self.redis = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""],
            self.redis_log,
        )
        self.r0 = redis.Redis(port=self.port, db=0)
        self.r1 = redis.Redis(port=self.port, db=1)
        deadline = time.time() + 30
        while True:
            try:
                if self.r1.ping():
                    break
            except redis.RedisError:
                pass
            if self.redis.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{tail(self.redis_log)}")
            time.sleep(0.05)
        self.app = celery_app.make_app(self.port)
        if worker:
            self.start_worker()

    def start_worker(self):
        ready = os.path.join(self.dir, "worker.ready")
        env = dict(os.environ, BENCH_REDIS_PORT=str(self.port), BENCH_READY_FILE=ready,
                   PYTHONPATH=HERE, PYTHONUNBUFFERED="1")
        self.worker_log = os.path.join(self.dir, "worker.log")
        t_launch = time.time()
        self.worker = spawn(
            [os.path.join(VENV_BIN, "celery"), "-A", "celery_app", "worker", "-P", self.pool,
             "-c", str(self.opts.concurrency), "-l", "WARNING", "-n", f"bench-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            self.worker_log, env=env, cwd=HERE,
        )
        deadline = time.time() + 90
        while not os.path.exists(ready):
            if self.worker.poll() is not None:
                raise RuntimeError(f"celery worker exited with {self.worker.returncode}:\n{tail(self.worker_log)}")
            if time.time() > deadline:
                raise BenchTimeout("celery worker not ready within 90 s")
            time.sleep(0.02)
        with open(ready) as f:
            t_ready = float(f.read())
        return t_launch, t_ready

    def stop(self):
        if self.app is not None:
            try:
                self.app.close()
            except Exception:  # noqa: BLE001
                pass
            self.app = None
        if self.worker is not None:
            stop_process(self.worker, grace=20)
            self.worker = None
        if self.redis is not None:
            stop_process(self.redis, grace=20)
            self.redis = None

    def producer_spec(self):
        return {"system": "celery", "port": self.port}

    def bulk(self, kind, n, want_ids=False):
        """n tasks from the producer processes; returns (t0, t_submitted, ids)."""
        prods = Producers(self.opts.celery_producers, self.producer_spec())
        try:
            t0 = time.time()
            prods.send([{"op": "bulk", "kind": kind, "n": k, "want_ids": want_ids}
                        for k in split(n, len(prods.conns))])
            res = prods.results(timeout=self.opts.limit_for("submit", n))
        finally:
            prods.close()
        ids = [i for r in res for i in (r["ids"] or [])] if want_ids else None
        return t0, max(r["t_end"] for r in res), ids

    def backlog(self, kind, n):
        """Writes n task messages to the broker, as fast as Redis takes them; returns (t0, t1).

        Celery has no bulk submission: apply_async sends one message per call, and from
        Python that costs more CPU than the worker spends running a no-op, on the same two
        cores. So one message is sent with apply_async to a queue no worker reads and
        read back, and n copies of it with fresh ids (the task id, which the message
        carries as its id, root id and correlation id, and the delivery tag) and the
        worker's queue as routing key are LPUSHed to that queue's list in pipelines of
        1,000: the worker gets what apply_async writes, and all the CPU while it works."""
        t0 = time.time()
        self.app.send_task(kind, queue="bench-template")
        raw = self.r0.rpop("bench-template")
        msg = json.loads(raw)
        headers, props = msg["headers"], msg["properties"]
        task_id = headers["id"]
        if headers["task"] != kind or headers["root_id"] != task_id or props["correlation_id"] != task_id:
            raise RuntimeError(f"unexpected Celery message layout: {raw[:300]!r}")
        props["delivery_info"]["routing_key"] = "celery"
        pipe = self.r0.pipeline(transaction=False)
        for i in range(1, n + 1):
            headers["id"] = headers["root_id"] = props["correlation_id"] = str(uuid.uuid4())
            props["delivery_tag"] = str(uuid.uuid4())
            pipe.lpush("celery", json.dumps(msg))
            if i % 1000 == 0:
                pipe.execute()
        pipe.execute()
        return t0, time.time()

    def wait_done(self, n, deadline, what):
        while True:
            got = self.r1.dbsize()
            if got >= n:
                return time.time()
            if time.time() > deadline:
                raise BenchTimeout(f"{what}: {n - got} of {n} tasks unfinished at the time limit",
                                   unfinished=n - got, jobs=n)
            time.sleep(0.01)

    def throughput(self, n, limit):
        t0, t_sub = self.backlog("bench.noop", n)
        t1 = self.wait_done(n, t0 + limit, "throughput")
        return {"jobs": n, "seconds": t1 - t0, "jobs_per_s": n / (t1 - t0), "submit_seconds": t_sub - t0}

    def pickup(self, n, warmup, limit):
        deadline = time.time() + limit
        lat = []
        for i in range(warmup + n):
            t_sub = time.time()
            res = self.app.send_task("bench.stamp")
            started = res.get(timeout=max(1.0, min(30.0, deadline - time.time())))
            if time.time() > deadline:
                raise BenchTimeout(f"pickup: {i} of {warmup + n} jobs done at the time limit")
            if i >= warmup:
                lat.append(started - t_sub)
        return latency_summary(lat)

    def sample_starts(self, ids):
        out = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for jid, raw in zip(chunk, self.r1.mget([f"celery-task-meta-{j}" for j in chunk])):
                v = math.inf
                if raw:
                    meta = json.loads(raw)
                    if meta.get("status") == "SUCCESS":
                        v = float(meta["result"])
                out[jid] = v
        return out

    def retry(self, n, limit):
        t0, t_sub, ids = self.bulk("bench.flaky", n, want_ids=True)
        deadline = t0 + limit
        pending = list(ids)
        while pending:
            # Results come roughly in submission order: look at the oldest pending ones,
            # stop at the first chunk where none has succeeded yet.
            still = []
            stop_at = None
            for i in range(0, len(pending), 250):
                if stop_at is not None:
                    break
                chunk = pending[i:i + 250]
                vals = self.r1.mget([f"celery-task-meta-{j}" for j in chunk])
                done = [v is not None and b'"SUCCESS"' in v for v in vals]
                still += [j for j, d in zip(chunk, done) if not d]
                if not any(done):
                    stop_at = i + 250
            if stop_at is not None:
                still += pending[stop_at:]
            pending = still
            if not pending:
                break
            if time.time() > deadline:
                raise BenchTimeout(f"retry: {len(pending)} of {n} tasks not succeeded at the time limit",
                                   unfinished=len(pending), jobs=n)
            time.sleep(0.1)
        t1 = time.time()
        meta = json.loads(self.r1.get(f"celery-task-meta-{ids[0]}"))
        return {"jobs": n, "seconds": t1 - t0, "jobs_per_s": n / (t1 - t0), "submit_seconds": t_sub - t0,
                "attempts_of_first_job": (meta.get("result") or 0) + 1}

    def chain(self, steps, runs, limit):
        from celery import chain as celery_chain  # noqa: PLC0415

        deadline = time.time() + limit
        totals = []
        for i in range(runs + 1):
            t0 = time.time()
            res = celery_chain(*[self.app.signature("bench.noop", immutable=True) for _ in range(steps)]).apply_async()
            res.get(timeout=max(1.0, min(60.0, deadline - t0)))
            t1 = time.time()
            if t1 > deadline:
                raise BenchTimeout(f"chain: run {i} of {runs + 1} past the time limit")
            if i:
                totals.append(t1 - t0)
        return chain_summary(totals, steps, None)

    def scale(self, n, limit):
        t_e0, t_e1 = self.backlog("bench.noop", n)
        waiting = self.r0.llen("celery")
        t_launch, t_ready = self.start_worker()
        deadline = t_launch + limit
        first = None
        window = scale_window(n)
        while True:
            got = self.r1.dbsize()
            if first is None and got > 0:
                first = time.time()
            if got >= window:
                break
            if time.time() > deadline:
                raise BenchTimeout(f"scale: {n - got} of {n} unfinished at the time limit", unfinished=n - got)
            time.sleep(0.01)
        t1 = time.time()
        wpid = leaf_pid(self.worker)
        procs = [wpid] + descendants(wpid)
        worker_kb = sum(vm_hwm_kb(p) for p in procs)
        redis_kb = vm_hwm_kb(leaf_pid(self.redis))
        return {
            "jobs": n, "waiting_at_resume": waiting, "enqueue_seconds": t_e1 - t_e0, "measured_jobs": window,
            "seconds": t1 - t_launch, "jobs_per_s": window / (t1 - t_launch),
            "seconds_from_worker_ready": t1 - t_ready, "worker_boot_seconds": t_ready - t_launch,
            "first_pickup_after_s": (first or t1) - t_launch,
            "drain_jobs_per_s": window / (t1 - (first or t_launch)),
            "peak_mb": (worker_kb + redis_kb) / 1024,
            "pss_mb_at_end": (sum(pss_kb(p) for p in procs) + pss_kb(leaf_pid(self.redis))) / 1024,
            "peak_detail": {"worker_processes": len(procs), "worker_vmhwm_kb_sum": worker_kb,
                            "redis_vmhwm_kb": redis_kb,
                            "worker_pss_kb_sum_at_end": sum(pss_kb(p) for p in procs)},
        }


# --------------------------------------------------------------------------------------
# Shared by both systems.

def scale_window(n):
    """The scale scenario measures throughput while the backlog is deep: over the first
    fifth of it (20,000 of 100,000 jobs, with 80,000 or more still waiting), the same
    count for every system. Draining all of it would measure the same rate at a shallower
    queue and, at Celery's pace, take minutes a round."""
    return max(1, n // 5)


def chain_summary(totals, steps, server):
    med = statistics.median(totals)
    out = {"runs": len(totals), "steps": steps, "run_ms_median": med * 1000,
           "run_ms_min": min(totals) * 1000, "run_ms_max": max(totals) * 1000,
           "per_step_ms": med * 1000 / steps}
    if server:
        out["server_run_ms_median"] = statistics.median(server) * 1000
    return out


def run_load(system, kind, p, limit):
    """Steady arrivals: `per_tick` jobs every `tick_s`, the ticks dealt round-robin to the
    producer processes, for `duration_s`; every `sample_every`-th job is sampled for its
    submit-to-start latency. Then waits (bounded) for the backlog to drain."""
    prods = Producers(p["producers"], dict(system.producer_spec(), threads=p["threads"]))
    try:
        t0 = time.time() + 0.2
        prods.send([{"op": "load", "kind": kind, "t0": t0, "tick_s": p["tick_s"], "per_tick": p["per_tick"],
                     "duration_s": p["duration_s"], "sample_every": p["sample_every"]}] * len(prods.conns))
        res = prods.results(timeout=p["duration_s"] + 120)
    finally:
        prods.close()
    submitted = sum(r["submitted"] for r in res)
    t_first = min((r["t_first"] for r in res if r["t_first"]), default=time.time())
    t_last = max((r["t_last"] for r in res if r["t_last"]), default=t_first)
    drain_deadline = time.time() + limit
    t_done, unfinished = system.wait_load_done(submitted, drain_deadline)
    samples = [s for r in res for s in r["samples"]]
    starts = system.sample_starts([jid for jid, _ in samples])
    lat = [starts.get(jid, math.inf) - t for jid, t in samples]
    out = {
        "target_rate": p["per_tick"] / p["tick_s"], "duration_s": p["duration_s"],
        "submitted": submitted, "achieved_rate": submitted / p["duration_s"],
        "submit_span_s": t_last - t_first, "late_ticks": sum(r["late_ticks"] for r in res),
        "drained_after_last_submit_s": (t_done - t_last) if t_done else None,
        "unfinished_at_limit": unfinished, "drain_limit_s": limit,
    }
    out.update(latency_summary(lat))
    return out


# --------------------------------------------------------------------------------------
# Orchestration.

def scenario_params(opts):
    f = opts.scale
    sz = lambda n, lo: max(lo, int(round(n * f)))  # noqa: E731
    return {
        "throughput": {"n": sz(50_000, 100)},
        "pickup": {"n": sz(500, 20), "warmup": 20},
        "load": {"producers": 2, "threads": 4, "tick_s": 0.005, "per_tick": 25, "duration_s": max(1.0, 5.0 * f),
                 "sample_every": 10},
        "retry": {"n": sz(10_000, 100)},
        "chain": {"steps": 10, "runs": sz(opts.chain_runs, 3)},
        "scale": {"n": sz(100_000, 200)},
    }


def run_scenario(system, scen, params, opts, rnd):
    tag = f"{system.name}-r{rnd}-{scen}"
    t_start = time.time()
    res = {"system": system.name, "round": rnd, "scenario": scen}
    try:
        system.start(tag, worker=(scen != "scale"))
        p = params[scen]
        limit = opts.limit_for(scen, p.get("n", 0))
        if scen == "throughput":
            res.update(system.throughput(p["n"], limit))
        elif scen == "pickup":
            res.update(system.pickup(p["n"], p["warmup"], limit))
        elif scen == "load":
            res.update(system.load(p, limit))
        elif scen == "retry":
            res.update(system.retry(p["n"], limit))
        elif scen == "chain":
            res.update(system.chain(p["steps"], p["runs"], limit))
        elif scen == "scale":
            res.update(system.scale(p["n"], limit))
    except BenchTimeout as e:
        res.update({"error": str(e), "timeout": True})
        res.update({k: v for k, v in e.partial.items() if k not in res})
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - one failed scenario does not stop the bench
        res.update({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        try:
            system.stop()
        except Exception as e:  # noqa: BLE001
            log(f"warning: stopping {system.name} failed: {e}")
    res["wall_seconds"] = time.time() - t_start
    return res


def short(res):
    if "error" in res:
        return ("TIMEOUT " if res.get("timeout") else "ERROR ") + res["error"].splitlines()[0][:160]
    s = res["scenario"]
    if s in ("throughput", "retry"):
        return f"{res['jobs_per_s']:,.0f} jobs/s ({res['seconds']:.2f} s)"
    if s == "pickup":
        return f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms"
    if s == "load":
        return (f"{res['achieved_rate']:,.0f}/s achieved, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
                f"unfinished samples {res['unfinished_samples']}")
    if s == "chain":
        return f"{res['per_step_ms']:.2f} ms/step"
    if s == "scale":
        return f"{res['jobs_per_s']:,.0f} jobs/s, drain {res['drain_jobs_per_s']:,.0f}/s, peak {res['peak_mb']:.0f} MB"
    return ""


def run_cmd(cmd, **kw):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kw)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


def machine_info(opts):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import celery  # noqa: PLC0415
    import kombu  # noqa: PLC0415
    import redis  # noqa: PLC0415

    # Only what the binary is built from (crates/, the manifests) counts as a change.
    dirty = run_cmd(["git", "--no-optional-locks", "-C", ROOT, "status", "--porcelain", "--untracked-files=normal",
                     "--", "crates", "Cargo.toml", "Cargo.lock"])
    info = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": run_cmd(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "ferry_git_commit": run_cmd(["git", "--no-optional-locks", "-C", ROOT, "rev-parse", "HEAD"]),
        "ferry_tree_dirty": bool(dirty),
        "ferry_tree_changes": dirty.splitlines() if dirty else [],
        "ferry_binary": opts.ferry_bin,
        "ferry_version": run_cmd([opts.ferry_bin, "--version"]),
        "ferry_build_seconds": opts.build_seconds,
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": run_cmd(["redis-server", "--version"]),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        info["postgresql"] = psql(opts.pg_url, "SHOW server_version")
        info["postgresql_settings"] = dict(
            line.split("|", 1) for line in psql(
                opts.pg_url,
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit','fsync','shared_buffers','max_connections','wal_level')").splitlines())
    except Exception as e:  # noqa: BLE001
        info["postgresql"] = f"unavailable ({e})"
    return info


# --------------------------------------------------------------------------------------
# Summary: medians over the rounds, spread, ratios to the best peer.

METRICS = [
    # scenario, key, label, better, format
    ("throughput", "jobs_per_s", "1. throughput, {throughput} no-op jobs (jobs/s)", "high", "{:,.0f}"),
    ("pickup", "p50_ms", "2. pickup latency, idle, p50 (ms)", "low", "auto"),
    ("pickup", "p99_ms", "2. pickup latency, idle, p99 (ms)", "low", "auto"),
    ("load", "achieved_rate", "3. under load: arrivals achieved (jobs/s; target {load_rate:,.0f})", "high", "{:,.0f}"),
    ("load", "p50_ms", "3. under load: pickup p50 (ms)", "low", "auto"),
    ("load", "p99_ms", "3. under load: pickup p99 (ms)", "low", "auto"),
    ("load", "drained_after_last_submit_s", "3. under load: backlog drained after last arrival (s)", "low", "auto"),
    ("retry", "seconds", "4. retry storm, {retry} jobs × 3 attempts: time to all succeeded (s)", "low", "auto"),
    ("chain", "per_step_ms", "5. 10-step chain: time per step (ms; median run / 10)", "low", "auto"),
    ("scale", "jobs_per_s", "6. scale, {scale} waiting: jobs/s over the first fifth, from resume / worker start", "high", "{:,.0f}"),
    ("scale", "drain_jobs_per_s", "6. scale: jobs/s over the first fifth, from first pickup", "high", "{:,.0f}"),
    ("scale", "peak_mb", "6. scale: peak memory (MiB; see notes)", "low", "{:,.0f}"),
    ("scale", "pss_mb_at_end", "6. scale: memory at the end, PSS (MiB; shared pages split)", "low", "{:,.0f}"),
    ("scale", "enqueue_seconds", "6. scale: time to enqueue the backlog (s)", "low", "auto"),
]


def metric_values(results, system, scen, key):
    vals, failed, unfinished = [], 0, False
    for r in results:
        if r["system"] != system or r["scenario"] != scen:
            continue
        if "error" in r and key not in r:
            failed += 1
            continue
        v = r.get(key)
        if v is None:
            if r.get(key + "_unfinished") or (key == "drained_after_last_submit_s" and r.get("unfinished_at_limit")):
                vals.append(math.inf)
                unfinished = True
            else:
                failed += 1
            continue
        vals.append(float(v))
    return vals, failed, unfinished


def summarize(results, systems, params):
    fmt_ctx = {"throughput": f"{params['throughput']['n']:,}", "retry": f"{params['retry']['n']:,}",
               "scale": f"{params['scale']['n']:,}",
               "load_rate": params["load"]["per_tick"] / params["load"]["tick_s"]}
    rows = []
    for scen, key, label, better, fmt in METRICS:
        row = {"scenario": scen, "metric": key, "label": label.format(**fmt_ctx), "better": better, "systems": {}}
        for s in systems:
            vals, failed, unfinished = metric_values(results, s, scen, key)
            if not vals:
                row["systems"][s] = {"median": None, "min": None, "max": None, "rounds": 0, "failed": failed}
                continue
            row["systems"][s] = {
                "median": statistics.median(vals), "min": min(vals), "max": max(vals),
                "rounds": len(vals), "failed": failed, "values": vals, "unfinished": unfinished,
            }
        peers = [(s, row["systems"][s]["median"]) for s in systems
                 if s in PEERS and row["systems"][s]["median"] is not None]
        if peers:
            best = (max if better == "high" else min)(peers, key=lambda x: x[1])
            row["best_peer"] = best[0]
            for f in ("ferry-sqlite", "ferry-postgres"):
                m = row["systems"].get(f, {}).get("median")
                if m is not None and best[1] not in (0, None) and not math.isinf(best[1]) and not math.isinf(m):
                    row[f"ratio_{f}"] = m / best[1]
        rows.append(row)
    return rows


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def fmt_num(fmt, v, bound=None):
    if v is None:
        return "—"
    if math.isinf(v):
        return f"> {bound}" if bound else "unfinished"
    if fmt == "auto":  # times: three significant figures or so, thousands separated
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return fmt.format(v)


def markdown(rows, systems, info, settings, params, opts, wall, results_all):
    out = []
    out.append(f"# Ferry vs Celery, side by side ({dt.datetime.now().strftime('%Y-%m-%d %H:%M')})")
    out.append("")
    out.append(f"Machine: {info['nproc']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, "
               f"Linux {info['kernel']}, {info['os']}. {info['ferry_version'].capitalize()} at "
               f"{info['ferry_git_commit'][:12]}{' (working tree with uncommitted changes)' if info['ferry_tree_dirty'] else ''}; "
               f"Celery {info['celery']} (kombu {info['kombu']}), redis-py {info['redis_py']}, "
               f"{info['redis_server'].split(' sha=')[0]}, PostgreSQL {info.get('postgresql')}, Python {info['python']}.")
    out.append("")
    out.append(f"{opts.rounds} rounds, systems in alternation within each round, a fresh instance per system, "
               f"round and scenario. Each cell: median over the rounds (min–max). Ratio columns: Ferry ÷ the best "
               f"peer's median for that row (best = highest where ↑, lowest where ↓), so > 1 is better for ↑ rows "
               f"and < 1 is better for ↓ rows. Total wall time {wall / 60:.1f} min"
               f"{'' if opts.scale == 1 else f'; --scale {opts.scale}'}.")
    out.append("")
    out.append("Settings (every system, concurrency " f"{opts.concurrency}; all on the same {info['nproc']} cores "
               "as the load generator):")
    out.append("")
    for s in systems:
        st = settings[s]
        if s.startswith("ferry"):
            desc = (f"one `ferry server` process (API + embedded workers), {st['backend']}"
                    + (f" (fresh database on the local server, synchronous_commit="
                       f"{info.get('postgresql_settings', {}).get('synchronous_commit', '?')})" if st['backend'] == 'postgres'
                       else " (fresh data dir, WAL)")
                    + f", queue `default` concurrency {st['queues.default.concurrency']}, max_depth 0, "
                      "durability `process` (acknowledged = committed), other settings default (poll_ms 1000); "
                      "bulk submits via `POST /v1/jobs/batch` (1000 per request, 4 client threads)")
        else:
            desc = (f"Celery worker, `-P {st['pool']} -c {st['concurrency']}`, task_acks_late=True, "
                    "worker_prefetch_multiplier=4 (default), JSON, broker = Redis db 0, results = Redis db 1 "
                    "(own redis-server, default persistence: RDB snapshots, no AOF), `--without-gossip "
                    "--without-mingle --without-heartbeat`; bulk backlogs (throughput, scale) are one "
                    "apply_async message copied with fresh ids and LPUSHed in pipelines (Celery has no "
                    f"batch publish), the retry storm is sent by apply_async from {opts.celery_producers} "
                    "producer processes")
        out.append(f"- **{s}**: {desc}.")
    lp = params["load"]
    out.append(f"- Load scenario: {lp['per_tick']} jobs every {lp['tick_s'] * 1000:.0f} ms "
               f"({lp['per_tick'] / lp['tick_s']:,.0f}/s) for {lp['duration_s']:.0f} s from {lp['producers']} "
               f"producer processes × {lp['threads']} sender threads, ticks dealt round-robin (Ferry: one batch request per tick; Celery: {lp['per_tick']} apply_async per tick); "
               f"every {lp['sample_every']}th job sampled; waits at most {opts.limit_for('load', 0):.0f} s for the "
               "backlog, a sample not started by then counts as unfinished (“> limit”).")
    out.append("")
    head = ["figure"] + systems
    ferries = [f for f in ("ferry-sqlite", "ferry-postgres") if f in systems]
    have_peer = any(s in PEERS for s in systems)
    if have_peer:
        head += [f"{f} ÷ best peer" for f in ferries]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for row in rows:
        fmt = next(m[4] for m in METRICS if m[0] == row["scenario"] and m[1] == row["metric"])
        arrow = "↑" if row["better"] == "high" else "↓"
        cells = [f"{row['label']} {arrow}"]
        bound = f"{opts.limit_for('load', 0):.0f} s" if row["scenario"] == "load" else None
        for s in systems:
            c = row["systems"].get(s, {})
            if c.get("median") is None:
                cells.append("timeout/error" if c.get("failed") else "—")
                continue
            txt = fmt_num(fmt, c["median"], bound)
            if c["rounds"] > 1:
                txt += f" ({fmt_num(fmt, c['min'], bound)}–{fmt_num(fmt, c['max'], bound)})"
            if c.get("failed"):
                txt += f" [{c['failed']} failed]"
            cells.append(txt)
        if have_peer:
            for f in ferries:
                r = row.get(f"ratio_{f}")
                cells.append(fmt_ratio(r))
        out.append("| " + " | ".join(cells) + " |")
    load_row = next((r for r in rows if r["scenario"] == "load" and r["metric"] == "achieved_rate"), None)
    if load_row:
        target = params["load"]["per_tick"] / params["load"]["tick_s"]
        short_of = [f"{s} ({c['median']:,.0f}/s)" for s, c in load_row["systems"].items()
                    if c.get("median") is not None and c["median"] < 0.95 * target]
        if short_of:
            out.append("")
            out.append(f"Under load, these systems' producers could not submit the target {target:,.0f}/s, so their "
                       f"latency under load is at the rate they reached: {', '.join(short_of)}. The producers "
                       "share the two cores with the system under test; a Celery producer pays one apply_async "
                       "(a Redis LPUSH plus the result channel's SUBSCRIBE/UNSUBSCRIBE) per job, Ferry's one HTTP "
                       "request per tick of 25 jobs.")
    failures = [r for r in results_all if "error" in r]
    if failures:
        out.append("")
        out.append("Failures and timeouts: " + "; ".join(
            f"{r['system']} round {r['round']} {r['scenario']}: {r['error'].splitlines()[0][:200]}" for r in failures))
    out.append("")
    out.append(f"Time limits (a scenario past its limit is reported, not waited for): bulk scenarios below 100 "
               f"executions/s, pickup and chain {opts.limit_for('pickup', 0):.0f} s, the load scenario's backlog "
               f"{opts.limit_for('load', 0):.0f} s after the last arrival.")
    out.append("")
    out.append("Notes: pickup = the job's start (Ferry: first attempt's `started_at`, stamped by its store; "
               "Celery: `time.time()` at the start of the task body) minus the client's `time.time()` just before "
               "sending. Celery's peak memory is the sum of VmHWM over the worker's processes (for prefork this "
               "counts pages the children share with the parent once per process) plus redis-server's VmHWM; "
               "Ferry's is the server's VmHWM (for PostgreSQL the database server's memory is not included; the "
               "JSON has the VmHWM of its backends). Scale: Ferry's time starts at the resume request, which its "
               "workers apply within poll_ms (1 s); Celery's at the worker's launch, boot included; the "
               "“from first pickup” row removes both.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help="comma-separated subset of " + ",".join(SYSTEMS) + ", or `all` (default: "
                    + ",".join(DEFAULT_SYSTEMS) + "; celery-prefork adds about 25 minutes)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every job count (and the load duration)")
    ap.add_argument("--concurrency", type=int, default=64, help="Ferry's queue concurrency = Celery's pool size")
    ap.add_argument("--chain-runs", type=int, default=20, help="timed chain runs per round (after one warm-up)")
    ap.add_argument("--celery-producers", type=int, default=2, help="processes submitting to Celery")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the JSON and Markdown")
    ap.add_argument("--ferry-bin", default=os.path.join(ROOT, "target", "release", "ferry"))
    ap.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
                    help="admin connection; a fresh database is created (and dropped) beside it")
    ap.add_argument("--time-limit-factor", type=float, default=1.0, help="multiplies every scenario's time limit")
    ap.add_argument("--render", metavar="JSON", help="only re-make the Markdown table of an earlier run from its JSON")
    opts = ap.parse_args()
    t_start = time.time()
    # bench/run exports when it started, so that the wall time includes the build.
    t_command = float(os.environ.get("BENCH_T0", t_start))
    opts.build_seconds = float(os.environ["BENCH_BUILD_SECONDS"]) if os.environ.get("BENCH_BUILD_SECONDS") else None
    if opts.scale <= 0 or opts.rounds < 1:
        ap.error("--scale must be > 0 and --rounds >= 1")
    if opts.systems == "all":
        opts.systems = ",".join(SYSTEMS)
    systems = [s.strip() for s in opts.systems.split(",") if s.strip()]
    scenarios = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    if any(s.startswith("ferry") for s in systems) and not os.access(opts.ferry_bin, os.X_OK):
        ap.error(f"no Ferry binary at {opts.ferry_bin} (build it, or pass --ferry-bin)")

    # Time limits: generous bounds so that a stuck system is reported, not waited for.
    # Throughput-like scenarios time out below 100 executions/s (and never before 60 s).
    def limit_for(scen, n):
        f = opts.time_limit_factor
        if scen in ("throughput", "retry", "scale", "submit"):
            per = {"retry": 3}.get(scen, 1)
            return f * max(60.0, n * per / 100.0)
        return f * {"pickup": 180.0, "load": 60.0, "chain": 180.0}.get(scen, 120.0)

    opts.limit_for = limit_for
    if opts.render:
        with open(opts.render) as f:
            doc = json.load(f)
        for k, v in doc["options"].items():
            if k not in ("render", "out"):
                setattr(opts, k, v)
        systems = [s.strip() for s in opts.systems.split(",") if s.strip()]
        rows = summarize(doc["results"], systems, doc["params"])
        md = markdown(rows, systems, doc["machine"], doc["settings"], doc["params"], opts, doc["wall_seconds"],
                      doc["results"])
        md_path = os.path.splitext(opts.render)[0] + ".md"
        with open(md_path, "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {md_path}")
        return
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    run_dir = tempfile.mkdtemp(prefix="ferry-bench-")
    TEMP_DIRS.append(run_dir)
    os.makedirs(opts.out, exist_ok=True)

    params = scenario_params(opts)
    info = machine_info(opts)
    instances = {s: (Ferry if s.startswith("ferry") else CeleryPeer)(s, opts, run_dir) for s in systems}
    settings = {s: instances[s].settings() for s in systems}
    log(f"{len(systems)} systems × {len(scenarios)} scenarios × {opts.rounds} rounds, scale {opts.scale}, "
        f"concurrency {opts.concurrency}; temp dir {run_dir}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = os.path.join(opts.out, f"bench-{stamp}.json")
    md_path = os.path.join(opts.out, f"bench-{stamp}.md")
    results = []

    def dump(final=False):
        doc = {"machine": info, "settings": settings, "params": params,
               "options": {k: v for k, v in vars(opts).items() if k != "limit_for"},
               "complete": final, "wall_seconds": time.time() - t_command,
               "driver_seconds": time.time() - t_start, "results": results}
        if final:
            doc["summary"] = summarize(results, systems, params)
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(tmp, json_path)

    try:
        for rnd in range(1, opts.rounds + 1):
            for scen in scenarios:
                # Alternate the order of the systems from round to round as well.
                order = systems if rnd % 2 else list(reversed(systems))
                for s in order:
                    res = run_scenario(instances[s], scen, params, opts, rnd)
                    results.append(res)
                    log(f"round {rnd} {scen:<10} {s:<15} {short(res)}  [{res['wall_seconds']:.1f} s]")
                    dump()
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        wall = time.time() - t_command
        dump(final=True)
        rows = summarize(results, systems, params)
        md = markdown(rows, systems, info, settings, params, opts, wall, results)
        with open(md_path, "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {md_path} and {json_path}")
        cleanup()


if __name__ == "__main__":
    main()
