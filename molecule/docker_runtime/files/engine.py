#!/usr/bin/env python3
"""One tradeops lab engine as a compose-style container (the docker_runtime drill).

    engine.py serve          PID 1 of the container: one lab engine (tradeops.lab.engines) that
                             listens on 0.0.0.0:$ENGINE_PORT instead of a loopback port the OS picks
    engine.py health         the container's HEALTHCHECK: GET /health on that port
    engine.py fault NAME     inject a lab fault (hang, killswitch-broken, unrecoverable, ...) into the
                             running engine through its control API (loopback, inside the container)

The engine is the lab's own code (tradeops.lab.engines), unchanged: its trading loop, its
kill-switch APIs (seed 001 /api/v1/emergency/kill_switch, seed 004 /admin/orchestrate/halt with
X-Admin-Token), its flag file (seed 002: the engine dir is /tmp, so the flag is
/tmp/EMERGENCY_STOP inside the container, where `docker exec ... touch` puts it) and the orders it
writes into PostgreSQL. It listens on every interface of the container at a fixed port (the
engine spec's ``bind`` and ``port``, as in the lab nodes of the other drills), so the controller
reaches it over the drill's docker network. In-memory state (API halts, injected faults) dies
with the process, as in any container restart; the flag file lives in the container's
filesystem and survives `docker restart`.

Settings come from the environment, as in a compose file: ENGINE_NAME, ENGINE_METHODS (comma
separated lab methods: killswitch_api, orchestrate_api, file), ENGINE_PORT, ADMIN_TOKEN,
POSTGRES_HOST/PORT/DB/USER/PASSWORD, REDIS_HOST/PORT/PASSWORD, ORDER_INTERVAL, and ENGINE_RELEASE_DIR (the
release baked into the image, the agent_failure drill's).
"""

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

LAB_DIR = Path(os.environ.get("ENGINE_LAB_DIR", "/var/lib/tradeops-engine"))
ENGINE_DIR = Path(os.environ.get("ENGINE_DIR", "/tmp"))
PORT = int(os.environ.get("ENGINE_PORT", "8001"))


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"engine.py: environment variable {name} is required")
    return value


def serve():
    from tradeops.lab import engines
    from tradeops.lab.state import (
        ENGINES_CONFIG_FILE,
        SECRETS_FILE,
        engine_redis_key,
        write_json_atomic,
        write_secrets_env,
    )

    name = _env("ENGINE_NAME")
    LAB_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_file = LAB_DIR / SECRETS_FILE
    write_secrets_env(secrets_file, {"ADMIN_TOKEN": _env("ADMIN_TOKEN")})
    write_json_atomic(
        LAB_DIR / ENGINES_CONFIG_FILE,
        {
            "admin_token": _env("ADMIN_TOKEN"),
            # the control API stays on loopback inside the container; a new token per process
            "control_token": secrets.token_urlsafe(24),
            "secrets_file": str(secrets_file),
            "order_interval": float(os.environ.get("ORDER_INTERVAL", "0.2")),
            "postgres": {
                "host": _env("POSTGRES_HOST"),
                "port": int(os.environ.get("POSTGRES_PORT", "5432")),
                "dbname": _env("POSTGRES_DB"),
                "user": _env("POSTGRES_USER"),
                "password": _env("POSTGRES_PASSWORD"),
            },
            "redis": {
                "host": _env("REDIS_HOST"),
                "port": int(os.environ.get("REDIS_PORT", "6379")),
                "db": 0,
                "password": _env("REDIS_PASSWORD"),
            },
            # a lab node's engine: on every interface of the container and a fixed port (bind, port)
            "engines": [
                {
                    "name": name,
                    "bind": "0.0.0.0",
                    "port": PORT,
                    "dir": str(ENGINE_DIR),
                    "methods": [m for m in _env("ENGINE_METHODS").split(",") if m],
                    "redis_key": engine_redis_key(name),
                    "faults": [],
                    # the image's release (ENGINE_RELEASE_DIR/release.json); a crash-looping one exits the process,
                    # so that Docker's restart policy restarts the container
                    **({"release_link": os.environ["ENGINE_RELEASE_DIR"], "crash_loop_exit": True}
                       if os.environ.get("ENGINE_RELEASE_DIR") else {}),
                }
            ],
        },
    )
    return engines.main(["--lab-dir", str(LAB_DIR)])


def health():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"engine health: {exc}", file=sys.stderr)
        return 1


def fault(name, clear=False):
    from tradeops.lab.state import ENGINES_CONFIG_FILE, ENGINES_RUNTIME_FILE

    config = json.loads((LAB_DIR / ENGINES_CONFIG_FILE).read_text())
    runtime = json.loads((LAB_DIR / ENGINES_RUNTIME_FILE).read_text())
    body = json.dumps({"fault": name, "clear": clear, "engines": [config["engines"][0]["name"]]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{runtime['control']['port']}/lab/faults",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Lab-Token": config["control_token"]},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.read().decode())
    return 0


def main(argv):
    if argv[:1] == ["serve"]:
        return serve()
    if argv[:1] == ["health"]:
        return health()
    if len(argv) in (2, 3) and argv[0] == "fault":
        return fault(argv[1], clear=argv[2:] == ["--clear"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
