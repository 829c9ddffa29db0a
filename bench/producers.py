"""Producer processes: used for Celery's submissions (Python's GIL would make threads
measure the harness rather than the broker) and, for both systems alike, for the steady
arrivals of the latency-under-load scenario."""

import json
import multiprocessing as mp
import signal
import sys
import threading
import time
import traceback

from common import BenchTimeout, HERE, Http, JSON_HEADERS


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
