"""`python -m ferry worker MODULE[:ATTRIBUTE] [options]`: runs a remote worker.

`MODULE:ATTRIBUTE` names a `ferry.Worker` (`tests.tasks:app`); a bare `MODULE` is imported
for its `@ferry.task` functions, served by a new `Worker`. Options given here override
the worker's own. The current directory is importable, as with `python -m`.
Exits 0 after a graceful shutdown (SIGTERM, SIGINT), 2 on a usage error, 1 when the
server refused the session (a kind or queue conflict, a bad token).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from ._core import FerryError
from .worker import Worker


def _load(target: str) -> Worker:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if not attr:
        return Worker()
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Worker):
        obj = obj()  # a factory
    if not isinstance(obj, Worker):
        raise SystemExit(f"{target} is a {type(obj).__name__}, not a ferry.Worker")
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferry", description="Ferry's Python SDK")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a remote worker")
    w.add_argument("target", help="MODULE:ATTRIBUTE of a ferry.Worker, or MODULE with @ferry.task functions")
    w.add_argument("--url", help="the server (default FERRY_SERVER, else http://127.0.0.1:7700)")
    w.add_argument("--token", help="a token of the worker role (default FERRY_TOKEN)")
    w.add_argument("--concurrency", type=int, help="jobs at once (default: the worker's, 10)")
    w.add_argument("--grace", type=float, help="seconds a shutdown waits for running jobs (default 30)")
    w.add_argument("--name", help="the session's label in GET /v1/workers")
    w.add_argument("--lease-wait", type=float, help="longest long poll, seconds (default: the server's)")
    w.add_argument("--batch-window", type=float,
                   help="while work is waiting, seconds a freed slot waits for others (default 0.002)")
    w.add_argument("--log-level", default=os.environ.get("FERRY_PY_LOG", "INFO"), help="default INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    app = _load(args.target)
    if args.url:
        from ._core import default_url

        app.url = default_url(args.url)
    if args.token:
        app.token = args.token
    if args.concurrency is not None:
        app.concurrency = args.concurrency
    if args.grace is not None:
        app.grace = args.grace
    if args.name:
        app.name = args.name
    if args.lease_wait is not None:
        app.lease_wait = args.lease_wait
    if args.batch_window is not None:
        app.batch_window = args.batch_window
    try:
        code = app.run()
    except FerryError as e:
        logging.getLogger("ferry.worker").error("the server refused the worker: %s", e)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if app.busy_threads():
        # Sync tasks that outlived the grace were handed back and told to stop; the
        # interpreter would wait for their threads at exit, so leave without them.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
