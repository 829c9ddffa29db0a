"""Ferry as a system under test: one `ferry server` per scenario, SQLite or PostgreSQL, or
(ferry-postgres-split) an API-only `ferry server` and a separate `ferry worker`."""

import json
import re
import math
import os
import tempfile
import threading
import time

import http.client

from common import DEFAULT_CONCURRENCY, BenchTimeout, Http, JSON_HEADERS, latency_summary, parse_rfc3339
from processes import (create_database, drop_database, free_port, leaf_pid, psql, pss_kb, spawn, stop_process,
                       tail, vm_hwm_kb, vm_rss_kb, wait_for_line)
from producers import split
from systems import System, chain_summary, scale_window


FERRY_NOOP = {"kind": "noop"}
FERRY_FLAKY = {
    "kind": "fail",
    "input": {"type": "network", "times": 2},
    "max_attempts": 3,
    # The shortest backoff the job spec accepts (backoff.rs: multiplier >= 1,
    # max_ms >= initial_ms): retry at once.
    "backoff": {"initial_ms": 0, "max_ms": 0, "multiplier": 1, "jitter": "none"},
}
# What a queue runs at when nothing sets it: config.rs, `workers` (10) for the server's
# queues and for `ferry worker` without --concurrency.
FERRY_DEFAULT_CONCURRENCY = 10
QUEUES_GET_SAMPLES = 200  # the scale scenario's timed GET /v1/queues calls


