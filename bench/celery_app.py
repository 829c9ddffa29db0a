"""The Celery side of the side-by-side benchmark: one app factory, four tasks.

The broker and the result backend are the benchmark's own redis-server (databases 0 and
1). The worker imports this module (`celery -A celery_app worker`) and finds the port in
BENCH_REDIS_PORT; the driver and its producer processes call make_app(port) themselves.
Settings are Celery's usual production ones for short tasks: late acknowledgement, the
default prefetch multiplier, JSON, broker and results on Redis. The pool (threads or
prefork) and the concurrency (or Celery's default, with `--concurrency default`) are
chosen on the worker's command line by the driver.
"""

import os
import time
import urllib.request

from celery import Celery
from celery.signals import worker_ready

PREFETCH = int(os.environ.get("BENCH_PREFETCH", "4"))


def make_app(port, current=False):
    app = Celery(
        "ferry_bench",
        broker=f"redis://127.0.0.1:{port}/0",
        backend=f"redis://127.0.0.1:{port}/1",
        set_as_current=current,
    )
    app.conf.update(
        task_acks_late=True,  # ack after the task ran, so a lost worker's task runs again
        worker_prefetch_multiplier=PREFETCH,  # Celery's default: 4 messages per pool slot
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )

    @app.task(name="bench.noop", shared=False)
    def noop():
        """Does nothing: the throughput, chain and scale scenarios."""
        return None

    @app.task(name="bench.stamp", shared=False)
    def stamp():
        """Returns the wall-clock time at the start of the task body (pickup latency)."""
        return time.time()

    @app.task(name="bench.http_get", shared=False)
    def http_get(url):
        """GETs `url` with urllib and returns the status: the pickup-http scenario, whose
        target notes when the request arrives."""
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status

    @app.task(name="bench.flaky", bind=True, max_retries=5, shared=False)
    def flaky(self):
        """Fails its first two attempts, then succeeds (the retry storm), retrying at once."""
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return self.request.retries

    return app


app = make_app(int(os.environ.get("BENCH_REDIS_PORT", "6399")), current=True)


@worker_ready.connect
def _mark_ready(sender=None, **_):
    """Tells the driver that the worker consumes (it waits for this file)."""
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(repr(time.time()))
        os.replace(path + ".tmp", path)
