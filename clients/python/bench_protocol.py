"""The worker protocol alone, from one Python thread: how fast a node serves it.

    .venv/bin/python clients/python/bench_protocol.py http://127.0.0.1:7700 5000 10

Opens a session serving the kind `proto_bench_noop` (queue `proto-bench`) with the given
concurrency, submits N jobs in batches of 1,000, then loops: lease up to `concurrency`
jobs, complete them all with a `null` output, until N are done. No SDK: httpx's blocking
client and the protocol's calls only (docs/worker-protocol.md). Prints jobs/s, the p50
of each call, and the mean batch a lease brought.
"""

from __future__ import annotations

import statistics
import sys
import time

import httpx


def main() -> None:
    url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = httpx.Client(base_url=url, timeout=60)
    opened = c.post("/v1/workers/sessions", json={
        "protocol": 1, "concurrency": concurrency, "kinds": [{"kind": "proto_bench_noop", "queue": "proto-bench"}]})
    opened.raise_for_status()
    session = opened.json()["session"]
    for i in range(0, n, 1000):
        c.post("/v1/jobs/batch", json={"jobs": [{"kind": "proto_bench_noop"}] * min(1000, n - i)}).raise_for_status()
    started, done, leases, completes, sizes = time.perf_counter(), 0, [], [], []
    while done < n:
        t = time.perf_counter()
        jobs = c.post(f"/v1/workers/sessions/{session}/lease", json={"max": concurrency, "wait_ms": 5000}).json()["jobs"]
        leases.append(time.perf_counter() - t)
        sizes.append(len(jobs))
        if not jobs:
            continue
        t = time.perf_counter()
        results = [{"id": j["id"], "attempt": j["attempt"], "output": None} for j in jobs]
        c.post(f"/v1/workers/sessions/{session}/complete", json={"results": results}).raise_for_status()
        completes.append(time.perf_counter() - t)
        done += len(jobs)
    elapsed = time.perf_counter() - started
    c.delete(f"/v1/workers/sessions/{session}")
    print(f"{n / elapsed:.0f} jobs/s; lease p50 {statistics.median(leases) * 1000:.2f} ms, "
          f"complete p50 {statistics.median(completes) * 1000:.2f} ms, batch mean {statistics.mean(sizes):.1f}")


if __name__ == "__main__":
    main()
