"""rotate_secret: rotate 20 secrets held in one env file on one host while a consumer polls with them.

The env file is the lab's own ``secrets.env``: ``ADMIN_TOKEN`` (the admin token the lab engines verify)
plus 19 more keys, ``BENCH_SECRET_01`` .. ``BENCH_SECRET_19``. The lab engines verify only ADMIN_TOKEN, so
the 19 others are verified by a small HTTP server of this harness (``GET /auth/<KEY>``) that applies the
lab engines' contract to its key: it accepts ``KEY``, ``KEY_PREVIOUS`` and ``KEY_PENDING``, and re-reads the
file when it changed, with a stat at most every 0.5 s (``tradeops.lab.engines.AdminTokens``).

The rotation is the routine one, as shipped: ``ansible-playbook playbooks/rotate_secrets.yml`` (pending
stage, test on every server, promote; one grace period of ``secret_rotation_revoke_grace`` = 2 s, then
every previous value revoked and tested refused), with ``-e secret_rotation_secrets=`` the 20 secrets, each
with its test: ADMIN_TOKEN on every engine's ``/pnl/status``, each BENCH_SECRET on the verifier. Its time
is the process's, start to exit.

The consumer re-reads the file before EVERY call (the fastest possible switch to a new value) and calls,
in turn, each of the 20 secrets' servers with the value it just read (ADMIN_TOKEN: the engines, one after
the other), as fast as it can with a 5 ms pause, from before the rotation starts until after it ends.
A failed call is any answer but 200.
"""

from __future__ import annotations

import hmac
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import BENCH, BIN, ROOT, ansible_env, loadavg, log, summary

from tradeops.lab import Lab
from tradeops.lab.state import parse_secrets_env

RELOAD_INTERVAL = 0.5  # as the lab engines (engines.SECRETS_CHECK_INTERVAL)
ENGINES = 5


