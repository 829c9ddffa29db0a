"""Ferry's Python SDK: a client of the HTTP API (`Client`, `AsyncClient`) and a remote
worker (`Worker`, `@app.task`, `@ferry.task`) that serves kinds of your own over the
worker protocol.

    import ferry

    with ferry.Client() as client:                    # FERRY_SERVER, FERRY_TOKEN
        job = client.submit_and_wait("resize", {"url": "…", "width": 200})
        print(job["state"], job["output"])

    app = ferry.Worker(concurrency=10)

    @app.task("resize", queue="images")
    def resize(input, ctx):
        ...

See clients/python/README.md.
"""

from ._core import FINAL_JOB_STATES, FINAL_RUN_STATES, Event, FerryError, WaitTimeout, job_spec
from .client import AsyncClient, Client
from .worker import Context, Fail, Registry, Retry, TaskDef, Worker, default_registry, task

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Context",
    "Event",
    "FINAL_JOB_STATES",
    "FINAL_RUN_STATES",
    "Fail",
    "FerryError",
    "Registry",
    "Retry",
    "TaskDef",
    "WaitTimeout",
    "Worker",
    "default_registry",
    "job_spec",
    "task",
]
