"""Names, defaults and the state-file contract of the lab.

The state file ``<lab_dir>/state.json`` is a contract other code (the drill, the Ansible inventory
of the lab) depends on. Its shape::

    {
      "version": 1,
      "lab_dir": "/abs/path",
      "started_at": 1763900000.123,
      "admin_token": "<random>",
      "control_token": "<random>",
      "secrets_file": "/abs/path/secrets.env",
      "control": {"host": "127.0.0.1", "port": 40123},
      "engines_pid": 1234,
      "postgres": {"host", "port", "dbname", "user", "password", "datadir", "pid"},
      "redis": {"host", "port", "db", "password", "pid"},
      "engines": [{"name", "host", "port", "dir", "methods", "redis_key", "faults", "strategy", "desk", "venue"}],
      "restart_argv": ["/venv/bin/python", "-m", "tradeops.cli", "lab", "restart", "--dir", "/abs/path"]
    }

``admin_token`` is the engines' admin token (``X-Admin-Token``) *as it was at start*. The source of truth
for the admin tokens the engines accept is ``secrets_file`` (``<lab_dir>/secrets.env``, mode 0600):
``ADMIN_TOKEN=<current>`` and optionally ``ADMIN_TOKEN_PREVIOUS=<old>`` (accepted during a cutover, until
removed). The engines re-read it on SIGHUP and on change, so after a rotation ``admin_token`` here is stale:
read the secrets file (``read_secrets_env``). ``control_token`` authenticates the lab's own control API
(``X-Lab-Token``); it is the management credential, is never rotated and is not accepted by the engines.
State files written before it existed lack it and the control API then takes ``admin_token``.

``engines[].faults`` are the faults active from the start (the live ones come from the control API).
``restart_argv`` is an argv prefix: append one or more engine names and run it (no shell) to restart
those engines, e.g. with ``ansible.builtin.command``. State files written before it existed lack it;
``restart_argv(lab_dir)`` rebuilds it.

It is written atomically (temporary file + rename) with mode 0600 because it holds secrets, and only
once the lab is fully up: its presence means "a lab was brought up here and not yet taken down". The
``index-corruption`` database fault restarts PostgreSQL (same port and data dir) and rewrites the file
with the new ``postgres.pid``; nothing else changes after ``up``.

The database faults record what they did in ``<lab_dir>/faults/<fault>.json`` (see ``Lab.inject``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import LabError, LabInputError

STATE_VERSION = 1
LOOPBACK = "127.0.0.1"

ENV_LAB_DIR = "TRADEOPS_LAB_DIR"
DEFAULT_LAB_DIRNAME = ".lab"

# Files inside the lab dir.
STATE_FILE = "state.json"
STARTING_FILE = ".starting.json"  # partial state while `up` runs, so `down` can clean up after a crash
MARKER_FILE = ".tradeops-lab"  # marks a directory as a lab dir: `down` only ever deletes marked dirs
LOCK_FILE = ".lock"
ENGINES_CONFIG_FILE = "engines-config.json"  # written by the manager, read by the engines process (0600)
ENGINES_RUNTIME_FILE = "engines-runtime.json"  # written by the engines process once every socket is bound
ENGINES_LOG = "engines.log"
ENGINE_LOG = "engine.log"  # each engine's own log, inside its engine dir
BALLAST_DIR = "ballast"  # the disk-pressure fault fills a file in here, never outside the lab dir
BALLAST_FILE = "disk-pressure.bin"
POSTGRES_LOG = "postgres.log"
FAULTS_DIR = "faults"  # what each database fault did: ``<lab_dir>/faults/<fault>.json``
SECRETS_FILE = "secrets.env"  # the admin tokens the engines accept (0600), re-read on SIGHUP and on change
FIREWALL_FILE = "firewall.json"  # the engines' firewall settings, kept across engine (and process) restarts
SECRET_CURRENT = "ADMIN_TOKEN"
SECRET_PREVIOUS = "ADMIN_TOKEN_PREVIOUS"
SECRET_PENDING = "ADMIN_TOKEN_PENDING"  # staged by rotate_secret: accepted, not yet sent by clients

# The lab firewall (see engines.py): the "source" of a request is simulated with this header, since every
# caller is on 127.0.0.1. Absent, the caller is "public"; "management" is always allowed.
SOURCE_HEADER = "X-Lab-Source"
SOURCE_PUBLIC = "public"
SOURCE_MANAGEMENT = "management"

# Halt mechanisms an engine can honour, in the default primary cycle order.
KILLSWITCH_API = "killswitch_api"
ORCHESTRATE_API = "orchestrate_api"
REDIS = "redis"
FILE = "file"
HALT_METHODS: tuple[str, ...] = (KILLSWITCH_API, ORCHESTRATE_API, REDIS, FILE)
DEFAULT_MIX: tuple[str, ...] = HALT_METHODS

GLOBAL_HALT_KEY = "emergency_halt"  # seed 003's global halt key
EMERGENCY_STOP_FILE = "EMERGENCY_STOP"  # seed 002's flag file, inside each engine's dir

FAULT_CRASH = "crash"
FAULT_HANG = "hang"
FAULT_KILLSWITCH_BROKEN = "killswitch-broken"
FAULT_KILLSWITCH_LIES = "killswitch-lies"
FAULT_ERROR_RATE = "error-rate"
FAULT_LATENCY = "latency"
FAULT_DISK_PRESSURE = "disk-pressure"
FAULT_UNRECOVERABLE = "unrecoverable"
# The same symptoms as error-rate and latency, caused by something the engine depends on (a pricing feed,
# a downstream service): a restart does not clear them, so a playbook that restarts must not claim a fix.
FAULT_DEPENDENCY_ERRORS = "dependency-errors"
# The engine halts itself, as seed 004's orchestrator does, with the haltReason GET /pnl/status reports: it holds
# across restarts until the engine's own unhalt (POST /admin/orchestrate/unhalt), so only engines with the
# orchestrate_api method take these faults. Clearing the fault is fixing the cause; it does not unhalt.
FAULT_SELF_HALT_TARGET = "self-halt-target"  # daily_target_reached: normal operation
FAULT_SELF_HALT_LOSS = "self-halt-loss"  # daily_loss_limit: a critical financial risk
FAULT_SELF_HALT_ERROR = "self-halt-error"  # system_error
# The primary model's predictions degrade (seed 000 "ML Model Performance Degradation": accuracy below 60 %, drift
# alerts). It is the primary model at its current version that degrades: the backup model and the previous
# version are unaffected, so switching or rolling back fixes the symptom while the fault stays.
FAULT_MODEL_DRIFT = "model-drift"
SELF_HALT_REASONS: dict[str, str] = {
    FAULT_SELF_HALT_TARGET: "daily_target_reached",
    FAULT_SELF_HALT_LOSS: "daily_loss_limit",
    FAULT_SELF_HALT_ERROR: "system_error",
}
FAULT_DEPENDENCY_LATENCY = "dependency-latency"
# Performance (seed 000 P2, seed 004 P2, seed 002 memory issues). memory-leak: the engine process holds more
# memory every second (real allocations, reported as its resident memory) until it is restarted. cpu-hog: each
# market-data update costs the engine 45 times more CPU (reported as its process CPU); a restart does not help,
# a lower update frequency (the config API) does.
FAULT_MEMORY_LEAK = "memory-leak"
FAULT_CPU_HOG = "cpu-hog"
# A bad release (seed 004 "Single Agent Failure"): injecting it deploys a new release whose engine dies during
# start-up, and points the engine's ``current`` release link at it; the engine then restarts in a loop (its
# supervisor) and never becomes healthy. A restart does not fix it (the release is still bad); rolling back to
# the previous release (the link) and restarting does. The fault is a property of the release in use.
FAULT_CRASH_LOOP = "crash-loop"
FAULTS: tuple[str, ...] = (
    FAULT_CRASH,
    FAULT_HANG,
    FAULT_KILLSWITCH_BROKEN,
    FAULT_KILLSWITCH_LIES,
    FAULT_ERROR_RATE,
    FAULT_LATENCY,
    FAULT_DISK_PRESSURE,
    FAULT_UNRECOVERABLE,
    FAULT_DEPENDENCY_ERRORS,
    FAULT_DEPENDENCY_LATENCY,
    FAULT_SELF_HALT_TARGET,
    FAULT_SELF_HALT_LOSS,
    FAULT_SELF_HALT_ERROR,
    FAULT_MODEL_DRIFT,
    FAULT_MEMORY_LEAK,
    FAULT_CPU_HOG,
    FAULT_CRASH_LOOP,
)
# What an engine restart fixes: the faults whose cause lives in the process (a crash, a hang, and error-rate
# and latency, which behave like a leak: the process degrades until it is restarted). Every other fault
# survives it: cpu-hog (the update frequency), crash-loop (the release), disk pressure (the disk is still
# full), unrecoverable (a bad build), the dependency faults (the
# cause is elsewhere), killswitch-broken/-lies (the code).
FAULTS_FIXED_BY_RESTART: tuple[str, ...] = (FAULT_CRASH, FAULT_HANG, FAULT_ERROR_RATE, FAULT_LATENCY, FAULT_MEMORY_LEAK)
# Errors and slowness, whatever their cause
ERROR_FAULTS: tuple[str, ...] = (FAULT_ERROR_RATE, FAULT_DEPENDENCY_ERRORS)
LATENCY_FAULTS: tuple[str, ...] = (FAULT_LATENCY, FAULT_DEPENDENCY_LATENCY)
ALL = "*"

# Database faults: lab-wide (no engine names), injected into the lab's PostgreSQL after `up`.
FAULT_CORRUPT_ROWS = "corrupt-rows"
FAULT_INDEX_CORRUPTION = "index-corruption"
FAULT_LONG_QUERY = "long-query"
FAULT_BLOCKING_LOCK = "blocking-lock"
# Connection saturation (seed 003): a runaway job of an ordinary role holds every ordinary connection slot, each in
# a long query; only the superuser_reserved_connections are left.
FAULT_PG_SATURATION = "pg-saturation"
# Slow queries (seed 003/004 performance): a hot table full of dead rows, autovacuum off, statistics stale.
FAULT_TABLE_BLOAT = "table-bloat"
BLOAT_TABLE = "market_ticks"
DB_FAULTS: tuple[str, ...] = (
    FAULT_CORRUPT_ROWS, FAULT_INDEX_CORRUPTION, FAULT_LONG_QUERY, FAULT_BLOCKING_LOCK, FAULT_TABLE_BLOAT,
    FAULT_PG_SATURATION,
)
# The database faults held by a background session of the engines process (the others are one-shot).
SESSION_FAULTS: tuple[str, ...] = (FAULT_LONG_QUERY, FAULT_BLOCKING_LOCK, FAULT_PG_SATURATION)

# Service faults: the lab's PostgreSQL or Redis itself fails (seed 004 P1 "Database Connectivity Issues"). Lab-wide.
# pg-down and redis-down stop the server, as a crash would (the lab's supervisor does not start it again: the
# playbook restarts it with its runtime, `tradeops lab restart postgres|redis`); --clear starts it. redis-oom caps
# Redis's memory just above its use (noeviction) and fills it with cache keys (cache:*) until writes are refused
# with OOM, as a runaway cache would; --clear deletes those keys and lifts the cap.
FAULT_PG_DOWN = "pg-down"
FAULT_REDIS_DOWN = "redis-down"
FAULT_REDIS_OOM = "redis-oom"
# pooler-stuck stops the lab's pgbouncer (SIGSTOP): it keeps its port and its clients' connections and answers
# nothing, as a wedged pooler does; the engines' orders wait. --clear resumes it (SIGCONT); `tradeops lab restart
# pgbouncer` kills and starts it, as systemd's restart would.
FAULT_POOLER_STUCK = "pooler-stuck"
SERVICE_FAULTS: tuple[str, ...] = (FAULT_PG_DOWN, FAULT_REDIS_DOWN, FAULT_REDIS_OOM, FAULT_POOLER_STUCK)
# what `tradeops lab restart` takes besides engines (ws-feed: the exchange's market-data WebSocket service)
SERVICES: tuple[str, ...] = ("postgres", "redis", "pgbouncer", "ws-feed")
REDIS_CACHE_PREFIX = "cache:"  # the lab's cache keys (what redis-oom fills Redis with)

# Security faults: a task of the engines process, lab-wide, optionally limited to some engines.
FAULT_LEAKED_SECRET = "leaked-secret"  # a rogue client keeps using the admin token current at injection
SECURITY_FAULTS: tuple[str, ...] = (FAULT_LEAKED_SECRET,)

MAX_ENGINES = 2000  # names have three digits up to 999 engines, four from 1,000 (engine-0001 ... engine-1000)


def default_lab_dir() -> Path:
    """The lab dir when none is given: ``$TRADEOPS_LAB_DIR``, else ``./.lab`` (relative to the cwd)."""
    env = os.environ.get(ENV_LAB_DIR)
    return Path(os.path.abspath(env if env else DEFAULT_LAB_DIRNAME))


def engine_name(index: int, count: int = 0) -> str:
    """Name of the engine at 0-based ``index`` in a lab of ``count``: ``engine-001`` ..., as many digits as the
    largest name needs (at least three), so the names sort as the engines are numbered."""
    return f"engine-{index + 1:0{max(3, len(str(count)))}d}"


def restart_argv(lab_dir: Path) -> list[str]:
    """The argv prefix that restarts engines of the lab in ``lab_dir``: append engine names and run it.

    Uses this interpreter (``python -m tradeops.cli``), so it works wherever the lab was started from,
    without relying on ``tradeops`` being on the PATH.
    """
    return [sys.executable, "-m", "tradeops.cli", "lab", "restart", "--dir", str(lab_dir)]


# Each engine runs one strategy for one desk, at one venue: the groups a scoped halt can name (the lab
# inventory puts each engine in the groups strategy_<strategy>, desk_<desk> and venue_<venue>).
STRATEGIES: tuple[str, ...] = ("momentum", "mean_reversion", "market_making")
DESKS: tuple[str, ...] = ("a", "b")
VENUE = "kraken"


def engine_groups(index: int) -> dict[str, str]:
    """The strategy, desk and venue of the engine at 0-based ``index`` (strategies cycle; desks alternate)."""
    return {"strategy": STRATEGIES[index % len(STRATEGIES)], "desk": DESKS[index % len(DESKS)], "venue": VENUE}


def engine_redis_key(name: str) -> str:
    return f"{GLOBAL_HALT_KEY}:{name}"


def engine_methods(primary: str) -> list[str]:
    """Ordered halt methods for an engine: its primary, then the fallback (file, or redis for file engines)."""
    return [primary, REDIS if primary == FILE else FILE]


def parse_mix(mix: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate a primary-method cycle (``"redis,file"`` or a sequence); ``None`` gives the default."""
    if mix is None:
        return DEFAULT_MIX
    items = [m.strip() for m in mix.split(",")] if isinstance(mix, str) else [str(m).strip() for m in mix]
    items = [m for m in items if m]
    if not items:
        raise LabInputError("the method mix is empty")
    unknown = [m for m in items if m not in HALT_METHODS]
    if unknown:
        raise LabInputError(f"unknown halt method(s) in mix: {', '.join(unknown)} (known: {', '.join(HALT_METHODS)})")
    return tuple(items)


