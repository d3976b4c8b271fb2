"""The lab's database faults: lab-wide, injected into its PostgreSQL (no engine names).

* ``corrupt-rows`` (one-shot, manager side, ``corrupt_rows``): a known number of bad rows of each kind
  the integrity checks look for, no row hitting two kinds, so a scanner's counts can be asserted exactly.
  The lab never repairs them: that is the playbook's job.
* ``index-corruption`` (one-shot, manager side, ``corrupt_index_page``): bytes of a leaf page of
  ``trades_id_idx`` overwritten while the cluster is stopped, so amcheck's ``bt_index_check`` fails.
  Cleared by ``REINDEX INDEX``.
* ``long-query`` and ``blocking-lock`` (``SessionFaults``): background sessions held by threads of the
  engines process, so they outlive the CLI call that injected them and end with the lab.

Every database call here has a statement (and, where it can wait on a lock, lock) timeout; every wait
is bounded.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from .errors import LabError, LabInputError
from .postgres import dsn as pg_dsn
from .procs import wait_for
from .state import FAULT_BLOCKING_LOCK, FAULT_LONG_QUERY, FAULT_PG_SATURATION, SESSION_FAULTS

log = logging.getLogger("tradeops.lab.dbfaults")

# -- corrupt-rows --------------------------------------------------------------------------------------------

NULL_PRICES = "null_prices"
INVALID_STATUS = "invalid_status"
POSITION_MISMATCH = "position_mismatch"
ORPHAN_TRADES = "orphan_trades"
DUPLICATE_IDS = "duplicate_ids"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
FUTURE_TIMESTAMPS = "future_timestamps"
CORRUPT_KINDS: tuple[str, ...] = (
    NULL_PRICES,
    INVALID_STATUS,
    POSITION_MISMATCH,
    ORPHAN_TRADES,
    DUPLICATE_IDS,
    NON_POSITIVE_QUANTITY,
    FUTURE_TIMESTAMPS,
)
# Distinct small counts: a scanner that mixes two kinds up cannot pass by accident.
DEFAULT_CORRUPT_COUNTS: dict[str, int] = {
    NULL_PRICES: 3,
    INVALID_STATUS: 4,
    POSITION_MISMATCH: 2,
    ORPHAN_TRADES: 5,
    DUPLICATE_IDS: 2,
    NON_POSITIVE_QUANTITY: 3,
    FUTURE_TIMESTAMPS: 2,
}
MAX_CORRUPT_COUNT = 40  # per kind; a plan needing more clean rows than are left is refused (LabInputError)
VALID_STATUSES = ("open", "closed", "cancelled")
INVALID_STATUSES = ("pending", "filled", "rejected", "unknown")  # non-NULL, not a case variant of a valid one
CORRUPT_LOCK_TIMEOUT = "2s"  # a blocking-lock fault on trades makes corrupt-rows fail fast, not hang

KIND_DESCRIPTIONS: dict[str, str] = {
    NULL_PRICES: "positions whose entry_price (even ones) or current_price (odd ones) was set to NULL",
    INVALID_STATUS: f"open/cancelled trades whose status was set to one of {', '.join(INVALID_STATUSES)}",
    POSITION_MISMATCH: "positions whose quantity was raised above the sum of their closed trades",
    ORPHAN_TRADES: "open/cancelled trades moved to account ids that do not exist in accounts",
    DUPLICATE_IDS: "ids that appear exactly twice: another row of the same table was renamed to them "
    "(renamed_from); trades get the first half, rounded up, positions the rest",
    NON_POSITIVE_QUANTITY: "open/cancelled trades whose quantity was set to 0 (even ones) or negated (odd ones)",
    FUTURE_TIMESTAMPS: "trades.created_at / positions.updated_at set 30 days or more into the future; trades "
    "get the first half, rounded up, positions the rest",
}

# Rows no check flags, each at most once per (account, symbol) position, under every reading of the
# checks: per row or per (account_id, symbol), plain or signed sum of the closed trades.
_CLEAN_POSITIONS_SQL = """
SELECT p.id FROM positions p
WHERE p.entry_price IS NOT NULL AND p.current_price IS NOT NULL
  AND p.quantity > 0 AND p.updated_at <= now()
  AND p.account_id IN (SELECT id FROM accounts)
  AND p.id IN (SELECT id FROM positions GROUP BY id HAVING count(*) = 1)
  AND (p.account_id, p.symbol) IN (SELECT account_id, symbol FROM positions GROUP BY 1, 2 HAVING count(*) = 1)
  AND p.quantity = (SELECT coalesce(sum(t.quantity), 0) FROM trades t
                    WHERE t.account_id = p.account_id AND t.symbol = p.symbol AND t.status = 'closed')
  AND NOT EXISTS (SELECT 1 FROM trades t WHERE t.account_id = p.account_id AND t.symbol = p.symbol
                  AND t.status = 'closed' AND t.side IS DISTINCT FROM 'buy')
