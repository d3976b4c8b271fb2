"""The leaked admin token in the hands of a rogue client, on another host of the scenario's network.

    python3 rogue_client.py --token-file FILE --log FILE [--interval S] [--timeout S] URL...

Every --interval seconds, one thread per URL calls it (GET) with the token of --token-file in
X-Admin-Token and appends one JSON line per call to --log: {"at": <epoch s>, "url": URL, "status": <int
HTTP status> | "error: <kind>"}. Never the token. Runs until killed (prepare starts it detached).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.request

LOCK = threading.Lock()


def call(url: str, token: str, timeout: float) -> int | str:
    request = urllib.request.Request(url, headers={"X-Admin-Token": token, "User-Agent": "rogue-client"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = "timeout" if isinstance(reason, TimeoutError) else type(reason).__name__
        return f"error: {kind}"
    except TimeoutError:
        return "error: timeout"
    except OSError as exc:
        return f"error: {type(exc).__name__}"


def run(url: str, token: str, log: str, interval: float, timeout: float) -> None:
    while True:
        at = time.time()
        status = call(url, token, timeout)
        with LOCK, open(log, "a") as fh:
            fh.write(json.dumps({"at": at, "url": url, "status": status}) + "\n")
        time.sleep(max(0.0, interval - (time.time() - at)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    with open(args.token_file) as fh:
        token = fh.read().strip()
    threads = [threading.Thread(target=run, args=(u, token, args.log, args.interval, args.timeout), daemon=True)
               for u in args.urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
