"""Poll TCP connections until each target is in the expected state, or a deadline passes.

    python3 net_probe.py --expect open|dropped [--deadline S] [--hold N] HOST:PORT|[V6]:PORT...

Every --interval seconds each target not yet settled gets one connection attempt (--timeout s). A target
settles once N attempts in a row (--hold) came out as expected: "open" (connected) or "dropped" (the
attempt timed out: a firewall drops the packets; a refusal is NOT a drop, it means nothing listens).
Prints one JSON object: {"ok": bool, "expect": ..., "targets": {target: {"last": state, "attempts": n,
"in_a_row": n}}} and exits 0 when every target settled before the deadline, 1 otherwise. No fixed
sleep: the answer comes as soon as every target has settled.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def attempt(target: str, timeout: float) -> str:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return "open"
    except TimeoutError:
        return "dropped"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {type(exc).__name__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", choices=["open", "dropped"], required=True)
    parser.add_argument("--deadline", type=float, default=20.0)
    parser.add_argument("--hold", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()

    state = {t: {"last": None, "attempts": 0, "in_a_row": 0} for t in args.targets}
    deadline = time.monotonic() + args.deadline
    while True:
        pending = [t for t, s in state.items() if s["in_a_row"] < args.hold]
        if not pending or time.monotonic() >= deadline:
            break
        started = time.monotonic()
        for target in pending:
            result = attempt(target, args.timeout)
            entry = state[target]
            entry["last"], entry["attempts"] = result, entry["attempts"] + 1
            entry["in_a_row"] = entry["in_a_row"] + 1 if result == args.expect else 0
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    ok = all(s["in_a_row"] >= args.hold for s in state.values())
    print(json.dumps({"ok": ok, "expect": args.expect, "targets": state}, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