ORDER BY p.id
"""
# Only trades that do not count towards a position: changing them cannot upset position_mismatch.
_CLEAN_TRADES_SQL = """
SELECT t.id FROM trades t
WHERE t.status IN ('open', 'cancelled') AND t.quantity > 0 AND t.price > 0 AND t.created_at <= now()
  AND t.account_id IN (SELECT id FROM accounts)
  AND t.id IN (SELECT id FROM trades GROUP BY id HAVING count(*) = 1)
ORDER BY t.id
"""


def corrupt_plan(
    kinds: str | Sequence[str] | None = None, count: int | Mapping[str, int] | None = None
) -> dict[str, int]:
    """How many bad rows of each kind: ``{kind: n}``, in ``CORRUPT_KINDS`` order.

    ``kinds``: names (a list or ``"a,b"``), default all. ``count``: one number for every chosen kind, or
    ``{kind: n}`` overriding the defaults (``"*"`` for every chosen kind, a kind's own entry wins).
    """
    if kinds is None:
        chosen = list(CORRUPT_KINDS)
    else:
        items = kinds.split(",") if isinstance(kinds, str) else [str(k) for k in kinds]
        chosen = [k.strip() for k in items if k.strip()]
        if not chosen:
            raise LabInputError("no corruption kinds given")
        unknown = [k for k in chosen if k not in CORRUPT_KINDS]
        if unknown:
            raise LabInputError(f"unknown corruption kind(s): {', '.join(unknown)} (known: {', '.join(CORRUPT_KINDS)})")
    plan = {k: DEFAULT_CORRUPT_COUNTS[k] for k in CORRUPT_KINDS if k in chosen}
    if count is None:
        pass
    elif isinstance(count, Mapping):
        bogus = [str(k) for k in count if k != "*" and k not in CORRUPT_KINDS]
        if bogus:
            raise LabInputError(f"unknown corruption kind(s): {', '.join(bogus)} (known: {', '.join(CORRUPT_KINDS)})")
        unknown = [k for k in count if k != "*" and k not in plan]
        if unknown:
            raise LabInputError(
                f"count given for kind(s) not being injected: {', '.join(map(str, unknown))} "
                f"(injecting: {', '.join(plan)})"
            )
        if "*" in count:
            plan = dict.fromkeys(plan, count["*"])
        plan.update({k: v for k, v in count.items() if k != "*"})
    else:
        plan = dict.fromkeys(plan, count)
    for kind, n in plan.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CORRUPT_COUNT:
            raise LabInputError(f"count for {kind} must be an integer from 1 to {MAX_CORRUPT_COUNT}, got {n!r}")
    return plan


def _split(n: int) -> tuple[int, int]:
    """``n`` rows over (trades, positions): trades get the first half, rounded up."""
    return (n + 1) // 2, n // 2


def corrupt_rows(
    conn: psycopg2.extensions.connection, plan: Mapping[str, int], rng: random.Random | None = None
) -> dict[str, Any]:
    """Inject ``plan`` (see ``corrupt_plan``) in one transaction; returns ``{kind: {"count", "ids",
    "what"}}`` where ``ids`` maps each table to the affected ids (for duplicate_ids: the ids that now
    appear twice, plus ``renamed_from``). Only rows no check flags are picked, each for one kind only.
    """
    rng = rng or random.Random()
    dup_t, dup_p = _split(plan.get(DUPLICATE_IDS, 0))
    fut_t, fut_p = _split(plan.get(FUTURE_TIMESTAMPS, 0))
    need_positions = {
        NULL_PRICES: plan.get(NULL_PRICES, 0),
        POSITION_MISMATCH: plan.get(POSITION_MISMATCH, 0),
        DUPLICATE_IDS: 2 * dup_p,
        FUTURE_TIMESTAMPS: fut_p,
    }
    need_trades = {
        INVALID_STATUS: plan.get(INVALID_STATUS, 0),
        ORPHAN_TRADES: plan.get(ORPHAN_TRADES, 0),
        NON_POSITIVE_QUANTITY: plan.get(NON_POSITIVE_QUANTITY, 0),
        DUPLICATE_IDS: 2 * dup_t,
        FUTURE_TIMESTAMPS: fut_t,
    }
    result: dict[str, Any] = {}
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{CORRUPT_LOCK_TIMEOUT}'")
            cur.execute("SET LOCAL statement_timeout = '30s'")
            cur.execute(_CLEAN_POSITIONS_SQL)
            positions = [int(r[0]) for r in cur.fetchall()]
            cur.execute(_CLEAN_TRADES_SQL)
            trades = [int(r[0]) for r in cur.fetchall()]
            picked_p = _pick(rng, positions, need_positions, "positions")
            picked_t = _pick(rng, trades, need_trades, "open/cancelled trades")

            def update(sql: str, params: tuple[Any, ...], rows: int = 1) -> None:
                cur.execute(sql, params)
                if cur.rowcount != rows:
                    raise LabError(f"corrupt-rows: {sql!r} changed {cur.rowcount} row(s), expected {rows}")

            if NULL_PRICES in plan:
                ids = picked_p[NULL_PRICES]
                for i, pid in enumerate(ids):
                    column = "entry_price" if i % 2 == 0 else "current_price"
                    update(f"UPDATE positions SET {column} = NULL WHERE id = %s", (pid,))
                result[NULL_PRICES] = {"count": len(ids), "ids": {"positions": ids}}
            if INVALID_STATUS in plan:
                ids = picked_t[INVALID_STATUS]
                for i, tid in enumerate(ids):
                    update("UPDATE trades SET status = %s WHERE id = %s", (INVALID_STATUSES[i % 4], tid))
                result[INVALID_STATUS] = {"count": len(ids), "ids": {"trades": ids}}
            if POSITION_MISMATCH in plan:
                ids = picked_p[POSITION_MISMATCH]
                for i, pid in enumerate(ids):
                    update("UPDATE positions SET quantity = quantity + %s WHERE id = %s", (i + 1, pid))
                result[POSITION_MISMATCH] = {"count": len(ids), "ids": {"positions": ids}}
            if ORPHAN_TRADES in plan:
                ids = picked_t[ORPHAN_TRADES]
                cur.execute("SELECT coalesce(max(id), 0) + 1000 FROM accounts")
                missing = int(cur.fetchone()[0])
                for i, tid in enumerate(ids):
                    update("UPDATE trades SET account_id = %s WHERE id = %s", (missing + i, tid))
                result[ORPHAN_TRADES] = {"count": len(ids), "ids": {"trades": ids}}
            if DUPLICATE_IDS in plan:
                ids_by_table: dict[str, list[int]] = {}
                renamed: dict[str, list[int]] = {}
                for table, pool in (("trades", picked_t[DUPLICATE_IDS]), ("positions", picked_p[DUPLICATE_IDS])):
                    targets, sources = pool[0::2], pool[1::2]
                    for target, source in zip(targets, sources, strict=True):
                        update(f"UPDATE {table} SET id = %s WHERE id = %s", (target, source))
                    if targets:
                        ids_by_table[table], renamed[table] = targets, sources
                count = sum(len(v) for v in ids_by_table.values())
                result[DUPLICATE_IDS] = {"count": count, "ids": ids_by_table, "renamed_from": renamed}
            if FUTURE_TIMESTAMPS in plan:
                ids_by_table = {}
                for table, column, pool in (
                    ("trades", "created_at", picked_t[FUTURE_TIMESTAMPS]),
                    ("positions", "updated_at", picked_p[FUTURE_TIMESTAMPS]),
                ):
                    for i, rid in enumerate(pool):
                        update(
                            f"UPDATE {table} SET {column} = now() + interval '30 days' + %s * interval '1 hour' "
                            "WHERE id = %s",
                            (i, rid),
                        )
                    if pool:
                        ids_by_table[table] = pool
                result[FUTURE_TIMESTAMPS] = {"count": sum(len(v) for v in ids_by_table.values()), "ids": ids_by_table}
            if NON_POSITIVE_QUANTITY in plan:
                ids = picked_t[NON_POSITIVE_QUANTITY]
                for i, tid in enumerate(ids):
                    update(f"UPDATE trades SET quantity = {'0' if i % 2 == 0 else '-quantity'} WHERE id = %s", (tid,))
                result[NON_POSITIVE_QUANTITY] = {"count": len(ids), "ids": {"trades": ids}}
    except psycopg2.errors.LockNotAvailable as exc:
        raise LabError(
            f"corrupt-rows: positions or trades is locked (lock_timeout {CORRUPT_LOCK_TIMEOUT}); is the "
            "blocking-lock fault active?"
        ) from exc
    except psycopg2.Error as exc:
        raise LabError(f"corrupt-rows failed: {exc}".strip()) from exc
    for kind, entry in result.items():
        entry["what"] = KIND_DESCRIPTIONS[kind]
    return {k: result[k] for k in CORRUPT_KINDS if k in result}


def _pick(rng: random.Random, pool: list[int], need: Mapping[str, int], what: str) -> dict[str, list[int]]:
    """Disjoint random samples of ``pool``, ``need[kind]`` ids per kind (each sorted)."""
    total = sum(need.values())
    if total > len(pool):
        raise LabInputError(f"corrupt-rows needs {total} clean {what}, but only {len(pool)} are left; ask for fewer")
    chosen = rng.sample(pool, total)
    out: dict[str, list[int]] = {}
    start = 0
    for kind, n in need.items():
        part = chosen[start : start + n]
        # duplicate_ids pairs (target, source) keep their pairing; the other kinds are sorted for reading.
        out[kind] = part if kind == DUPLICATE_IDS else sorted(part)
        start += n
    return out


# -- index-corruption ----------------------------------------------------------------------------------------

INDEX_TARGET = "trades_id_idx"  # a btree on trades (id bigint)
INDEX_TARGET_TABLE = "trades"
CORRUPT_KEY = 2**62  # larger than every id: the item breaks the page's key order and its high key
_PAGE_HEADER = 24
_BT_OPAQUE = 16  # btpo_prev, btpo_next, btpo_level (uint32), btpo_flags, btpo_cycleid (uint16)
_BTP_LEAF, _BTP_DELETED, _BTP_HALF_DEAD = 1, 4, 16
_LP_NORMAL = 1
_INDEX_SIZE_MASK, _INDEX_ALT_TID_MASK, _INDEX_NULL_MASK = 0x1FFF, 0x2000, 0x8000
_INT8_TUPLE = 16  # IndexTupleData (8) + one int8 key


def _leaf_target(page: bytes, block_size: int) -> tuple[int, int] | None:
    """(item number, offset in page) of the middle data item of a btree leaf page of int8 keys, if any."""
    lower, upper, special = struct.unpack_from("<HHH", page, 12)
    if special != block_size - _BT_OPAQUE or not _PAGE_HEADER <= lower <= upper <= special:
        return None
    _prev, nxt, _level, flags = struct.unpack_from("<IIIH", page, special)
    if not flags & _BTP_LEAF or flags & (_BTP_DELETED | _BTP_HALF_DEAD):
        return None
    nitems = (lower - _PAGE_HEADER) // 4
    first = 2 if nxt != 0 else 1  # item 1 of a page with a right sibling is its high key
    if nitems - first + 1 < 3:
        return None
    item = (first + nitems) // 2
    (lp,) = struct.unpack_from("<I", page, _PAGE_HEADER + 4 * (item - 1))
    off, lp_flags, length = lp & 0x7FFF, (lp >> 15) & 3, lp >> 17
    if lp_flags != _LP_NORMAL or length != _INT8_TUPLE or not upper <= off <= special - _INT8_TUPLE:
        return None
    (t_info,) = struct.unpack_from("<H", page, off + 6)
    if t_info & (_INDEX_NULL_MASK | _INDEX_ALT_TID_MASK) or t_info & _INDEX_SIZE_MASK != _INT8_TUPLE:
        return None
    return item, off


def corrupt_index_page(datadir: str | os.PathLike[str], relation_file: str, block_size: int) -> dict[str, Any]:
    """Overwrite the key of the middle item of the first usable leaf page (block 1 in the lab) of a btree
    index on one ``bigint`` column, in the relation file ``relation_file`` (``pg_relation_filepath``,
    relative to ``datadir``). The cluster MUST be stopped. Refuses any file outside ``datadir``.

    Returns what was done: path, block, item, byte offset in the file, original and written bytes (hex).
    """
    if sys.byteorder != "little":
        raise LabError("index-corruption only knows little-endian page layouts")
    root = Path(datadir).resolve(strict=True)
    if os.path.isabs(relation_file) or ".." in Path(relation_file).parts:
        raise LabError(f"refusing relation file {relation_file!r}: not a path relative to the data directory")
    path = (root / relation_file).resolve(strict=True)
    if not path.is_relative_to(root) or path == root:
        raise LabError(f"refusing to touch {path}: it is not inside the lab's data directory {root}")
    if not (root / "PG_VERSION").is_file():
        raise LabError(f"{root} is not a PostgreSQL data directory")
    if (root / "postmaster.pid").exists():
        raise LabError(f"{root}/postmaster.pid exists: stop the cluster before corrupting its files")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LabError(f"cannot open {path}: {exc}") from exc
    with os.fdopen(fd, "r+b") as fh:
        nblocks = os.fstat(fh.fileno()).st_size // block_size
        for block in range(1, nblocks):  # block 0 is the metapage
            fh.seek(block * block_size)
            page = fh.read(block_size)
            target = _leaf_target(page, block_size)
            if target is None:
                continue
            item, off = target
            offset = block * block_size + off + 8  # the key follows the 8-byte IndexTupleData header
            original = page[off + 8 : off + 16]
            written = struct.pack("<q", CORRUPT_KEY)
            fh.seek(offset)
            fh.write(written)
            fh.flush()
            os.fsync(fh.fileno())
            return {
                "path": str(path),
                "relation_file": relation_file,
                "block": block,
                "item": item,
                "offset": offset,
                "original": original.hex(),
                "written": written.hex(),
                "key_before": struct.unpack("<q", original)[0],
                "key_after": CORRUPT_KEY,
            }
    raise LabError(f"no btree leaf page with int8 keys and 3+ items in {path} ({nblocks} blocks)")


def locate_index(conn: psycopg2.extensions.connection, index: str) -> tuple[str, int, str]:
    """Where ``index`` lives on disk: (its relation file, relative to the data directory; the block size;
    the data directory)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pg_relation_filepath(%s::regclass), current_setting('block_size')::int,"
            " current_setting('data_directory')",
            (index,),
        )
        relation_file, block_size, data_directory = cur.fetchone()
    return str(relation_file), int(block_size), str(data_directory)


