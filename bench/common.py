"""What every part of the benchmark shares: paths, the systems and scenarios it knows,
Ferry's HTTP client, logging, the time-limit exception and latency statistics."""

import datetime as dt
import json
import math
import os
import sys
import time
import urllib.parse

import http.client


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))


class HttpResponse:
    def __init__(self, status, body):
        self.status_code, self.content = status, body

    @property
    def text(self):
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


class Http:
    """Ferry's client: Python's standard http.client on one keep-alive connection. A
    client library's own overhead is not Ferry's: `requests` adds about 0.5 ms to every
    call on this machine (measured: 0.6 ms against 0.16 ms for GET /healthz), which would
    be most of Ferry's pickup latency. Celery is measured through its own client."""

    def __init__(self):
        self.conn, self.hostport = None, None

    def request(self, method, url, data=None, headers=None, timeout=60):
        u = urllib.parse.urlsplit(url)
        path = u.path + (f"?{u.query}" if u.query else "")
        for attempt in (0, 1):
            if self.conn is None or self.hostport != u.netloc:
                self.conn, self.hostport = http.client.HTTPConnection(u.netloc, timeout=timeout), u.netloc
            try:
                self.conn.request(method, path, body=data, headers=headers or {})
                r = self.conn.getresponse()
                return HttpResponse(r.status, r.read())
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise

    def get(self, url, timeout=60):
        return self.request("GET", url, timeout=timeout)

    def post(self, url, data=None, headers=None, timeout=60):
        return self.request("POST", url, data=data, headers=headers, timeout=timeout)

SYSTEMS = ["ferry-sqlite", "ferry-postgres", "ferry-postgres-split", "ferry-python-sqlite", "ferry-python-postgres",
           "celery-threads", "celery-prefork"]
# Celery's threads pool is its documented choice for I/O-light work and was the faster
# of its two pools on pickup in a full run with both (BENCHMARKS.md); prefork is one flag away.
DEFAULT_SYSTEMS = ["ferry-sqlite", "ferry-postgres", "ferry-postgres-split", "ferry-python-sqlite",
                   "ferry-python-postgres", "celery-threads"]
FERRIES = [s for s in SYSTEMS if s.startswith("ferry")]
# Ferry running the bench's jobs as Python functions, in a remote worker of its Python SDK.
PYTHON_FERRIES = [s for s in SYSTEMS if s.startswith("ferry-python")]
PEERS = [s for s in SYSTEMS if s.startswith("celery")]
SCENARIOS = ["throughput", "pickup", "pickup-http", "load", "retry", "chain", "scale"]
# `--concurrency default`: every system at its own out-of-the-box concurrency.
DEFAULT_CONCURRENCY = "default"
JSON_HEADERS = {"Content-Type": "application/json"}
RESERVED_PORTS = {5432, 6379, 7700, 7701}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchTimeout(Exception):
    """A scenario ran past its time limit; `partial` says how far it got."""

    def __init__(self, msg, **partial):
        super().__init__(msg)
        self.partial = partial


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    idx = min(len(sorted_vals) - 1, max(0, round((len(sorted_vals) - 1) * p)))
    return sorted_vals[idx]


def parse_rfc3339(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def latency_summary(lat_s, prefix=""):
    """p50/p99/max in milliseconds; an unfinished sample is +inf, and a percentile that
    lands on one is reported as null with `<name>_unfinished: true`."""
    vals = sorted(lat_s)
    out = {}
    for name, p in (("p50_ms", 0.5), ("p99_ms", 0.99), ("max_ms", 1.0)):
        v = percentile(vals, p)
        if v is None or math.isinf(v):
            out[prefix + name] = None
            out[prefix + name + "_unfinished"] = v is not None
        else:
            out[prefix + name] = round(v * 1000, 3)
    out[prefix + "samples"] = len(vals)
    out[prefix + "unfinished_samples"] = sum(1 for v in vals if math.isinf(v))
    return out
