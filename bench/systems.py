"""What the systems under test share: the base class and the scenario code common to
Ferry and Celery."""

import math
import statistics
import time

from common import BenchTimeout, latency_summary
from http_target import HttpTarget
from producers import Producers


class System:
    """What every system under test does alike. A subclass provides `wait_done(n,
    deadline, what)` (returns when n jobs finished, or raises BenchTimeout),
    `noop_backlog(n)` (submits n no-op jobs at once; returns the times it began and
    ended), `submit_get(url)` (submits one job that GETs `url`; returns its handle),
    `await_job(handle, deadline, what)` (returns when that job succeeded) and
    `STAMP_KIND`, the job the load scenario samples for its start time; `SCENARIOS` limits
    the scenarios it runs."""

    STAMP_KIND = None
    SCENARIOS = None  # the scenarios it runs (None: all); any other is reported as "n/a"

    def supports(self, scen):
        return self.SCENARIOS is None or scen in self.SCENARIOS

    def throughput(self, n, limit):
        t0, t_sub = self.noop_backlog(n)
        t1 = self.wait_done(n, t0 + limit, "throughput")
        return {"jobs": n, "seconds": t1 - t0, "jobs_per_s": n / (t1 - t0), "submit_seconds": t_sub - t0}

    def pickup_http(self, n, warmup, limit):
        """Pickup as a user sees it: from the client's clock just before the submission to
        the job's HTTP request reaching a local target, one job at a time on an idle
        system (each after the previous one succeeded). The wait for the request is on
        the target, not on the system, so nothing polls the system meanwhile."""
        deadline = time.time() + limit
        lat = []
        with HttpTarget() as target:
            for i in range(warmup + n):
                what = f"pickup-http: {i} of {warmup + n} jobs done at the time limit"
                t_sub = time.time()
                handle = self.submit_get(target.url(i))
                arrived = target.arrival(i, deadline, what)
                self.await_job(handle, deadline, what)
                if i >= warmup:
                    lat.append(arrived - t_sub)
        return latency_summary(lat)

    def load(self, p, limit):
        return run_load(self, self.STAMP_KIND, p, limit)

    def wait_load_done(self, total, deadline):
        try:
            return self.wait_done(total, deadline, "load"), None
        except BenchTimeout as e:
            return None, e.partial.get("unfinished")


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