def check_index(conn: psycopg2.extensions.connection, index: str) -> dict[str, Any]:
    """``bt_index_check(index)`` in a transaction that is rolled back (the amcheck extension is created
    for the check only if missing, and not kept). ``{"status": "ok" | "corrupt" | "unavailable",
    "error": message or None}``."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = '30s'")
            cur.execute("SET LOCAL lock_timeout = '10s'")
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            except psycopg2.Error as exc:
                return {"status": "unavailable", "error": str(exc).strip()}
            try:
                cur.execute("SELECT bt_index_check(%s::regclass)", (index,))
            except psycopg2.errors.IndexCorrupted as exc:
                return {"status": "corrupt", "error": str(exc).strip()}
            return {"status": "ok", "error": None}
    except psycopg2.Error as exc:
        raise LabError(f"amcheck of {index} failed: {exc}".strip()) from exc
    finally:
        conn.rollback()


def reindex(conn: psycopg2.extensions.connection, index: str) -> None:
    """``REINDEX INDEX index`` (lock timeout 10 s, statement timeout 60 s)."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            cur.execute("SET LOCAL statement_timeout = '60s'")
            cur.execute(f"REINDEX INDEX {psycopg2.extensions.quote_ident(index, cur)}")
    except psycopg2.errors.LockNotAvailable as exc:
        raise LabError(f"REINDEX INDEX {index}: its table is locked (is the blocking-lock fault active?)") from exc
    except psycopg2.Error as exc:
        raise LabError(f"REINDEX INDEX {index} failed: {exc}".strip()) from exc