def parse_fault_specs(specs: Iterable[str]) -> dict[str, list[str]]:
    """Parse CLI fault specs ``engine-003=hang`` (``*=latency`` for every engine) into ``{engine: [faults]}``."""
    result: dict[str, list[str]] = {}
    for spec in specs:
        engine, sep, fault = spec.partition("=")
        engine, fault = engine.strip(), fault.strip()
        if not sep or not engine or not fault:
            raise LabInputError(f"bad fault spec {spec!r}: expected ENGINE=FAULT, e.g. engine-003=hang")
        result.setdefault(engine, [])
        if fault not in result[engine]:
            result[engine].append(fault)
    return result


def validate_fault(fault: str, *, allow_all: bool = False) -> str:
    """An engine fault's name (or ``"*"`` with ``allow_all``); LabInputError for anything else."""
    if fault in FAULTS or (allow_all and fault == ALL):
        return fault
    if fault in DB_FAULTS or fault in SERVICE_FAULTS:
        raise LabInputError(
            f"{fault} is a {'database' if fault in DB_FAULTS else 'service'} fault: it applies to the whole lab "
            "and takes no engine names; "
            f"inject it on a running lab with `tradeops lab inject {fault}`"
        )
    raise LabInputError(
        f"unknown fault {fault!r} (engine faults: {', '.join(FAULTS)}; database faults: {', '.join(DB_FAULTS)}; "
        f"service faults: {', '.join(SERVICE_FAULTS)}; "
        f"security faults: {', '.join(SECURITY_FAULTS)})"
    )


