"""Process, port, file and HTTP-client helpers shared by the lab's manager side.

Every helper that waits or talks to the network takes a timeout.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LabError
from .state import LOOPBACK


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port the OS considers free right now on ``host`` (callers retry if it is taken by then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def process_cmdline(pid: int) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces), ``None`` if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, optionally whose command line contains ``expect``.

    ``expect`` guards against pid reuse: a stale state file must never make us signal a stranger.
    """
    if not pid or pid <= 0:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    if expect is not None:
        cmdline = process_cmdline(pid)
        if cmdline is not None and expect not in cmdline:
            return False
    return True


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def terminate(pid: int | None, expect: str | None, timeout: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid`` (if it is alive and matches ``expect``), SIGKILL it after ``timeout``.

    Returns True if the process is gone afterwards.
    """
    if not pid_alive(pid, expect):
        return True
    assert pid is not None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    if wait_for(lambda: not pid_alive(pid), timeout):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return wait_for(lambda: not pid_alive(pid), 5.0)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ("" if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def port_refuses(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connect to ``host:port`` is actively refused."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED


@dataclass
class HttpResult:
    """A small HTTP response: status, lower-cased headers and raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as exc:
            raise LabError(f"expected a JSON body, got {self.body[:200]!r}") from exc

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResult:
    """One HTTP/1.1 request (JSON body if ``body`` is not None/bytes) with a hard socket ``timeout``.

    Network errors propagate as ``OSError`` (``ConnectionRefusedError``, ``TimeoutError``, ...).
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = {"Connection": "close", **(headers or {})}
        payload: bytes | None
        if body is None:
            payload = None
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=payload, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    except http.client.HTTPException as exc:
        raise ConnectionError(f"bad HTTP response from {host}:{port}: {exc!r}") from exc
    finally:
        conn.close()
