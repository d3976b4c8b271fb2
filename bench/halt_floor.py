"""Floor for the time to halt: a bare thread-pool fan-out POSTing every lab engine's kill switch.

No Ansible, no verification, no fallback: one process, ``concurrent.futures`` + ``http.client``, one
``POST /api/v1/emergency/kill_switch`` per engine (seed 001). The engines and ports come from the lab's
state file, the admin token from its secrets file (never printed). Prints one JSON line: how many
engines answered 200.

    python bench/halt_floor.py LAB_DIR [--workers 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import sys
from pathlib import Path

BODY = json.dumps({"reason": "bench floor", "user_id": "bench"}).encode()


def token_of(lab_dir: Path, state: dict) -> str:
    secrets_file = Path(state.get("secrets_file") or lab_dir / "secrets.env")
    for line in secrets_file.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ADMIN_TOKEN":
            return value.strip()
    return str(state["admin_token"])


def post(host: str, port: int, token: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", "/api/v1/emergency/kill_switch", body=BODY,
                     headers={"Content-Type": "application/json", "X-Admin-Token": token,
                              "X-Lab-Source": "management"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lab_dir", type=Path)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args(argv)
    state = json.loads((args.lab_dir / "state.json").read_text(encoding="utf-8"))
    token = token_of(args.lab_dir, state)
    engines = [(e["host"], int(e["port"])) for e in state["engines"]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(args.workers, len(engines)))) as pool:
        statuses = list(pool.map(lambda hp: post(hp[0], hp[1], token), engines))
    print(json.dumps({"engines": len(engines), "ok": sum(1 for s in statuses if s == 200)}))
    return 0 if all(s == 200 for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
