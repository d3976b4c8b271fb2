"""Shared helpers of the benchmark harness: statistics, environments, machine load, engine logs."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for _p in (str(ROOT / "src"), str(ROOT / "collections")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    """Progress on stderr (stdout is kept for the JSON summary)."""
    print(f"bench {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: Iterable[float | None], digits: int = 3) -> dict[str, Any]:
    """median / min / max / n of the values that are not None (None entries are failed runs)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "n": len(vals),
    }


def ratio(num: float | None, den: float | None, digits: int = 2) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return round(num / den, digits)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))  # ceil(pct/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def ansible_env(lab_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment the harness runs ansible-playbook / tradeops with: this checkout's ansible.cfg,
    the venv first on PATH, the benchmark's own lab dir."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env.pop("TRADEOPS_LAB_STATE", None)
    if lab_dir is not None:
        env["TRADEOPS_LAB_DIR"] = str(lab_dir)
    env.update(extra)
    return env


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str | None:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
        except OSError:
            return None
        return out.splitlines()[0].strip() if out else None

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ansible_core": version([str(BIN / "ansible"), "--version"]),
        "curl": version(["/usr/bin/curl", "--version"]),
    }


# -- the engines' own record of their halts --------------------------------------------------------------------

HALT_REQUESTED = " halt requested via "  # the engine accepted an API halt (engines.py: _halt_via_api)
HALTED_TICK = " halted ("  # the engine's trading loop saw a halt source (engines.py: _tick)


def _log_time(line: str) -> float | None:
    """The epoch time of an engine.log line (``2026-11-23T19:37:44.847 WARNING ...``, local time, ms truncated)."""
    stamp = line[:23]
    try:
        base = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        return base + int(stamp[20:23]) / 1000.0
    except (ValueError, OverflowError):
        return None


def engine_halts(engine_dirs: dict[str, Path], since: float) -> dict[str, dict[str, float | None]]:
    """Per engine, from its own ``engine.log``: the first ``halt requested via ...`` (the engine accepted the
    kill switch) and the first ``halted (...)`` (its trading loop stopped) logged at or after ``since``.

    The log stamps are truncated to the millisecond, so ``since`` is too before comparing."""
    floor = int(since * 1000) / 1000.0 - 0.0005
    out: dict[str, dict[str, float | None]] = {}
    for name, directory in engine_dirs.items():
        entry: dict[str, float | None] = {"accepted": None, "stopped": None}
        path = Path(directory) / "engine.log"
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            kind = "accepted" if HALT_REQUESTED in line else "stopped" if HALTED_TICK in line else None
            if kind is None or entry[kind] is not None:
                continue
            at = _log_time(line)
            if at is not None and at >= floor:
                entry[kind] = at
        out[name] = entry
    return out
