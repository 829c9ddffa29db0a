"""Where Ferry's submit-to-start time goes, stage by stage.

Submits N no-op jobs one at a time to a running Ferry server (each after the previous one
finished), with Python's http.client on one keep-alive connection, and splits each job's
pickup by the store's own stamps: client send -> the job's `created_at` (HTTP, JSON,
validation, the insert), `created_at` -> the first attempt's `started_at` (the commit,
the wake-up, the claim). With --tail N it lists the N slowest jobs, each with its stages
and when it was sent (seconds into the run), to tell a cold start from a periodic cost.
With --requests it also times the same through a `requests` session, and GET /healthz
through both, to show a client library's own cost.

    bench/.venv/bin/python bench/pickup_breakdown.py --port 7700 [--jobs 500] [--warmup 20] [--tail 10] [--requests]
"""
import argparse
import datetime as dt
import http.client
import json
import statistics
import time


def stamp(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def breakdown(post, get, jobs, label, warmup=20, tail=0):
    rows = []
    t_start = time.time()
    for i in range(warmup + jobs):
        t0 = time.time()
        jid = post()
        while (job := get(jid))["state"] != "succeeded":
            time.sleep(0.0005)
        if i >= warmup:
            created, started = stamp(job["created_at"]), stamp(job["attempts"][0]["started_at"])
            rows.append((created - t0, started - created, started - t0, t0 - t_start))
    print(f"## {label}, {jobs} jobs")
    for k, name in enumerate(["client send -> created_at", "created_at -> started_at", "client send -> started_at"]):
        xs = [r[k] * 1000 for r in rows]
        print(f"  {name:28s} p50 {statistics.median(xs):.3f} ms   p99 {pct(xs, 99):.3f} ms")
    for r in sorted(rows, key=lambda r: r[2])[len(rows) - tail:] if tail else []:
        print(f"  slow: {r[2] * 1000:.3f} ms = {r[0] * 1000:.3f} + {r[1] * 1000:.3f}, sent at {r[3]:.3f} s")


def timed(f, n=500):
    xs = []
    for _ in range(n):
        t0 = time.time()
        f()
        xs.append((time.time() - t0) * 1000)
    return f"p50 {statistics.median(xs):.3f} ms   p99 {pct(xs, 99):.3f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7700)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20, help="jobs sent first and not counted")
    ap.add_argument("--tail", type=int, default=0, help="list the N slowest jobs")
    ap.add_argument("--requests", action="store_true", help="also time a `requests` session")
    opts = ap.parse_args()
    conn = http.client.HTTPConnection(opts.host, opts.port)
    body = json.dumps({"kind": "noop"})

    def call(method, path, data=None):
        conn.request(method, path, data, {"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())

    breakdown(lambda: call("POST", "/v1/jobs", body)["id"], lambda j: call("GET", f"/v1/jobs/{j}"), opts.jobs,
              "http.client", warmup=opts.warmup, tail=opts.tail)
    print(f"## GET /healthz, http.client: {timed(lambda: call('GET', '/healthz'))}")
    if opts.requests:
        import requests  # noqa: PLC0415  (not in bench/requirements.txt: pip install requests)

        s, url = requests.Session(), f"http://{opts.host}:{opts.port}"
        breakdown(lambda: s.post(url + "/v1/jobs", data=body).json()["id"],
                  lambda j: s.get(f"{url}/v1/jobs/{j}").json(), opts.jobs, "requests")
        print(f"## GET /healthz, requests: {timed(lambda: s.get(url + '/healthz').content)}")


if __name__ == "__main__":
    main()