def read_env(path: Path) -> dict[str, str]:
    try:
        return parse_secrets_env(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


class Verifier:
    """Accepts <KEY>, <KEY>_PREVIOUS and <KEY>_PENDING of the env file on GET /auth/<KEY> (X-Admin-Token)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._values: dict[str, str] = read_env(path)
        self._sig = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        verifier = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                key = self.path.rsplit("/", 1)[-1]
                ok = verifier.accepts(key, self.headers.get("X-Admin-Token") or "")
                body = b'{"ok": true}' if ok else b'{"error": "unauthorized"}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def accepts(self, key: str, token: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= RELOAD_INTERVAL:
                self._checked = now
                sig = self._stat()
                if sig != self._sig:
                    self._sig = sig
                    values = read_env(self.path)
                    if values:
                        self._values = values
            accepted = [self._values.get(k) for k in (key, f"{key}_PREVIOUS", f"{key}_PENDING")]
        ok = False
        for value in accepted:
            if value:
                ok |= hmac.compare_digest(token.encode(), value.encode())
        return ok

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Consumer(threading.Thread):
    def __init__(self, env_file: Path, targets: list[tuple[str, str, int, str]]) -> None:
        super().__init__(daemon=True)
        self.env_file = env_file
        self.targets = targets  # (secret key, host, port, path)
        self.stop = threading.Event()
        self.calls = 0
        self.failures: list[dict[str, Any]] = []
        self.window: tuple[float, float] | None = None

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key, host, port, path = self.targets[i % len(self.targets)]
            token = read_env(self.env_file).get(key, "")
            at = time.time()
            try:
                conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request("GET", path, headers={"X-Admin-Token": token, "X-Lab-Source": "management"})
                status = conn.getresponse().status
                conn.close()
            except OSError as exc:
                status = f"error: {type(exc).__name__}"
            self.calls += 1
            if status != 200:
                self.failures.append({"at": at, "secret": key, "status": status})
            i += 1
            time.sleep(0.005)


def secret_items(n: int, verifier_port: int) -> list[dict[str, Any]]:
    engine_urls = ("{{ groups['trading_engines'] | map('extract', hostvars, ['tradeops_engine', 'base_url'])"
                   " | map('regex_replace', '$', '/pnl/status') | list }}")
    test = {"interval": 0.1, "headers": {"X-Lab-Source": "management"}}
    items = [{"name": "lab admin token",
              "store": {"type": "env_file", "path": "{{ tradeops_lab_secrets_file }}", "key": "ADMIN_TOKEN"},
              "generate": {"length": 32, "alphabet": "urlsafe"}, "test": {**test, "urls": engine_urls},
              "revoke_previous": True}]
    for k in range(1, n):
        key = f"BENCH_SECRET_{k:02d}"
        items.append({"name": key.lower(),
                      "store": {"type": "env_file", "path": "{{ tradeops_lab_secrets_file }}", "key": key},
                      "generate": {"length": 32, "alphabet": "urlsafe"},
                      "test": {**test, "url": f"http://127.0.0.1:{verifier_port}/auth/{key}"},
                      "revoke_previous": True})
    return items


def run_once(lab: Lab, n: int, work: Path, *playbook_args: str) -> dict[str, Any]:
    env_file = lab.secrets_path
    keys = ["ADMIN_TOKEN"] + [f"BENCH_SECRET_{k:02d}" for k in range(1, n)]
    before = read_env(env_file)
    if any(k not in before for k in keys):  # first run: add the 19 keys next to ADMIN_TOKEN
        extra = "".join(f"{k}={os.urandom(24).hex()}\n" for k in keys if k not in before)
        with open(env_file, "a", encoding="utf-8") as fh:
            fh.write(extra)
        before = read_env(env_file)
        time.sleep(1.0)  # the engines re-read the file
    verifier = Verifier(env_file)
    state = lab.state
    targets = [(k, "127.0.0.1", verifier.port, f"/auth/{k}") for k in keys[1:]]
    targets[0:0] = [("ADMIN_TOKEN", e["host"], int(e["port"]), "/pnl/status") for e in state["engines"]]
    with tempfile.TemporaryDirectory(prefix="rotate-", dir=work) as tmp:
        vars_file = Path(tmp) / "vars.json"
        vars_file.write_text(json.dumps({"secret_rotation_secrets": secret_items(n, verifier.port)}))
        timing = Path(tmp) / "timing.jsonl"
        env = ansible_env(lab.lab_dir, ANSIBLE_CALLBACK_PLUGINS=str(BENCH / "callback_plugins"),
                          ANSIBLE_CALLBACKS_ENABLED="bench_timing", TRADEOPS_BENCH_TIMING=str(timing))
        consumer = Consumer(env_file, targets)
        consumer.start()
        time.sleep(1.0)
        calls_before, failures_before = consumer.calls, len(consumer.failures)
        t0 = time.time()
        proc = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/rotate_secrets.yml", "-e", f"@{vars_file}",
                               *playbook_args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        elapsed = time.time() - t0
        time.sleep(1.0)
        consumer.stop.set()
        consumer.join(10)
        verifier.close()
        tasks: dict[str, float] = {}
        if timing.exists():
            events = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
            starts = [(e["task"], e["t"]) for e in events if e["event"] == "task_start"]
            end = next((e["t"] for e in events if e["event"] == "end"), None)
            for i, (task, at) in enumerate(starts):
                nxt = starts[i + 1][1] if i + 1 < len(starts) else end
                if nxt is not None and "Rotate |" in task:
                    name = task[task.index("Rotate |"):]
                    tasks[name] = round(tasks.get(name, 0.0) + nxt - at, 3)
    after = read_env(env_file)
    rotated = [k for k in keys if after.get(k) and after.get(k) != before.get(k)]
    leftovers = [k for k in after if k.endswith(("_PREVIOUS", "_PENDING"))]
    failures = consumer.failures[failures_before:]
    run = {
        "rc": proc.returncode,
        "rotation_s": round(elapsed, 3),
        "secrets_rotated": len(rotated),
        "leftover_keys": leftovers,
        "calls": consumer.calls - calls_before,
        "failed_calls": len(failures),
        "failed_by_secret": {k: sum(1 for f in failures if f["secret"] == k) for k in keys
                             if any(f["secret"] == k for f in failures)},
        "failed_statuses": sorted({str(f["status"]) for f in failures}),
        "task_s": tasks,
    }
    run["ok"] = proc.returncode == 0 and len(rotated) == n and not leftovers
    if not run["ok"]:
        run["output_tail"] = (proc.stdout + proc.stderr)[-2000:]
    return run


def run_rotate(runs: int, work: Path, secrets: int = 20, control: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "secrets": secrets, "engines": ENGINES,
                           "loadavg_start": loadavg(), "runs": []}
    lab = Lab(work / "lab-rotate")
    lab.up(engines=ENGINES, mix="killswitch_api")
    try:
        for i in range(runs):
            r = run_once(lab, secrets, work)
            out["runs"].append(r)
            log(f"rotate run {i + 1}/{runs}: {r['secrets_rotated']} rotated in {r['rotation_s']} s, "
                f"{r['failed_calls']} failed of {r['calls']} calls, ok={r['ok']}")
        if control:
            # the control: the same rotation with staging=direct (each new value written as current at once);
            # clients switch before the servers re-read the file, so this consumer must see failed calls
            r = run_once(lab, secrets, work, "-e", "secret_rotation_staging=direct")
            out["control_direct_staging"] = {k: r[k] for k in ("rc", "rotation_s", "calls", "failed_calls",
                                                                "failed_statuses", "ok")}
            log(f"rotate control (staging=direct): {r['failed_calls']} failed of {r['calls']} calls")
    finally:
        lab.down()
    good = [r for r in out["runs"] if r["ok"]]
    out["failed_runs"] = len(out["runs"]) - len(good)
    out["rotation_s"] = summary(r["rotation_s"] for r in good)
    out["failed_calls"] = summary((r["failed_calls"] for r in good), 0)
    out["calls"] = summary((r["calls"] for r in good), 0)
    names = list(dict.fromkeys(k for r in good for k in r["task_s"]))
    out["task_s"] = {k: summary(r["task_s"].get(k) for r in good) for k in names}
    total_failed = sum(r["failed_calls"] for r in good)
    out["summary"] = (f"`ansible-playbook playbooks/rotate_secrets.yml` (routine: pending stage, tested, promoted, "
                      f"revoked after a 2 s grace) rotating {secrets} keys of the lab's secrets.env: ADMIN_TOKEN "
                      f"(verified by the {ENGINES} lab engines) and {secrets - 1} more (verified by the harness's "
                      f"server with the engines' contract). A consumer re-reads the file before every call and "
                      f"polls all {secrets} secrets throughout: {total_failed} failed call(s) in all runs.")
    ctl = out.get("control_direct_staging")
    if ctl:
        out["summary"] += (f" Control, once, the same with `secret_rotation_staging=direct` (new values written as "
                           f"current at once): {ctl['failed_calls']} failed call(s) of {ctl['calls']}, so the "
                           f"consumer does see failures when there are some.")
    out["loadavg_end"] = loadavg()
    return out
