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
import os
import signal
import tempfile
import time

from common import DEFAULT_CONCURRENCY, DEFAULT_SYSTEMS, HERE, PYTHON_FERRIES, ROOT, SCENARIOS, SYSTEMS, log
from processes import TEMP_DIRS, _on_signal, cleanup
from ferry import Ferry
from ferry_python import FerryPython
from celery_peer import CeleryPeer
from scenarios import run_scenario, scenario_params, short
from report import machine_info, markdown, summarize


def concurrency_arg(value):
    """--concurrency: one pool size for every system, or `default` for each system's own."""
    if value == DEFAULT_CONCURRENCY:
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or `{DEFAULT_CONCURRENCY}`, got {value!r}")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help="comma-separated subset of " + ",".join(SYSTEMS) + ", or `all` (default: "
                    + ",".join(DEFAULT_SYSTEMS) + "; celery-prefork adds about 25 minutes)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every job count (and the load duration)")
    ap.add_argument("--concurrency", type=concurrency_arg, default=64,
                    help="Ferry's queue concurrency = the Python worker's = Celery's pool size; `default`: each "
                    "system's own (Ferry 10 per queue, its Python SDK's worker 10, Celery the number of CPUs)")
    ap.add_argument("--pickup-wait", choices=["poll", "push"], default="poll",
                    help="how the pickup scenario's client waits for each job to end: poll (Ferry: GET the job "
                         "every 0.5 ms) or push (Ferry: its event stream); Celery always waits on its result "
                         "backend's pub/sub, ferry-python-* always on POST /v1/jobs?wait=")
    ap.add_argument("--pickup-gap-ms", type=float, default=0.0,
                    help="pause between one pickup job's end and the next one's submission (every system)")
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
        return f * {"pickup": 180.0, "pickup-http": 180.0, "load": 60.0, "chain": 180.0}.get(scen, 120.0)

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

    def system_class(s):
        return FerryPython if s in PYTHON_FERRIES else Ferry if s.startswith("ferry") else CeleryPeer

    instances = {s: system_class(s)(s, opts, run_dir) for s in systems}
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
                    log(f"round {rnd} {scen:<11} {s:<21} {short(res)}  [{res['wall_seconds']:.1f} s]")
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
