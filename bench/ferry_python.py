"""Ferry with a Python task: a `ferry server` (SQLite, or a fresh PostgreSQL database),
started exactly as ferry-sqlite / ferry-postgres start theirs, and one remote worker
process of Ferry's Python SDK (`python -m ferry worker bench_py_tasks:app`,
bench/py_worker/) serving the bench's own kinds. The figures to set beside Celery's: a
Python function run by Ferry against one run by Celery."""

import json
import os
import subprocess
import sys
import time

from common import HERE, BenchTimeout, latency_summary
from ferry import Ferry, ferry_env
from processes import spawn, stop_process, tail

WORKER_DIR = os.path.join(HERE, "py_worker")
WORKER_APP = "bench_py_tasks:app"
PY_NOOP = {"kind": "bench_py_noop"}
PY_STAMP = {"kind": "bench_py_stamp"}
PY_KINDS = ("bench_py_noop", "bench_py_stamp", "bench_py_http_get")
# The server's longest wait (README, "Waiting for a result": at most 60 s).
WAIT = "30s"


def sdk_info():
    """What the worker would run, asked of the interpreter itself, in the worker's own
    directory and path: the SDK's version and location, and the app's default concurrency
    (the SDK's `Worker` default). Raises with pip's hint when the SDK is not installed."""
    code = ("import json, sys, ferry, bench_py_tasks as m; print(json.dumps({'version': ferry.__version__, "
            "'path': ferry.__file__, 'python': sys.version.split()[0], 'default_concurrency': m.app.concurrency, "
            "'kinds': sorted(m.app.tasks)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=WORKER_DIR, env=worker_env(),
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("Ferry's Python SDK does not import in bench/.venv (bash bench/run installs it from "
                           f"bench/requirements.txt):\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def worker_env():
    """Ferry's environment (no FERRY_* from the driver, so no FERRY_SERVER or FERRY_TOKEN),
    with bench/py_worker the only PYTHONPATH entry: bench/ferry.py must not hide the SDK."""
    return dict(ferry_env(), PYTHONPATH=WORKER_DIR, PYTHONUNBUFFERED="1")


class FerryPython(Ferry):
    SCENARIOS = ("throughput", "pickup", "pickup-http")

    def __init__(self, name, opts, run_dir):
        super().__init__(name, opts, run_dir)
        self.backend = "postgres" if name.endswith("-postgres") else "sqlite"
        self.split = False
        self.session = None
        self.sdk = sdk_info()

    def concurrency(self):
        return self.sdk["default_concurrency"] if self.default_concurrency else self.opts.concurrency

    def settings(self):
        s = super().settings()
        server_default_concurrency = s["queues.default.concurrency"]
        for k in ("submission", "pickup_wait", "queues.default.concurrency", "concurrency_set_by"):
            s.pop(k)
        s.update({
            "process": ("one `ferry server` process (HTTP API, the remote kinds' engine) and one Python worker "
                        "process of Ferry's Python SDK (one session)"),
            "worker": "python",
            "worker_command": f"{sys.executable} -m ferry worker {WORKER_APP} --url URL --log-level WARNING"
                              + ("" if self.default_concurrency else f" --concurrency {self.opts.concurrency}"),
            "worker_kinds": list(PY_KINDS),
            "worker_queue": "remote (the default of remote kinds; not in the configuration: no depth cap, "
                            "no concurrency of its own)",
            "sdk_version": self.sdk["version"],
            "sdk_path": os.path.dirname(self.sdk["path"]),
            "worker_python": self.sdk["python"],
            "concurrency": self.concurrency(),
            "concurrency_set_by": ("the SDK's default, `ferry.Worker`'s concurrency: no --concurrency"
                                   if self.default_concurrency
                                   else f"`python -m ferry worker ... --concurrency {self.opts.concurrency}`"),
            # The server's configuration is ferry-sqlite's / ferry-postgres's; its queue
            # `default` runs none of the bench's jobs here.
            "server_queues.default.concurrency": server_default_concurrency,
            "submission": "POST /v1/jobs/batch, 1000 jobs per request, 4 client threads",
            "pickup_wait": f"POST /v1/jobs?wait={WAIT} (answers with the ended job; GET /v1/jobs/{{id}}?wait= "
                           "again if the wait ends first)",
            "scenarios": list(self.SCENARIOS),
        })
        return s

    # lifecycle

    def start(self, tag, **_):
        self.session = None
        super().start(tag)
        self.start_py_worker()

    def start_py_worker(self):
        """One `python -m ferry worker` process; it is up when its session, with the
        bench's kinds, is listed by GET /v1/workers/sessions (from then on the kinds are
        accepted)."""
        cmd = [sys.executable, "-m", "ferry", "worker", WORKER_APP, "--url", self.base, "--log-level", "WARNING"]
        if not self.default_concurrency:
            cmd += ["--concurrency", str(self.opts.concurrency)]
        self.worker_log = os.path.join(self.dir, "worker.log")
        self.worker = spawn(cmd, self.worker_log, env=worker_env(), cwd=WORKER_DIR)
        deadline = time.time() + 60
        while True:
            if self.worker.poll() is not None:
                raise RuntimeError(f"python worker exited with {self.worker.returncode}:\n{tail(self.worker_log)}")
            sessions = self.call("GET", "/v1/workers/sessions")["sessions"]
            ours = [x for x in sessions if set(PY_KINDS) <= set(x.get("kinds") or {})]
            if ours:
                self.session = ours[0]
                return
            if time.time() > deadline:
                raise BenchTimeout(f"python worker's session not open within 60 s:\n{tail(self.worker_log)}")
            time.sleep(0.05)

    def stop(self):
        if self.worker is not None:
            stop_process(self.worker, grace=15)  # SIGTERM (the SDK drains and closes its session), then SIGKILL
            self.worker = None
        super().stop()

    def session_settings(self):
        """What the session told the server (its concurrency and kinds' queues), for the
        results."""
        s = self.session or {}
        return {"session_concurrency": s.get("concurrency"), "session_kinds": s.get("kinds")}

    # scenarios

    def noop_backlog(self, n):
        return self.bulk_submit(PY_NOOP, n)

    def throughput(self, n, limit):
        out = super().throughput(n, limit)
        out.update(self.session_settings())
        return out

    def pickup(self, n, warmup, limit):
        """As Celery's: from the client's time.time() just before the submission to the
        task body's own time.time() (the stamp job's output), one job at a time, each
        submitted once the previous one ended. The submission waits for the end itself
        (`?wait=`), so nothing polls the server meanwhile."""
        deadline = time.time() + limit
        lat = []
        for i in range(warmup + n):
            time.sleep(self.opts.pickup_gap_ms / 1000)
            what = f"pickup: {i} of {warmup + n} jobs done at the time limit"
            t_sub = time.time()
            job = self.call("POST", f"/v1/jobs?wait={WAIT}", PY_STAMP)
            job = self.await_job(job, deadline, what)
            if i >= warmup:
                lat.append(float(job["output"]) - t_sub)
        out = latency_summary(lat)
        out.update(self.session_settings())
        return out

    def pickup_http(self, n, warmup, limit):
        out = super().pickup_http(n, warmup, limit)
        out.update(self.session_settings())
        return out

    def submit_get(self, url):
        return self.call("POST", "/v1/jobs", {"kind": "bench_py_http_get", "input": {"url": url}})["id"]

    def await_job(self, job, deadline, what):
        """Waits for a job (an id, or the job as a `?wait=` answered it) to end with
        `GET /v1/jobs/{id}?wait=`, woken by its end; returns it if it succeeded, raises if
        it ended otherwise, or BenchTimeout(what) past `deadline`."""
        if isinstance(job, str):
            job = {"id": job, "state": None}
        while True:
            if job["state"] == "succeeded":
                return job
            if job["state"] in ("dead", "cancelled"):
                raise RuntimeError(f"job {job['id']} ended {job['state']}: {json.dumps(job.get('error'))[:300]}")
            if time.time() > deadline:
                raise BenchTimeout(what)
            job = self.call("GET", f"/v1/jobs/{job['id']}?wait={WAIT}", timeout=90)
