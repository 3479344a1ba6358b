"""A small HTTP proxy on 127.0.0.1 in front of the moto S3 server that answers a share of requests
with 503 SlowDown, as S3 does when throttling, or every request for a while (an outage)."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FlakyS3Proxy:
    def __init__(
        self,
        upstream: str,
        failure_rate: float,
        seed: int = 0,
        drop_answer: Callable[[str, str], bool] | None = None,
        outage_at: Callable[[str, str], float] | None = None,
        latency_s: float = 0.0,
    ) -> None:
        """`drop_answer(method, path)`: for the requests it picks, the request is applied upstream
        and then the connection is dropped without an answer (an ambiguous write). `outage_at(method,
        path)`: seconds of outage to start with this request (0: none), during which every request,
        this one too, is answered 503. `latency_s`: added to every request, as a real region's round
        trip is."""
        self.latency_s = latency_s
        self.outage_at = outage_at
        self.outage_until = 0.0
        self.outages: list[tuple[str, str]] = []  # the requests that started one
        self.upstream = urlparse(upstream)
        self.drop_answer = drop_answer
        self.dropped = 0
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.bytes_read = 0  # body bytes of the GET answers passed on
        self.bytes_read_by_path: Counter[str] = Counter()  # the same, by object path (no query)
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *arguments: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.requests += 1
                    proxy.log.append((self.command, self.path))
                    now = time.monotonic()
                    starts = proxy.outage_at(self.command, self.path) if proxy.outage_at else 0.0
                    if starts and now >= proxy.outage_until:
                        proxy.outage_until = now + starts
                        proxy.outages.append((self.command, self.path))
                    fail = now < proxy.outage_until or proxy.random.random() < proxy.failure_rate
                    proxy.failed += fail
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {name: value for name, value in self.headers.items() if name.lower() != "expect"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                if proxy.drop_answer is not None and proxy.drop_answer(self.command, self.path):
                    with proxy.lock:
                        proxy.dropped += 1
                    connection.close()
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                # A HEAD answer has no body but tells the object's length.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                if self.command == "GET":
                    with proxy.lock:
                        proxy.bytes_read += len(payload)
                        proxy.bytes_read_by_path[self.path.split("?")[0]] += len(payload)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
