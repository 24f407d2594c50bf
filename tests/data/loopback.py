"""A tiny HTTP server on 127.0.0.1 for download tests: Range requests and injected faults.

Python's ``http.server`` ignores ``Range``; this handler answers ``bytes=N-`` with ``206`` and
``Content-Range``, and ``416`` past the end. Per path, a :class:`Route` can fail on purpose:
answer with given statuses first (``statuses=[500, 500]`` then the file), cut the body after
``cut_after`` bytes on the first ``cuts`` requests (the connection closes early, as a dropped
download), or ignore ``Range`` (``ranges=False``). Every request is logged with its ``Range``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes
    statuses: list[int] = field(default_factory=list)
    cut_after: int | None = None
    cuts: int = 0
    ranges: bool = True
    content_type: str = "application/octet-stream"


@dataclass
class Loopback:
    server: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def add(self, path: str, body: bytes, **faults: object) -> str:
        self.routes["/" + path.lstrip("/")] = Route(body, **faults)  # type: ignore[arg-type]
        return self.url(path)

    def requests(self, path: str) -> list[str | None]:
        """The Range headers of the requests for ``path`` (None = no Range)."""
        return [r for p, r in self.log if p == "/" + path.lstrip("/")]


def _handler(state: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            range_header = self.headers.get("Range")
            state.log.append((path, range_header))
            route = state.routes.get(path)
            if route is None:
                self._status(404)
                return
            if route.statuses:
                self._status(route.statuses.pop(0))
                return
            body, start = route.body, 0
            if range_header and route.ranges:
                start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Accept-Ranges", "bytes")
            if route.cut_after is not None and route.cuts > 0:
                route.cuts -= 1
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload[: route.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.end_headers()
            self.wfile.write(payload)

        def _status(self, code: int) -> None:
            message = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)

    return Handler


@contextmanager
def serve() -> Iterator[Loopback]:
    """A running loopback server (port chosen by the OS), stopped on exit."""
    state = Loopback(server=None)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