def normalize_faults(faults: Mapping[str, str | Iterable[str]] | None, names: Sequence[str]) -> dict[str, list[str]]:
    """Validate ``{engine or "*": fault(s)}`` against the engine names; returns ``{engine: [faults]}``."""
    result: dict[str, list[str]] = {name: [] for name in names}
    for engine, value in (faults or {}).items():
        items = [value] if isinstance(value, str) else list(value)
        targets = list(names) if engine == ALL else [engine]
        if engine != ALL and engine not in result:
            raise LabInputError(f"fault for unknown engine {engine!r} (engines are {names[0]}..{names[-1]})")
        for fault in items:
            validate_fault(fault)
            for target in targets:
                if fault not in result[target]:
                    result[target].append(fault)
    return result


def build_engine_specs(
    lab_dir: Path,
    count: int,
    mix: str | Sequence[str] | None = None,
    faults: Mapping[str, str | Iterable[str]] | None = None,
    host: str = LOOPBACK,
) -> list[dict[str, Any]]:
    """The ``engines`` entries of the state file, without ports (the OS picks those)."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_ENGINES:
        raise LabInputError(f"the number of engines must be between 1 and {MAX_ENGINES}, got {count!r}")
    cycle = parse_mix(mix)
    names = [engine_name(i, count) for i in range(count)]
    per_engine = normalize_faults(faults, names)
    return [
        {
            "name": name,
            "host": host,
            "port": 0,
            "dir": str(lab_dir / "engines" / name),
            "methods": engine_methods(cycle[i % len(cycle)]),
            "redis_key": engine_redis_key(name),
            "faults": per_engine[name],
            **engine_groups(i),
        }
        for i, name in enumerate(names)
    ]


def new_secret() -> str:
    """A random url-safe token (32 bytes of entropy)."""
    return secrets.token_urlsafe(32)


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write JSON to ``path`` atomically (temp file in the same dir + rename), created with ``mode``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """Load a JSON object from ``path``; ``None`` if the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise LabError(f"{path} does not hold a JSON object")
    return data


def _env_value(raw: str) -> str:
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def parse_secrets_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines (blank lines and ``#`` comments skipped, ``export`` and quotes allowed)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = _env_value(value)
    return out


def read_secrets_env(path: Path) -> dict[str, str] | None:
    """The secrets file as ``{KEY: value}``; ``None`` if it does not exist. LabError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from exc
    return parse_secrets_env(text)


def write_secrets_env(path: Path, values: Mapping[str, str]) -> None:
    """Write ``KEY=value`` lines atomically with mode 0600 (values must be single-line, unquoted tokens)."""
    path = Path(path)
    for key, value in values.items():
        if not key.isidentifier() or any(c in value for c in "\r\n\"' "):
            raise LabInputError(f"secrets file entry {key!r}: keys are identifiers, values single tokens")
    body = "".join(f"{k}={v}\n" for k, v in values.items())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fingerprint(secret: str) -> str:
    """A short, non-reversible name for a secret (sha256 prefix): safe to log and to record."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:12]
