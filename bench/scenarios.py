"""The scenarios: their parameters, running one against one system, a one-line result."""

import time
import traceback

from common import BenchTimeout, log


def scenario_params(opts):
    f = opts.scale
    sz = lambda n, lo: max(lo, int(round(n * f)))  # noqa: E731
    return {
        "throughput": {"n": sz(50_000, 100)},
        "pickup": {"n": sz(500, 20), "warmup": 20},
        "pickup-http": {"n": sz(500, 20), "warmup": 20},
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
    if not system.supports(scen):
        # Not run: nothing is started, and the table says "n/a".
        res.update({"skipped": True, "wall_seconds": 0.0,
                    "reason": f"not measured for {system.name} (it runs {', '.join(system.SCENARIOS)})"})
        return res
    try:
        system.start(tag, worker=(scen != "scale"))
        p = params[scen]
        limit = opts.limit_for(scen, p.get("n", 0))
        if scen == "throughput":
            res.update(system.throughput(p["n"], limit))
        elif scen == "pickup":
            res.update(system.pickup(p["n"], p["warmup"], limit))
        elif scen == "pickup-http":
            res.update(system.pickup_http(p["n"], p["warmup"], limit))
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
    if res.get("skipped"):
        return "n/a (" + res["reason"] + ")"
    if "error" in res:
        return ("TIMEOUT " if res.get("timeout") else "ERROR ") + res["error"].splitlines()[0][:160]
    s = res["scenario"]
    if s in ("throughput", "retry"):
        return f"{res['jobs_per_s']:,.0f} jobs/s ({res['seconds']:.2f} s)"
    if s in ("pickup", "pickup-http"):
        return f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms"
    if s == "load":
        return (f"{res['achieved_rate']:,.0f}/s achieved, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
                f"unfinished samples {res['unfinished_samples']}")
    if s == "chain":
        return f"{res['per_step_ms']:.2f} ms/step"
    if s == "scale":
        line = f"{res['jobs_per_s']:,.0f} jobs/s, drain {res['drain_jobs_per_s']:,.0f}/s, peak {res['peak_mb']:.0f} MB"
        if "queues_get_p50_ms" in res:
            line += (f", RSS {res['rss_empty_mb']:.0f} → {res['rss_queued_mb']:.0f} MB queued, "
                     f"GET /v1/queues p50 {res['queues_get_p50_ms']} ms")
        return line
    return ""
