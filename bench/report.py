"""The report: the machine and versions, medians over the rounds, the Markdown table."""

import datetime as dt
import math
import os
import platform
import statistics
import subprocess

from common import DEFAULT_CONCURRENCY, FERRIES, PEERS, PYTHON_FERRIES, ROOT
from processes import psql


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
    # And what the ferry-python-* systems' worker runs: the SDK of this checkout.
    sdk_dirty = run_cmd(["git", "--no-optional-locks", "-C", ROOT, "status", "--porcelain", "--untracked-files=normal",
                         "--", "clients/python/ferry", "clients/python/pyproject.toml"])
    info = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": run_cmd(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "ferry_git_commit": run_cmd(["git", "--no-optional-locks", "-C", ROOT, "rev-parse", "HEAD"]),
        "ferry_tree_dirty": bool(dirty),
        "ferry_tree_changes": dirty.splitlines() if dirty else [],
        "python_sdk_tree_dirty": bool(sdk_dirty),
        "python_sdk_tree_changes": sdk_dirty.splitlines() if sdk_dirty else [],
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
    ("pickup-http", "p50_ms", "2b. pickup to the job's HTTP request arriving, idle, p50 (ms)", "low", "auto"),
    ("pickup-http", "p99_ms", "2b. pickup to the job's HTTP request arriving, idle, p99 (ms)", "low", "auto"),
    ("load", "achieved_rate", "3. under load: arrivals achieved (jobs/s; target {load_rate:,.0f})", "high", "{:,.0f}"),
    ("load", "p50_ms", "3. under load: pickup p50 (ms)", "low", "auto"),
    ("load", "p99_ms", "3. under load: pickup p99 (ms)", "low", "auto"),
    ("load", "drained_after_last_submit_s", "3. under load: backlog drained after last arrival (s)", "low", "auto"),
    ("retry", "seconds", "4. retry storm, {retry} jobs × 3 attempts: time to all succeeded (s)", "low", "auto"),
    ("chain", "per_step_ms", "5. 10-step chain: time per step (ms; median run / 10)", "low", "auto"),
    ("scale", "jobs_per_s", "6. scale, {scale} waiting: jobs/s over the first fifth, from resume / worker start", "high", "{:,.0f}"),
    ("scale", "drain_jobs_per_s", "6. scale: jobs/s over the first fifth, from first pickup", "high", "{:,.0f}"),
    ("scale", "queues_get_p50_ms", "6. scale: GET /v1/queues with the backlog waiting, p50 (ms)", "low", "auto"),
    ("scale", "queues_get_p99_ms", "6. scale: GET /v1/queues with the backlog waiting, p99 (ms)", "low", "auto"),
    ("scale", "rss_empty_mb", "6. scale: server RSS right after start, empty (MiB)", "low", "{:,.0f}"),
    ("scale", "rss_queued_mb", "6. scale: server RSS with the {scale} jobs queued (MiB)", "low", "{:,.0f}"),
    ("scale", "peak_mb", "6. scale: peak memory (MiB; see notes)", "low", "{:,.0f}"),
    ("scale", "pss_mb_at_end", "6. scale: memory at the end, PSS (MiB; shared pages split)", "low", "{:,.0f}"),
    ("scale", "enqueue_seconds", "6. scale: time to enqueue the backlog (s)", "low", "auto"),
]


def metric_values(results, system, scen, key):
    """A row's values for one system over the rounds; a round that failed before the
    figure counts as failed, and a figure the system does not give (Ferry's alone) is
    left out."""
    vals, failed, unfinished = [], 0, False
    for r in results:
        if r["system"] != system or r["scenario"] != scen:
            continue
        if key not in r:
            if "error" in r:
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
                ran = [r for r in results if r["system"] == s and r["scenario"] == scen]
                row["systems"][s] = {"median": None, "min": None, "max": None, "rounds": 0, "failed": failed,
                                     "not_run": bool(ran) and all(r.get("skipped") for r in ran)}
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
            for f in FERRIES:
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


def concurrency(st):
    """A system's concurrency from its settings (Ferry's is its queue's)."""
    return st.get("concurrency", st.get("queues.default.concurrency"))


def concurrency_of(st):
    """A system's concurrency, with where it came from when that is the system's own
    default (`--concurrency default`)."""
    n = concurrency(st)
    return f"{n} ({st['concurrency_set_by']})" if st.get("concurrency_default") else f"{n}"