# -- long-query, blocking-lock and pg-saturation: sessions held by the engines process ------------------------

LONG_QUERY_APP = "tradeops-lab-long-query"
BLOCKER_APP = "tradeops-lab-blocker"
BLOCKED_APP = "tradeops-lab-blocked"
LONG_QUERY_SECONDS = 600
MAX_LONG_QUERY_SECONDS = 86400
LOCKED_TABLE = "trades"
SESSION_START_TIMEOUT = 5.0  # until the query shows in pg_stat_activity / the waiter in pg_locks
SESSION_END_TIMEOUT = 5.0  # per step of ending a session (cancel, terminate, backend gone)
# A backend notices within this long that its client died (PostgreSQL 14+), even in pg_sleep or a lock wait.
CLIENT_CHECK = "-c client_connection_check_interval=1000"


def _connect(pg: Mapping[str, Any], app: str, options: str = "") -> psycopg2.extensions.connection:
    try:
        conn = psycopg2.connect(
            pg_dsn(dict(pg)),
            application_name=app,
            options=f"-c statement_timeout=30000 {options}".strip(),
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
    except psycopg2.Error as exc:
        raise LabError(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
    return conn


def _session_connect(pg: Mapping[str, Any], app: str) -> psycopg2.extensions.connection:
    """A fault session: no statement, lock or idle-in-transaction timeout; ends if its client dies."""
    opts = "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    try:
        return _connect(pg, app, f"{opts} {CLIENT_CHECK}")
    except LabError:  # PostgreSQL < 14 does not know client_connection_check_interval
        return _connect(pg, app, opts)


class _Statement:
    """One statement running on its own connection in a daemon thread."""

    def __init__(self, conn: psycopg2.extensions.connection, sql: str, params: tuple[Any, ...], name: str) -> None:
        self.conn = conn
        self.pid: int = conn.get_backend_pid()
        self.sql = sql
        self.outcome: str | None = None  # finished, cancelled, terminated or error: ...
        self.done = threading.Event()
        self._params = params
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.sql, self._params)
            self.outcome = "finished"
        except psycopg2.errors.QueryCanceled:
            self.outcome = "cancelled"
        except (psycopg2.errors.AdminShutdown, psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            self.outcome = f"terminated: {str(exc).strip()}"
        except psycopg2.Error as exc:
            self.outcome = f"error: {str(exc).strip()}"
        finally:
            self.done.set()

    def stop(self, admin: psycopg2.extensions.connection | None) -> None:
        """Cancel the statement (``pg_cancel_backend``, else libpq's cancel, then ``pg_terminate_backend``)
        and close the connection once the thread has finished."""
        if not self.done.is_set():
            _signal_backend(admin, "pg_cancel_backend", self.pid, lambda: self.conn.cancel())
        if not self.done.wait(SESSION_END_TIMEOUT):
            _signal_backend(admin, "pg_terminate_backend", self.pid, lambda: self.conn.cancel())
            self.done.wait(SESSION_END_TIMEOUT)
        if self.done.is_set():
            _close(self.conn)
        else:  # psycopg2 cannot close a connection a thread is still using; the daemon thread is abandoned
            log.error("session %s (backend %s) did not end", self._thread.name, self.pid)


def _signal_backend(
    admin: psycopg2.extensions.connection | None, function: str, pid: int, fallback: Any = None
) -> None:
    if admin is not None:
        try:
            with admin.cursor() as cur:
                cur.execute(f"SELECT {function}(%s)", (pid,))
            return
        except psycopg2.Error as exc:
            log.warning("%s(%s) failed: %s", function, pid, str(exc).strip())
    if fallback is not None:
        try:
            fallback()
        except psycopg2.Error:
            pass


def _close(conn: psycopg2.extensions.connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass


def _activity(admin: psycopg2.extensions.connection, pids: Sequence[int]) -> dict[int, dict[str, Any]]:
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pid, state, application_name, wait_event_type, extract(epoch FROM query_start)::float8,"
            " extract(epoch FROM now() - query_start)::float8, query, pg_blocking_pids(pid)"
            " FROM pg_stat_activity WHERE pid = ANY(%s)",
            (list(pids),),
        )
        return {
            int(pid): {
                "state": state,
                "application_name": app,
                "wait_event_type": wait,
                "query_start": start,
                "query_age_s": round(age, 3) if age is not None else None,
                "query": query,
                "blocked_by": list(blockers or []),
            }
            for pid, state, app, wait, start, age, query, blockers in cur.fetchall()
        }


class _LongQuery:
    def __init__(self, pg: Mapping[str, Any], seconds: float) -> None:
        self.seconds = seconds
        self.started_at = time.time()
        conn = _session_connect(pg, LONG_QUERY_APP)
        conn.autocommit = True
        self.stmt = _Statement(conn, "SELECT pg_sleep(%s)", (seconds,), "db-fault-long-query")
        self.stmt.start()

    def ready(self, admin: psycopg2.extensions.connection) -> bool:
        row = _activity(admin, [self.stmt.pid]).get(self.stmt.pid)
        return bool(row and row["state"] == "active" and "pg_sleep" in (row["query"] or ""))

    def active(self, live: Mapping[int, Mapping[str, Any]] | None) -> bool:
        if self.stmt.done.is_set():
            return False
        return live is None or self.stmt.pid in live

    def describe(self, live: Mapping[int, Mapping[str, Any]] | None) -> dict[str, Any]:
        row = (live or {}).get(self.stmt.pid)
        return {
            "fault": FAULT_LONG_QUERY,
            "active": self.active(live),
            "backend_pid": self.stmt.pid,
            "application_name": LONG_QUERY_APP,
            "query": f"SELECT pg_sleep({self.seconds:g})",
            "seconds": self.seconds,
            "started_at": self.started_at,
            "query_age_s": row["query_age_s"] if row else None,
            "outcome": self.stmt.outcome,
        }

    def pids(self) -> list[int]:
        return [self.stmt.pid]

    def end(self, admin: psycopg2.extensions.connection | None) -> None:
        self.stmt.stop(admin)


class _BlockingLock:
    def __init__(self, pg: Mapping[str, Any]) -> None:
        self.started_at = time.time()
        self.holder: psycopg2.extensions.connection | None = _session_connect(pg, BLOCKER_APP)
        self.holder_pid: int = self.holder.get_backend_pid()
        self.waiter: _Statement | None = None
        try:
            with self.holder.cursor() as cur:  # psycopg2 opens the transaction; it stays open (idle in it)
                cur.execute("SET LOCAL lock_timeout = '5s'")
                cur.execute(f"LOCK TABLE {LOCKED_TABLE} IN ACCESS EXCLUSIVE MODE")
            conn = _session_connect(pg, BLOCKED_APP)
            conn.autocommit = True
            self.waiter = _Statement(conn, f"SELECT count(*) FROM {LOCKED_TABLE}", (), "db-fault-blocked")
            self.waiter.start()
        except (psycopg2.Error, LabError) as exc:
            self.end(None)
            raise LabError(f"blocking-lock: cannot lock {LOCKED_TABLE}: {str(exc).strip()}") from exc

    def ready(self, admin: psycopg2.extensions.connection) -> bool:
        if self.waiter is None:
            return False
        with admin.cursor() as cur:
            cur.execute(
                "SELECT %s = ANY(pg_blocking_pids(l.pid)) FROM pg_locks l WHERE l.pid = %s AND NOT l.granted",
                (self.holder_pid, self.waiter.pid),
            )
            return any(row[0] for row in cur.fetchall())

    def active(self, live: Mapping[int, Mapping[str, Any]] | None) -> bool:
        if self.holder is None or self.holder.closed:
            return False
        if live is None:
            return True
        row = live.get(self.holder_pid)
        return bool(row and row["state"] == "idle in transaction")

    def describe(self, live: Mapping[int, Mapping[str, Any]] | None) -> dict[str, Any]:
        waiter_pid = self.waiter.pid if self.waiter else None
        row = (live or {}).get(waiter_pid) if waiter_pid else None
        return {
            "fault": FAULT_BLOCKING_LOCK,
            "active": self.active(live),
            "table": LOCKED_TABLE,
            "mode": "AccessExclusiveLock",
            "blocker_pid": self.holder_pid,
            "blocker_application_name": BLOCKER_APP,
            "waiter_pid": waiter_pid,
            "waiter_application_name": BLOCKED_APP,
            "waiter_query": self.waiter.sql if self.waiter else None,
            "waiter_blocked_by": row["blocked_by"] if row else [],
            "waiter_outcome": self.waiter.outcome if self.waiter else None,
            "started_at": self.started_at,
        }

    def pids(self) -> list[int]:
        return [self.holder_pid] + ([self.waiter.pid] if self.waiter else [])

    def end(self, admin: psycopg2.extensions.connection | None) -> None:
        """Roll the holder back (the waiter's count then completes), then end the waiter."""
        if self.holder is not None:
            try:
                self.holder.rollback()
            except psycopg2.Error:
                pass
            _close(self.holder)
            self.holder = None
        if self.waiter is not None:
            if not self.waiter.done.wait(SESSION_END_TIMEOUT):
                log.warning("blocking-lock: the waiter (backend %s) still waits; cancelling it", self.waiter.pid)
            self.waiter.stop(admin)


SATURATION_APP = "tradeops-lab-reporting"
SATURATION_ROLE = "tradeops_lab_reporting"  # not a superuser: it takes the ordinary connection slots
SATURATION_SECONDS = 600


class _Saturation:
    """A runaway reporting job: connections of an ordinary role, each in ``SELECT pg_sleep``, until only the
    ``superuser_reserved_connections`` are left. New ordinary connections are refused ("remaining connection slots
    are reserved"); a superuser (the runbook's psql -U postgres, the collection's checks) still gets in."""

    def __init__(self, pg: Mapping[str, Any], admin: psycopg2.extensions.connection) -> None:
        self.started_at = time.time()
        self.statements: list[_Statement] = []
        password = secrets.token_urlsafe(18)
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (SATURATION_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {SATURATION_ROLE} LOGIN NOSUPERUSER PASSWORD %s", (password,))
            cur.execute("SELECT current_setting('max_connections')::int "
                        "- current_setting('superuser_reserved_connections')::int "
                        "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')")
            free = int(cur.fetchone()[0])
        role = dict(pg, user=SATURATION_ROLE, password=password)
        for i in range(max(free, 0)):
            try:
                conn = _session_connect(role, SATURATION_APP)
            except LabError:
                break  # the slots are full
            conn.autocommit = True
            stmt = _Statement(conn, "SELECT pg_sleep(%s)", (SATURATION_SECONDS,), f"db-fault-saturation-{i}")
            stmt.start()
            self.statements.append(stmt)
        if not self.statements:
            raise LabError(f"{FAULT_PG_SATURATION}: no connection slot was free to take")

    def ready(self, admin: psycopg2.extensions.connection) -> bool:
        live = _activity(admin, self.pids())
        return all(row["state"] == "active" for row in live.values()) and len(live) == len(self.statements)

    def active(self, live: Mapping[int, Mapping[str, Any]] | None) -> bool:
        running = [s for s in self.statements if not s.done.is_set()]
        return bool(running) and (live is None or any(s.pid in live for s in running))

    def describe(self, live: Mapping[int, Mapping[str, Any]] | None) -> dict[str, Any]:
        return {
            "fault": FAULT_PG_SATURATION,
            "active": self.active(live),
            "role": SATURATION_ROLE,
            "application_name": SATURATION_APP,
            "connections": len(self.statements),
            "alive": sum(1 for s in self.statements if not s.done.is_set() and (live is None or s.pid in live)),
            "query": f"SELECT pg_sleep({SATURATION_SECONDS})",
            "started_at": self.started_at,
        }

    def pids(self) -> list[int]:
        return [s.pid for s in self.statements]

    def end(self, admin: psycopg2.extensions.connection | None) -> None:
        if admin is not None:  # one statement for all, rather than a cancel and a wait each
            try:
                with admin.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                (self.pids(),))
            except psycopg2.Error as exc:
                log.warning("%s: %s", FAULT_PG_SATURATION, str(exc).strip())
        for stmt in self.statements:
            stmt.stop(admin)


class SessionFaults:
    """The long-query and blocking-lock faults, held by threads of the engines process.

    ``inject`` returns once the session is visible (the sleep running in pg_stat_activity, the waiter's
    ungranted lock in pg_locks); injecting an active fault again is a no-op. ``clear`` ends the sessions
    and waits until their backends are gone. ``close`` ends everything (engines shutdown).
    """

    def __init__(self, pg: Mapping[str, Any]) -> None:
        self._pg = dict(pg)
        self._lock = threading.Lock()
        self._sessions: dict[str, _LongQuery | _BlockingLock | _Saturation] = {}

    def _admin(self) -> psycopg2.extensions.connection | None:
        try:
            conn = _connect(self._pg, "tradeops-lab-admin")
        except LabError as exc:
            log.warning("db faults: %s", exc)
            return None
        conn.autocommit = True
        return conn

    def inject(self, fault: str, seconds: float | None = None) -> dict[str, Any]:
        if fault not in SESSION_FAULTS:
            raise LabInputError(f"unknown session fault {fault!r} (known: {', '.join(SESSION_FAULTS)})")
        if fault == FAULT_LONG_QUERY:
            seconds = LONG_QUERY_SECONDS if seconds is None else seconds
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise LabInputError(f"seconds must be a number, got {seconds!r}")
            if not 1 <= seconds <= MAX_LONG_QUERY_SECONDS:
                raise LabInputError(f"seconds must be between 1 and {MAX_LONG_QUERY_SECONDS}, got {seconds}")
        elif seconds is not None:
            raise LabInputError(f"{fault} takes no seconds")
        with self._lock:
            admin = self._admin()
            if admin is None:
                raise LabError(f"{fault}: PostgreSQL is unreachable")
            try:
                old = self._sessions.get(fault)
                if old is not None:
                    live = _activity(admin, old.pids())
                    if old.active(live):
                        return {**old.describe(live), "already": True}
                    old.end(admin)
                    del self._sessions[fault]
                session: _LongQuery | _BlockingLock | _Saturation
                if fault == FAULT_LONG_QUERY:
                    session = _LongQuery(self._pg, float(seconds or LONG_QUERY_SECONDS))
                elif fault == FAULT_PG_SATURATION:
                    session = _Saturation(self._pg, admin)
                else:
                    session = _BlockingLock(self._pg)
                self._sessions[fault] = session
                try:
                    ready = wait_for(lambda: session.ready(admin), SESSION_START_TIMEOUT, 0.05)
                except psycopg2.Error:
                    ready = False
                if not ready:
                    self._end(fault, admin)
                    raise LabError(f"{fault}: the session did not show up within {SESSION_START_TIMEOUT:g}s")
                log.warning("db fault %s injected (backends %s)", fault, session.pids())
                return session.describe(_activity(admin, session.pids()))
            except psycopg2.Error as exc:
                raise LabError(f"{fault}: {exc}".strip()) from exc
            finally:
                _close(admin)

    def clear(self, fault: str) -> dict[str, Any]:
        if fault not in SESSION_FAULTS:
            raise LabInputError(f"unknown session fault {fault!r} (known: {', '.join(SESSION_FAULTS)})")
        with self._lock:
            admin = self._admin()
            try:
                return self._end(fault, admin)
            finally:
                _close(admin)

    def _end(self, fault: str, admin: psycopg2.extensions.connection | None) -> dict[str, Any]:
        session = self._sessions.pop(fault, None)
        if session is None:
            return {"fault": fault, "active": False, "cleared": False}
        pids = session.pids()
        session.end(admin)
        gone = True
        if admin is not None:
            try:
                gone = wait_for(lambda: not _activity(admin, pids), SESSION_END_TIMEOUT, 0.05)
            except psycopg2.Error:
                gone = True  # the database went away: so did the backends
        if not gone:
            raise LabError(f"{fault}: backend(s) {pids} still present after clearing")
        log.warning("db fault %s cleared (backends %s gone)", fault, pids)
        return {**session.describe({}), "active": False, "cleared": True}

    def status(self) -> dict[str, Any]:
        """``{fault: description}`` of the session faults injected and not cleared (active or not)."""
        with self._lock:
            if not self._sessions:
                return {}
            admin = self._admin()
            try:
                live = _activity(admin, [p for s in self._sessions.values() for p in s.pids()]) if admin else None
            except psycopg2.Error:
                live = None
            finally:
                _close(admin)
            return {fault: s.describe(live) for fault, s in self._sessions.items()}

    def close(self) -> None:
        """End every session (bounded: each step has a timeout)."""
        with self._lock:
            admin = self._admin() if self._sessions else None
            try:
                for fault in list(self._sessions):
                    try:
                        self._end(fault, admin)
                    except LabError as exc:
                        log.error("%s", exc)
            finally:
                _close(admin)
