"""The lab's redis-server: password-protected, loopback only, no persistence, daemonized.

The password goes into a 0600 config file rather than the command line, so it never shows in ``ps``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from .errors import LabError
from .procs import free_port, pid_alive, tail, terminate
from .state import LOOPBACK

START_TIMEOUT = 15.0
SOCKET_TIMEOUT = 5.0


def find_redis_server() -> str:
    """``$TRADEOPS_REDIS_SERVER``, else redis-server on PATH or in /usr/bin."""
    for cand in (os.environ.get("TRADEOPS_REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise LabError("redis-server not found; install the redis-server package or set TRADEOPS_REDIS_SERVER")


def client(info: dict[str, Any], timeout: float = SOCKET_TIMEOUT, **kwargs: Any) -> redis.Redis:
    """A redis client for a state-file ``redis`` entry, with connect and socket timeouts."""
    kwargs.setdefault("decode_responses", True)
    return redis.Redis(
        host=info["host"],
        port=info["port"],
        db=info.get("db", 0),
        password=info["password"],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **kwargs,
    )


class RedisServer:
    """Starts and stops the lab's redis-server under ``<lab_dir>/redis``."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = Path(lab_dir)
        self.dir = self.lab_dir / "redis"
        self.conf = self.dir / "redis.conf"
        self.pidfile = self.dir / "redis.pid"
        self.logfile = self.dir / "redis.log"

    def start(self, password: str, listen: str = LOOPBACK, port: int | None = None) -> dict[str, Any]:
        """Start redis-server on a free loopback port (or on ``listen``:``port``, as a lab node in a container
        does); returns the state-file ``redis`` entry (its ``host`` is the loopback either way)."""
        exe = find_redis_server()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        last = ""
        for _attempt in range(3):
            port_now = port or free_port()
            self._write_conf(port_now, password, listen)
            self.pidfile.unlink(missing_ok=True)
            try:
                res = subprocess.run(
                    [exe, str(self.conf)],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=START_TIMEOUT,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise LabError(f"cannot run redis-server: {exc}") from exc
            info = {"host": LOOPBACK, "port": port_now, "db": 0, "password": password, "pid": None}
            if res.returncode == 0:
                pid = self._wait_ready(info)
                if pid:
                    info["pid"] = pid
                    return info
            last = (res.stdout + res.stderr).decode("utf-8", "replace") + tail(self.logfile, 20)
            self.stop(info)
            if port or "in use" not in last:
                break
        raise LabError(f"redis-server did not start:\n{last}")

    def _write_conf(self, port: int, password: str, listen: str = LOOPBACK) -> None:
        if any(c in password for c in '"\\\n '):
            raise LabError("the redis password must not contain quotes, backslashes or spaces")
        text = "\n".join(
            [
                f"bind {listen}",
                f"port {port}",
                "protected-mode yes",
                f'requirepass "{password}"',
                'save ""',
                "appendonly no",
                "daemonize yes",
                f'pidfile "{self.pidfile}"',
                f'logfile "{self.logfile}"',
                f'dir "{self.dir}"',
                "",
            ]
        )
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_ready(self, info: dict[str, Any]) -> int | None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = self._read_pid()
            if pid is not None and not pid_alive(pid):
                return None
            if pid is not None:
                try:
                    if client(info, timeout=1.0).ping():
                        return pid
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        return None

    def stop(self, info: dict[str, Any] | None, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: with no persistence configured it exits at once; SIGKILL after
        ``timeout``). Idempotent, tolerant of stale pids."""
        if not info:
            return
        terminate(info.get("pid") or self._read_pid(), "redis-server", timeout=timeout)
