"""Celery as a system under test: one redis-server and one Celery worker per scenario."""

import json
import math
import os
import sys
import tempfile
import time
import uuid

from common import DEFAULT_CONCURRENCY, BenchTimeout, HERE, VENV_BIN, latency_summary
from processes import descendants, free_port, leaf_pid, pss_kb, spawn, stop_process, tail, vm_hwm_kb
from producers import Producers, split
from systems import System, chain_summary, scale_window


class CeleryPeer(System):
    STAMP_KIND = "bench.stamp"  # returns time.time() at the start of its body

    def __init__(self, name, opts, run_dir):
        self.name, self.opts, self.run_dir = name, opts, run_dir
        self.pool = name.split("-", 1)[1]
        self.default_concurrency = opts.concurrency == DEFAULT_CONCURRENCY
        self.redis = self.worker = self.app = None

    def settings(self):
        return {
            "pool": self.pool,
            "concurrency": self.concurrency(),
            "concurrency_default": self.default_concurrency,
            "concurrency_set_by": ("Celery's default without --concurrency: billiard.cpu_count(), the number of CPUs"
                                   if self.default_concurrency else f"-c {self.opts.concurrency}"),
            "broker": "redis (db 0), own redis-server per scenario",
            "result_backend": "redis (db 1), same redis-server",
            "task_acks_late": True,
            "worker_prefetch_multiplier": 4,
            "serializer": "json",
            "worker flags": "--without-gossip --without-mingle --without-heartbeat -l WARNING",
            "pickup_gap_ms": self.opts.pickup_gap_ms,
            "redis": "redis-server with its defaults (RDB snapshots 3600 1 / 300 100 / 60 10000, no AOF)",
            "submission": "bulk backlogs (throughput, scale): one apply_async message copied with fresh ids, "
                          "written by pipelined LPUSH; one at a time (retry, load): apply_async (send_task) from "
                          f"{self.opts.celery_producers} producer processes",
        }

    def concurrency(self):
        """The pool's size: the one given, or what the worker picks without --concurrency
        (billiard.cpu_count(), as celery/worker/worker.py does)."""
        if not self.default_concurrency:
            return self.opts.concurrency
        from billiard import cpu_count  # noqa: PLC0415

        return cpu_count()

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
        cmd = [os.path.join(VENV_BIN, "celery"), "-A", "celery_app", "worker", "-P", self.pool,
               "-l", "WARNING", "-n", f"bench-{os.getpid()}@%h",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if not self.default_concurrency:
            cmd += ["-c", str(self.opts.concurrency)]
        t_launch = time.time()
        self.worker = spawn(cmd, self.worker_log, env=env, cwd=HERE)
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

    def noop_backlog(self, n):
        return self.backlog("bench.noop", n)

    def pickup(self, n, warmup, limit):
        deadline = time.time() + limit
        lat = []
        for i in range(warmup + n):
            time.sleep(self.opts.pickup_gap_ms / 1000)
            t_sub = time.time()
            res = self.app.send_task("bench.stamp")
            started = res.get(timeout=max(1.0, min(30.0, deadline - time.time())))
            if time.time() > deadline:
                raise BenchTimeout(f"pickup: {i} of {warmup + n} jobs done at the time limit")
            if i >= warmup:
                lat.append(started - t_sub)
        return latency_summary(lat)

    def submit_get(self, url):
        return self.app.send_task("bench.http_get", args=[url])

    def await_job(self, res, deadline, what):
        """Waits for the task's result (Redis pub/sub); BenchTimeout(what) past `deadline`."""
        res.get(timeout=max(1.0, min(30.0, deadline - time.time())))
        if time.time() > deadline:
            raise BenchTimeout(what)

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
