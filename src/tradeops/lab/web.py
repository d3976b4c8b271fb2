"""A small HTTP/1.1 server on asyncio streams (stdlib only), used by the engines and the control API.

Supports keep-alive (HTTP/1.1 default, ``Connection: close`` honoured), ``Content-Length`` bodies up to
1 MiB, and read timeouts; always answers with ``Content-Length``. No chunked request bodies, no TLS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
MAX_LINE = 16 * 1024
IDLE_TIMEOUT = 30.0  # waiting for the next request on a kept-alive connection
READ_TIMEOUT = 10.0  # reading one request's headers and body


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json_object(self, required: bool = False) -> dict[str, Any]:
        """The body as a JSON object; an empty body is ``{}`` unless ``required``. 400 otherwise."""
        if not self.body.strip():
            if required:
                raise HttpError(400, "a JSON body is required")
            return {}
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"invalid JSON body: {exc}") from exc
        if not isinstance(data, dict):
            raise HttpError(400, "the JSON body must be an object")
        return data

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    @classmethod
    def json(cls, data: Any, status: int = 200, **kwargs: Any) -> Response:
        return cls(status, json.dumps(data).encode("utf-8"), "application/json", **kwargs)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode("utf-8"), content_type)

    @classmethod
    def error(cls, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return cls.json({"error": message}, status, headers=dict(headers or {}))

    def encode(self, keep_alive: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            "Cache-Control: no-store",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    pass


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("line too long") from exc
    if len(line) > MAX_LINE:
        raise _BadRequest("line too long")
    return line


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; ``None`` on a clean EOF before any byte. Raises _BadRequest on garbage."""
    try:
        first = await _readline(reader)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise _BadRequest("truncated request line") from exc
    return await asyncio.wait_for(_read_rest(reader, first), READ_TIMEOUT)


async def _read_rest(reader: asyncio.StreamReader, first: bytes) -> Request:
    try:
        method, target, version = first.decode("latin-1").strip().split(" ")
    except ValueError as exc:
        raise _BadRequest("malformed request line") from exc
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise _BadRequest("unsupported request")
    headers: dict[str, str] = {}
    try:
        while True:
            line = (await _readline(reader)).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            if len(headers) >= MAX_HEADERS:
                raise _BadRequest("too many headers")
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("malformed header")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest("chunked request bodies are not supported")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise _BadRequest("bad Content-Length") from exc
        if length < 0 or length > MAX_BODY:
            raise _BadRequest("bad Content-Length")
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as exc:
        raise _BadRequest("truncated request") from exc
    return Request(method.upper(), target, version, headers, body)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Serve requests on one connection until the client closes, asks to, or times out."""
    try:
        while True:
            try:
                request = await asyncio.wait_for(read_request(reader), IDLE_TIMEOUT)
            except _BadRequest as exc:
                writer.write(Response.error(400, str(exc)).encode(keep_alive=False))
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
                return
            if request is None:
                return
            response = await handler(request)
            keep_alive = request.keep_alive and not response.close
            writer.write(response.encode(keep_alive))
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
            if not keep_alive:
                return
    except (TimeoutError, ConnectionError, OSError):
        return
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass
