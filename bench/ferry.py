"""Ferry as a system under test: one `ferry server` per scenario, SQLite or PostgreSQL."""

import json
import math
import os
import tempfile
import threading
import time

import http.client

from common import BenchTimeout, Http, JSON_HEADERS, latency_summary, parse_rfc3339
from processes import (create_database, drop_database, free_port, leaf_pid, psql, pss_kb, spawn, stop_process,
                       tail, vm_hwm_kb)
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

    def noop_backlog(self, n):
        return self.bulk_submit(FERRY_NOOP, n)

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
