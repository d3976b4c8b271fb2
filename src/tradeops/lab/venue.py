"""The lab's side of the exchange: start and stop its process, seed its accounts, and a tiny signed client.

The exchange runs in a process of its own (``python -m tradeops.lab.exchange``), so that the venue path
never depends on the engines process: a crashed or hung engine leaves its orders resting there, as at a
real venue. Each engine gets an account of its own; an engine ``engine-N`` with N <= 20 is the venue side
of the database's account N (its balances start as that account's open positions in the pairs the venue
lists, so that the positions table and the venue agree until something fills).

:class:`KrakenClient` is the engines' client (stdlib only, a hard timeout per call). The collection itself
talks to the exchange through ccxt (``plugins/module_utils/_venue.py``), and so do the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import LabError
from .exchange import CONFIG_FILE, LOG_FILE, PAIRS, RUNTIME_FILE, kraken_signature, new_account_keys, pair_for_symbol
from .procs import http_request, pid_alive, tail, terminate
from .state import LOOPBACK, read_json, write_json_atomic

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
USD_START = 1_000_000.0
CALL_TIMEOUT = 3.0


def db_balances(cur: Any, account_id: int | None) -> dict[str, float]:
    """An account's starting venue balances: USD, plus its open positions in the venue's pairs."""
    balances = {"ZUSD": USD_START}
    if account_id is None:
        return balances
    cur.execute(
        "SELECT symbol, sum(quantity) FROM positions WHERE account_id = %s AND status = 'open' GROUP BY symbol",
        (account_id,),
    )
    for symbol, quantity in cur.fetchall():
        pair = pair_for_symbol(symbol)
        if pair is not None:
            base = PAIRS[pair][1]
            balances[base] = balances.get(base, 0.0) + float(quantity)
    return balances


KEY_LABELS = ("engine", "ops")  # the engine trades with one key; operations (the collection) use the other


def plan_accounts(engine_names: list[str], cur: Any, db_accounts: int) -> dict[str, dict[str, Any]]:
    """One venue account per engine: two API keys (the engine's, the operations team's), the database
    account it mirrors, starting balances."""
    out = {}
    for index, name in enumerate(engine_names, start=1):
        account_id = index if index <= db_accounts else None
        keys = {label: dict(zip(("key", "secret"), new_account_keys(), strict=True)) for label in KEY_LABELS}
        out[name] = {"keys": keys, "account_id": account_id, "balances": db_balances(cur, account_id)}
    return out


def start(lab_dir: Path, control_token: str, accounts: Mapping[str, Any], deadline: float,
          listen: str = LOOPBACK, port: int = 0) -> dict[str, Any]:
    """Start the exchange process; returns the state-file ``exchange`` entry once it listens (on the loopback,
    or on ``listen``:``port``, as a drill's venue host does)."""
    runtime = lab_dir / RUNTIME_FILE
    runtime.unlink(missing_ok=True)
    write_json_atomic(lab_dir / CONFIG_FILE, {"control_token": control_token, "accounts": dict(accounts),
                                               "port": port})
    src_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    with open(lab_dir / LOG_FILE, "ab") as logf:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tradeops.lab.exchange", "--lab-dir", str(lab_dir), "--listen", listen],
                cwd=lab_dir, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise LabError(f"cannot start the lab exchange: {exc}") from exc
    entry: dict[str, Any] = {"pid": proc.pid, "host": LOOPBACK, "port": None}
    while time.monotonic() < min(deadline, time.monotonic() + START_TIMEOUT):
        info = read_json(runtime) if runtime.exists() else None
        if info and info.get("pid") == proc.pid:
            entry["port"] = int(info["port"])
            entry["url"] = f"http://{LOOPBACK}:{entry['port']}"
            if info.get("ws_port"):  # its market-data feed (Kraken's WebSocket API v2)
                entry["ws_url"] = f"ws://{LOOPBACK}:{int(info['ws_port'])}/v2"
            # the operations key of each account (what the collection uses) and the engine's own
            entry["accounts"] = {name: {"key": a["keys"]["ops"]["key"], "secret": a["keys"]["ops"]["secret"],
                                        "engine_key": a["keys"].get("engine"), "account_id": a.get("account_id")}
                                 for name, a in accounts.items()}
            return entry
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(lab_dir, entry)
    raise LabError(f"the lab exchange did not start; last lines of {lab_dir / LOG_FILE}:\n{tail(lab_dir / LOG_FILE)}")


def stop(lab_dir: Path, entry: Mapping[str, Any] | None) -> None:
    if entry and entry.get("pid"):
        terminate(entry["pid"], f"tradeops.lab.exchange --lab-dir {lab_dir}", timeout=STOP_TIMEOUT)
    (lab_dir / CONFIG_FILE).unlink(missing_ok=True)  # holds every account's secret
    (lab_dir / RUNTIME_FILE).unlink(missing_ok=True)


def running(lab_dir: Path, entry: Mapping[str, Any] | None) -> bool:
    return bool(entry and pid_alive(entry.get("pid"), f"tradeops.lab.exchange --lab-dir {lab_dir}"))


def control(entry: Mapping[str, Any], token: str, method: str, path: str, body: Any = None,
            timeout: float = CALL_TIMEOUT) -> Any:
    """Call the exchange's lab control API (``/lab/*``)."""
    try:
        res = http_request(entry["host"], int(entry["port"]), method, path, body=body,
                           headers={"X-Lab-Token": token}, timeout=timeout)
    except OSError as exc:
        raise LabError(f"the lab exchange at {entry['host']}:{entry['port']} did not answer: {exc}") from exc
    if res.status != 200:
        raise LabError(f"lab exchange {method} {path}: HTTP {res.status}: {res.text[:300]}")
    return res.json()


class VenueError(Exception):
    """A Kraken error code (``EAPI:Invalid key``), an HTTP status, or a network error."""


class KrakenClient:
    """A minimal signed Kraken REST client (the engines'); one call at a time per instance."""

    def __init__(self, host: str, port: int, key: str, secret: str, timeout: float = CALL_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, int(port), timeout
        self.credential = (key, secret)  # replaced whole when the key is rotated: a call never mixes two keys
        self._nonce = 0

    def nonce(self) -> str:
        self._nonce = max(self._nonce + 1, time.time_ns() // 1000)
        return str(self._nonce)

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        path = f"/0/private/{method}"
        key, secret = self.credential
        nonce = self.nonce()
        body = urllib.parse.urlencode({"nonce": nonce, **(params or {})}).encode()
        headers = {"API-Key": key, "API-Sign": kraken_signature(path, body, nonce, secret),
                   "Content-Type": "application/x-www-form-urlencoded"}
        try:
            res = http_request(self.host, self.port, "POST", path, body=body, headers=headers, timeout=self.timeout)
        except OSError as exc:
            raise VenueError(f"network: {exc}") from exc
        if res.status != 200:
            raise VenueError(f"HTTP {res.status}")
        try:
            data = json.loads(res.body)
        except ValueError as exc:
            raise VenueError("not JSON") from exc
        if data.get("error"):
            raise VenueError(",".join(data["error"]))
        return data.get("result")
