"""The pickup-http scenario's target: a local HTTP server, in a thread of the driver, that
notes when each request reaches it."""

import http.server
import threading
import time

from common import BenchTimeout


class HttpTarget:
    """Answers every GET with 200 and notes when it arrived (`time.time()`, the clock the
    client stamps its submissions with) under the sample number its path carries (`/<i>`).
    It speaks HTTP/1.0 and so closes every connection after its answer: each job's
    request connects afresh, for Ferry's pooling client as for Celery's urllib, which
    never reuses one. One request at a time is all the scenario sends, so one thread
    serves them all, without a thread started per connection in the measured time."""

    def __init__(self):
        self.arrivals = {}
        self.cond = threading.Condition()
        self.server = http.server.HTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def _handler(self):
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a client that connects and stalls cannot hold the target

            def do_GET(self):  # noqa: N802 - http.server's name
                t = time.time()
                target.arrived(self.path.strip("/"), t)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_):
                pass

        return Handler

    def arrived(self, sample, t):
        """Notes the first arrival of `sample` (a retried request keeps the first)."""
        with self.cond:
            self.arrivals.setdefault(sample, t)
            self.cond.notify_all()

    def url(self, i):
        return f"http://127.0.0.1:{self.port}/{i}"

    def arrival(self, i, deadline, what):
        """The time request `i` arrived, waiting for it until `deadline`."""
        with self.cond:
            while str(i) not in self.arrivals:
                left = deadline - time.time()
                if left <= 0:
                    raise BenchTimeout(what)
                self.cond.wait(left)
            return self.arrivals[str(i)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()
