"""The tests' real local HTTP servers: one server class, one JSON reply, written once.

``LocalServer(handler_class)`` serves on 127.0.0.1 on a free port from a daemon thread (optionally over TLS);
handlers subclass :class:`JsonHandler` for ``reply(code, body)`` (JSON with its length) and ``read_body()``.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that stays quiet and answers JSON."""

    def log_message(self, *args):
        pass

    def reply(self, code: int, body=None, headers: dict | None = None, content_type: str = "application/json") -> None:
        """``body`` as JSON, or as is when it is bytes or str (a /metrics page, an error page); None: empty."""
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class LocalServer:
    """A real HTTP(S) server on 127.0.0.1 (a free port), serving ``handler_class`` from a daemon thread."""

    def __init__(self, handler_class, context=None, poll_interval: float = 0.05):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if context is not None else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": poll_interval},
                         daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def hung_listener() -> socket.socket:
    """A real TCP socket that accepts (via the backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s
