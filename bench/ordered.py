"""How fast a line of ordered jobs (one `ordering_key`) drains, next to the same jobs
unordered, against a running Ferry server.

    python3 bench/ordered.py [BASE_URL] [N]

Submits N no-op jobs (default 1000) in one batch under one key, waits for the last to
succeed, then the same without a key. Only the standard library: it runs wherever the
server does.
"""

import json
import sys
import time
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7700"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def drain(key):
    jobs = [{"kind": "noop", **({"ordering_key": key} if key else {})} for _ in range(N)]
    start = time.monotonic()
    ids = [j["id"] for j in call("/v1/jobs/batch", {"jobs": jobs})["jobs"]]
    while call(f"/v1/jobs/{ids[-1]}")["state"] != "succeeded":
        time.sleep(0.005)
    return time.monotonic() - start


for label, key in [("one key", f"line-{time.time_ns()}"), ("unordered", None)]:
    took = drain(key)
    print(f"{label:>9}: {N} jobs in {took:.2f} s, {N / took:,.0f} jobs/s")
