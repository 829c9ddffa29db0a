"""The Python worker of the ferry-python-* systems: Ferry's Python SDK (`clients/python`,
package `ferry`) serving the bench's own remote kinds, the counterparts of Celery's
tasks in bench/celery_app.py.

The driver runs it as `python -m ferry worker bench_py_tasks:app --url URL --log-level
WARNING [--concurrency N]`, with this directory as the working directory and the only
PYTHONPATH entry: bench/ itself holds a module named `ferry` (bench/ferry.py, the Ferry
system under test), which would hide the SDK's package.

The kinds go to the queue remote kinds get when they name none (`remote`), which the
server's configuration leaves alone (it has no cap on depth and no concurrency of its
own, so the session's concurrency is the queue's).
"""

import time
import urllib.request

import ferry

NOOP, STAMP, HTTP_GET = "bench_py_noop", "bench_py_stamp", "bench_py_http_get"

# Concurrency: the SDK's default unless the driver passes --concurrency.
app = ferry.Worker(use_default_registry=False)


@app.task(NOOP)
def noop(input):
    """Does nothing: the throughput scenario (Celery's `bench.noop`)."""
    return None


@app.task(STAMP)
def stamp(input):
    """Returns the wall-clock time at the start of the task body: the pickup scenario
    (Celery's `bench.stamp`)."""
    return time.time()


@app.task(HTTP_GET)
def http_get(input):
    """GETs `input["url"]` with urllib and returns the status: the pickup-http scenario,
    whose target notes when the request arrives (Celery's `bench.http_get`)."""
    with urllib.request.urlopen(input["url"], timeout=30) as r:
        return r.status