def ferry_env():
    """The driver's environment without its FERRY_* settings (the config file and flags
    say everything), logging at `warn`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_LOG"] = "warn"
    return env


def http_get_job(url):
    """A job of the `http` kind that GETs `url` (ferry-worker's kinds/http.rs)."""
    return {"kind": "http", "input": {"url": url, "method": "GET"}}


class Ferry(System):
    STAMP_KIND = "noop"  # its attempt's `started_at` is the stamp

    def __init__(self, name, opts, run_dir):
        self.name, self.opts, self.run_dir = name, opts, run_dir
        self.backend = "postgres" if name.startswith("ferry-postgres") else "sqlite"
        self.split = name.endswith("-split")
        self.default_concurrency = opts.concurrency == DEFAULT_CONCURRENCY
        self.proc = self.worker = None
        self.db = None

    def settings(self):
        s = {
            "binary": self.opts.ferry_bin,
            "backend": self.backend,
            "process": ("one `ferry server` with `workers = 0` (HTTP API only) and one `ferry worker` process "
                        "(queue `default`)" if self.split
                        else "one `ferry server` process (HTTP API and embedded workers)"),
            "queues.default.concurrency": (FERRY_DEFAULT_CONCURRENCY if self.default_concurrency
                                           else self.opts.concurrency),
            "concurrency_default": self.default_concurrency,
            "concurrency_set_by": self.concurrency_set_by(),
            "queues.default.max_depth": 0,
            "durability": "process (default)",
            "poll_ms": 1000, "lease_ms": 30000, "heartbeat_ms": 5000,
            "log": "warn",
            "submission": "POST /v1/jobs/batch, 1000 jobs per request, 4 client threads",
            "pickup_wait": ("the job's event stream (push)" if self.opts.pickup_wait == "push"
                            else "GET /v1/jobs/{id} every 0.5 ms (poll)"),
            "pickup_gap_ms": self.opts.pickup_gap_ms,
        }
        if self.backend == "postgres":
            s["database"] = "a fresh database per scenario on the local server (" + self.opts.pg_url + ")"
            s["database_max_connections"] = 16
        else:
            s["data_dir"] = "a fresh temporary directory per scenario"
        return s

    def concurrency_set_by(self):
        """Where the queue's concurrency comes from, in words, for the JSON."""
        if self.default_concurrency:
            return ("Ferry's default, no --concurrency for `ferry worker`" if self.split
                    else "Ferry's default, no `concurrency` line for the queue")
        return (f"`ferry worker --concurrency {self.opts.concurrency}`" if self.split
                else f"`concurrency = {self.opts.concurrency}` for queue `default`")

    # lifecycle

    def start(self, tag, **_):
        self.dir = tempfile.mkdtemp(prefix=f"{tag}-", dir=self.run_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.sse = None  # the pickup scenario's event-stream connection
        url = None
        if self.backend == "postgres":
            self.db, url = create_database(self.opts.pg_url)
        cfg = self.write_config(url)
        self.log_path = os.path.join(self.dir, "ferry.log")
        self.proc = spawn([self.opts.ferry_bin, "server", "--config", cfg], self.log_path, env=ferry_env())
        self.s = Http()
        self.wait_ready()
        if self.split:
            self.start_worker(url)

    def write_config(self, database_url):
        """The server's ferry.toml: a fresh data directory, PostgreSQL if given, the queue
        uncapped, its concurrency unless the run is at Ferry's defaults, and no embedded
        workers for the split deployment (its worker is a process of its own)."""
        lines = [
            f'listen = "127.0.0.1:{self.port}"',
            f'data_dir = "{self.dir}/data"',
            "shutdown_grace_ms = 2000",
        ]
        if database_url:
            lines.append(f'database_url = "{database_url}"')
        if self.split:
            lines.append("workers = 0")
        lines += ["", "[queues.default]"]
        if not (self.split or self.default_concurrency):
            lines.append(f"concurrency = {self.opts.concurrency}")
        lines += ["max_depth = 0", ""]
        cfg = os.path.join(self.dir, "ferry.toml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines))
        return cfg

    def start_worker(self, database_url):
        """The split deployment's worker, started once the server (which migrates the
        database) is ready; it is up when it prints its health address."""
        cmd = [self.opts.ferry_bin, "worker", "--database", database_url, "--queue", "default",
               "--listen", "127.0.0.1:0"]
        if not self.default_concurrency:
            cmd += ["--concurrency", str(self.opts.concurrency)]
        env = dict(ferry_env(), FERRY_NODE="bench-worker")
        self.worker_log = os.path.join(self.dir, "worker.log")
        self.worker = spawn(cmd, self.worker_log, env=env, cwd=self.dir)
        line = wait_for_line(self.worker, self.worker_log, "http://", 60, "ferry worker")
        self.worker_base = re.search(r"http://[^\s/)]+", line).group(0)

    def wait_ready(self):
        """Waits (at most 60 s) for the server's /readyz to answer 200."""
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
        for p in (self.worker, self.proc):
            if p is not None:
                stop_process(p)
        self.proc = self.worker = None
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

    def finished(self):
        """Jobs the workers have finished, from `ferry_jobs_finished_total` on the /metrics
        of the process that runs them (the server, or the split deployment's worker)."""
        base = self.worker_base if self.split else self.base
        r = self.s.request("GET", base + "/metrics", timeout=60)
        total = 0.0
        for line in r.text.splitlines():
            if line.startswith("ferry_jobs_finished_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def counts(self):
        # As any client gets them: cheap to poll (fresh counts of a deep queue would take
        # the server's time from the run), and fresh once few jobs are left.
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

    def noop_backlog(self, n):
        return self.bulk_submit(FERRY_NOOP, n)

    def pickup(self, n, warmup, limit):
        deadline = time.time() + limit
        lat = []
        for i in range(warmup + n):
            time.sleep(self.opts.pickup_gap_ms / 1000)
            t_sub = time.time()
            jid = self.call("POST", "/v1/jobs", FERRY_NOOP)["id"]
            what = f"pickup: {i} of {warmup + n} jobs done at the time limit"
            if self.opts.pickup_wait == "push":
                started = self.await_started(jid, deadline, what)
            else:
                started = parse_rfc3339(self.await_job(jid, deadline, what)["attempts"][0]["started_at"])
            if i >= warmup:
                lat.append(started - t_sub)
        return latency_summary(lat)

    def await_started(self, jid, deadline, what):
        """Waits for the job to succeed on its event stream (Server-Sent Events, pushed by
        the server as the events commit, as Celery's client waits on Redis pub/sub) and
        returns its first attempt's start (the `started` event's time, the attempt's
        `started_at`): `--pickup-wait push`. Nothing polls the system meanwhile, which
        also means nothing keeps its threads awake (see BENCHMARKS.md)."""
        if self.sse is None:
            self.sse = http.client.HTTPConnection(self.base.removeprefix("http://"))
        self.sse.timeout = max(1.0, deadline - time.time())
        started, final = None, None
        try:
            self.sse.request("GET", f"/v1/jobs/{jid}/events", headers={"Accept": "text/event-stream"})
            r = self.sse.getresponse()
            for line in iter(r.readline, b""):
                if line.startswith(b"data:"):
                    ev = json.loads(line[5:])
                    if ev["type"] == "started" and started is None:
                        started = parse_rfc3339(ev["at"])
                    if ev["type"] in ("succeeded", "dead", "cancelled"):
                        final = ev["type"]
            r.read()
        except (http.client.HTTPException, OSError) as e:
            self.sse.close()
            self.sse = None
            if time.time() > deadline:
                raise BenchTimeout(what) from e
            raise
        if final != "succeeded":
            raise RuntimeError(f"job {jid} ended {final}")
        return started

    def submit_get(self, url):
        return self.call("POST", "/v1/jobs", http_get_job(url))["id"]

    def await_job(self, jid, deadline, what):
        """Polls the job every 0.5 ms until it succeeded, and returns it; raises if it
        ended otherwise, or BenchTimeout(what) past `deadline`."""
        while True:
            job = self.call("GET", f"/v1/jobs/{jid}")
            if job["state"] == "succeeded":
                return job
            if job["state"] in ("dead", "cancelled"):
                raise RuntimeError(f"job {jid} ended {job['state']}")
            if time.time() > deadline:
                raise BenchTimeout(what)
            time.sleep(0.0005)

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
        """The deep-queue throughput (see README), and beside it what the backlog costs the
        server: its RSS empty and with the backlog queued, and GET /v1/queues timed while
        the backlog waits. For the split deployment these are the API server's; the
        worker's peak is in peak_detail."""
        server = leaf_pid(self.proc)
        rss_empty = vm_rss_kb(server)
        self.call("PUT", "/v1/queues/default", {"paused": True})
        time.sleep(1.5)  # workers apply queue settings within poll_ms (1 s)
        t_e0, t_e1 = self.bulk_submit(FERRY_NOOP, n)
        rss_queued = vm_rss_kb(server)
        waiting, _ = self.counts()
        queues_get = self.time_queues_get()
        if self.backend == "postgres":
            # Submitting a million jobs writes gigabytes of WAL: without this, the checkpoint
            # it calls for lands in some drains and not others (measured: 4,400 against
            # 9,500 jobs/s in alternate rounds), and the figure would be about that.
            psql(self.opts.pg_url, "CHECKPOINT")
        window = scale_window(n)
        t0 = time.time()
        self.call("PUT", "/v1/queues/default", {"paused": False})
        first = None
        deadline = t0 + limit
        while True:
            # The workers' own count of finished jobs: exact and cheap at any depth, where
            # counting the queue would cost the server time that the drain then lacks.
            done = self.finished()
            if first is None and done > 0:
                first = time.time()
            if done >= window:
                break
            open_ = n - done
            if time.time() > deadline:
                raise BenchTimeout(f"scale: {open_} of {n} unfinished at the time limit", unfinished=open_)
            time.sleep(0.01)
        t1 = time.time()
        hwm, pss = vm_hwm_kb(server), pss_kb(server)
        out = {
            "jobs": n, "waiting_at_resume": waiting, "enqueue_seconds": t_e1 - t_e0, "measured_jobs": window,
            "seconds": t1 - t0, "jobs_per_s": window / (t1 - t0),
            "first_pickup_after_s": (first or t1) - t0,
            "drain_jobs_per_s": window / (t1 - (first or t0)),
            "rss_empty_mb": rss_empty / 1024, "rss_queued_mb": rss_queued / 1024,
            "peak_mb": hwm / 1024,
            "pss_mb_at_end": pss / 1024,
            "peak_detail": {"ferry_vmhwm_kb": hwm, "ferry_pss_kb_at_end": pss},
        }
        out.update(queues_get)
        if self.split:
            out["peak_detail"]["worker_vmhwm_kb"] = vm_hwm_kb(leaf_pid(self.worker))
        if self.backend == "postgres":
            pids = psql(self.opts.pg_url, f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db}'").split()
            out["peak_detail"]["postgres_backends"] = len(pids)
            out["peak_detail"]["postgres_backends_vmhwm_kb_sum"] = sum(vm_hwm_kb(int(p)) for p in pids)
        return out

    def time_queues_get(self):
        """QUEUES_GET_SAMPLES sequential GET /v1/queues, each timed by the client
        (perf_counter around the call): what reading the counts costs with a deep backlog."""
        lat = []
        for _ in range(QUEUES_GET_SAMPLES):
            t = time.perf_counter()
            self.call("GET", "/v1/queues")
            lat.append(time.perf_counter() - t)
        return latency_summary(lat, prefix="queues_get_")
