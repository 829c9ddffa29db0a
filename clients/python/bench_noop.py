"""No-op remote jobs through a Python worker: throughput and pickup latency.

    FERRY_BIN=target/release/ferry .venv/bin/python clients/python/bench_noop.py -n 5000
    .venv/bin/python clients/python/bench_noop.py --url http://127.0.0.1:7700 -n 2000

Starts a `ferry server` from `FERRY_BIN` (temporary SQLite data directory, free loopback
port) unless `--url` names a running one, then a Python worker process
(`python -m ferry worker bench_noop:app`, default concurrency 10 unless `--concurrency`)
serving the kind `py_bench_noop`, submits N jobs of it with `POST /v1/jobs/batch`
(`--batch` per request), and waits for them all.

Prints:
- throughput: N / (last job's `finished_at` − first job's `created_at`), server times;
- pickup latency p50/p90/p99/max: "node's claim", the attempt's `started_at` − the job's
  `run_at` (when the node's engine claimed the job for the sessions' slots, before a
  lease hands it over), and "in Python": the worker's own clock when the task function
  started − `run_at` (what a task really waits: claim, lease, transfer, dispatch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ferry  # noqa: E402

KIND = "py_bench_noop"

# The worker's app (imported by the worker process as `bench_noop:app`).
app = ferry.Worker(use_default_registry=False)


@app.task(KIND, queue="py_bench")
def noop(input: Any, ctx: ferry.Context) -> Dict[str, Any]:
    return {"t": time.time()}


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def ts(text: str) -> float:
    """An RFC 3339 time as a POSIX timestamp (nanosecond fractions kept to microseconds)."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, zone = m.groups()
    zone = "+00:00" if zone == "Z" else zone
    when = dt.datetime.fromisoformat(base + zone)
    return when.timestamp() + (float("0." + frac) if frac else 0.0)


def pct(values: List[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Any, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_server(binary: str, tmp: str) -> "tuple[subprocess.Popen[bytes], str]":
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_LOG"] = "warn"
    proc = subprocess.Popen([binary, "server", "--listen", f"127.0.0.1:{port}", "--data-dir",
                             os.path.join(tmp, "data")], env=env, stdin=subprocess.DEVNULL,
                            stdout=open(os.path.join(tmp, "server.log"), "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return True
        except OSError:
            return proc.poll() is not None

    wait_until("the server", up, 30)
    if proc.poll() is not None:
        raise SystemExit(f"the server exited: see {tmp}/server.log")
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="jobs (default 2000)")
    ap.add_argument("--url", help="a running server (default: start one from FERRY_BIN)")
    ap.add_argument("--token", help="a token (FERRY_TOKEN)")
    ap.add_argument("--concurrency", type=int, help="the worker's concurrency (default: the Worker's, 10)")
    ap.add_argument("--batch", type=int, default=1000, help="jobs per POST /v1/jobs/batch (default 1000)")
    ap.add_argument("--idle", type=int, default=200,
                    help="jobs then submitted one at a time to an idle worker, for pickup latency (default 200)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferry-bench-noop-")
    server: Optional[subprocess.Popen[bytes]] = None
    if args.url:
        url = args.url
    else:
        binary = os.environ.get("FERRY_BIN")
        if not binary:
            raise SystemExit("set FERRY_BIN to a ferry binary, or pass --url")
        server, url = start_server(binary, tmp)

    worker_log = os.path.join(tmp, "worker.log")
    cmd = [sys.executable, "-m", "ferry", "worker", "bench_noop:app", "--url", url, "--log-level", "WARNING"]
    if args.concurrency:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.token:
        cmd += ["--token", args.token]
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    worker = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=open(worker_log, "wb"),
                              stderr=subprocess.STDOUT)
    try:
        with ferry.Client(url, args.token, timeout=120) as c:
            # The kind exists once the worker's session registered it.
            def registered() -> bool:
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited: {open(worker_log).read()}")
                try:
                    c.submit(KIND, {"warm": True})
                    return True
                except ferry.FerryError as e:
                    if e.status == 400:
                        return False
                    raise

            wait_until("the worker's session", registered, 30)
            ids: List[str] = []
            t0 = time.monotonic()
            for start in range(0, args.n, args.batch):
                specs = [ferry.job_spec(KIND, {"i": i}) for i in range(start, min(args.n, start + args.batch))]
                ids += [a["id"] for a in c.submit_batch(specs)]
            submitted = time.monotonic() - t0
            jobs = [c.wait(i, timeout=600) for i in ids]
            wall = time.monotonic() - t0
            # Pickup by an idle worker: one job at a time, each submitted once the last ended.
            idle = [c.submit_and_wait(KIND, {"idle": i}, timeout=60) for i in range(args.idle)]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    bad = [j for j in jobs + idle if j["state"] != "succeeded"]
    if bad:
        print(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}", file=sys.stderr)
        return 1
    first = min(ts(j["created_at"]) for j in jobs)
    last = max(ts(j["finished_at"]) for j in jobs)
    concurrency = args.concurrency or app.concurrency
    print(f"{args.n} no-op remote jobs, Python worker concurrency {concurrency}, batches of {args.batch}")
    print(f"  submitted in {submitted:.2f} s; all ended {wall:.2f} s after the first submission")
    print(f"  throughput: {args.n / (last - first):.0f} jobs/s (first created_at to last finished_at)")

    def pickups(title: str, sample: List[Dict[str, Any]]) -> None:
        leased = [(ts(j["attempts"][-1]["started_at"]) - ts(j["run_at"])) * 1000 for j in sample]
        in_python = [(j["output"]["t"] - ts(j["run_at"])) * 1000 for j in sample]
        print(f"  {title}:")
        for name, values in (("node's claim", leased), ("in Python", in_python)):
            print(f"    pickup ({name}): p50 {pct(values, 50):.1f} ms, p90 {pct(values, 90):.1f} ms, "
                  f"p99 {pct(values, 99):.1f} ms, max {max(values):.1f} ms")

    pickups(f"the {args.n} jobs submitted at once (includes waiting behind the backlog)", jobs)
    if idle:
        pickups(f"{len(idle)} jobs one at a time to an idle worker", idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