def settings_heading(systems, settings, opts, nproc):
    """The settings list's first line: the one concurrency of the run, or each system's own."""
    where = f"all on the same {nproc} cores as the load generator"
    if opts.concurrency != DEFAULT_CONCURRENCY:
        return f"Settings (every system, concurrency {opts.concurrency}; {where}):"
    each = ", ".join(f"{s} {concurrency(settings[s])}" for s in systems)
    return f"Settings (`--concurrency default`: every system at its own out-of-the-box concurrency, {each}; {where}):"


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
    py = [s for s in systems if s in PYTHON_FERRIES]
    if py:
        st = settings[py[0]]
        out.append(f"Ferry's Python SDK {st['sdk_version']} from {st['sdk_path']}"
                   f"{' (working tree with uncommitted changes)' if info.get('python_sdk_tree_dirty') else ''}, "
                   f"worker on Python {st['worker_python']}.")
        out.append("")
    out.append(settings_heading(systems, settings, opts, info["nproc"]))
    out.append("")
    for s in systems:
        st = settings[s]
        if s in PYTHON_FERRIES:
            desc = (f"{st['process']}, {st['backend']}"
                    + (" (fresh database on the local server)" if st['backend'] == 'postgres'
                       else " (fresh data dir, WAL)")
                    + f", the server configured as for ferry-{st['backend']}; the worker: `python -m ferry worker "
                      f"bench_py_tasks:app` (SDK {st['sdk_version']}, Python {st['worker_python']}), concurrency "
                      f"{concurrency_of(st)}, log level WARNING, serving the kinds bench_py_noop, bench_py_stamp "
                      "and bench_py_http_get (Celery's bench.noop, bench.stamp and bench.http_get) on queue "
                      "`remote`; bulk submits via `POST /v1/jobs/batch` (1000 per request, 4 client threads), "
                      f"pickup waits with `POST /v1/jobs?wait=`; runs {', '.join(st['scenarios'])} only "
                      "(“n/a” elsewhere)")
        elif s.startswith("ferry"):
            desc = (f"{st['process']}, {st['backend']}"
                    + (f" (fresh database on the local server, synchronous_commit="
                       f"{info.get('postgresql_settings', {}).get('synchronous_commit', '?')})" if st['backend'] == 'postgres'
                       else " (fresh data dir, WAL)")
                    + f", queue `default` concurrency {concurrency_of(st)}, max_depth 0, "
                      "durability `process` (acknowledged = committed), other settings default (poll_ms 1000); "
                      "bulk submits via `POST /v1/jobs/batch` (1000 per request, 4 client threads)")
        else:
            flags = (f"`-P {st['pool']}` (no `-c`), concurrency {concurrency_of(st)}" if st.get("concurrency_default")
                     else f"`-P {st['pool']} -c {st['concurrency']}`")
            desc = (f"Celery worker, {flags}, task_acks_late=True, "
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
    ferries = [f for f in FERRIES if f in systems]
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
                cells.append("timeout/error" if c.get("failed") else "n/a" if c.get("not_run") else "—")
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
               "sending. Pickup to the HTTP request (2b): the time a local HTTP target (Python's http.server in a "
               "thread of the driver, one fresh connection per request) has read the job's GET, minus the client's "
               "`time.time()` just before submitting (Ferry: the `http` kind; Celery: a task doing the GET with "
               "urllib). ferry-python-*: a Python function in a remote worker of Ferry's Python SDK, measured "
               "as Celery's: pickup = `time.time()` at the start of the task body (the job's output) minus the "
               "client's `time.time()` just before `POST /v1/jobs?wait=30s`, which answers with the ended job; "
               "pickup to the HTTP request: the task does the GET with urllib, as Celery's. Celery's peak memory is the sum of VmHWM over the worker's processes (for prefork this "
               "counts pages the children share with the parent once per process) plus redis-server's VmHWM; "
               "Ferry's is the server's VmHWM (for PostgreSQL the database server's memory is not included; the "
               "JSON has the VmHWM of its backends); for ferry-postgres-split, every memory row is its API server's "
               "(the worker's VmHWM is in the JSON). Scale, Ferry only: GET /v1/queues is 200 sequential calls "
               "timed by the client after the backlog was submitted and before the resume; the RSS rows are the "
               "server's VmRSS right after its start and after the submission. Scale: Ferry's time starts at the "
               "resume request, which its workers apply within poll_ms (1 s); Celery's at the worker's launch, boot "
               "included; the “from first pickup” row removes both.")
    return "\n".join(out) + "\n"
