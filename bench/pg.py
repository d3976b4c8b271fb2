"""pg_integrity: the module's one-pass scan against one query per check and a bare count(*), plus the
latency a concurrent writer sees while the scan runs.

One throwaway PostgreSQL cluster (the lab's ``PostgresServer``: initdb on a free loopback port, the lab's
settings), one database per size, each built ONCE and reused by every run: the lab's own schema
(``tradeops.lab.postgres.SCHEMA_SQL``: accounts, positions, trades with their non-unique btree indexes,
ordinary logged tables), ``trades`` filled with ``INSERT ... SELECT generate_series`` before its indexes
are built, one position per (account, symbol) equal to the signed sum of its filled trades, a few rows of
every kind of corruption, then ``VACUUM ANALYZE`` and ``CHECKPOINT``. The build time is reported apart.

Warm cache: every query runs once before it is timed. Figures are the median (min, max) of ``runs``:

- ``count`` (c, the floor): ``SELECT count(*) FROM trades``, as the planner chooses (its plan is recorded);
- ``count_all_columns``: ``count(*) ... WHERE created_at IS NULL`` under the module's settings: what any row
  check pays on top of ``count(*)``, which reads no column (every column up to the last must be decoded);
- ``one_pass`` (a): the module's trades pass, run by ``IntegrityService`` itself (``plugins/module_utils/
  _pg_checks.py``: invalid_status, non_positive_quantity, future_timestamps as count(*) FILTER clauses
  over one heap scan, in its READ ONLY REPEATABLE READ transaction; its ``passes[].duration_ms``);
- ``per_check`` (b): the same three checks as one query each (``single_check_sql``), summed, in a
  transaction set up like the module's (READ ONLY, REPEATABLE READ, index scans off: the module never
  trusts an index);
- ``full_scan``: ``IntegrityService`` with every built-in check (both tables' passes, duplicate ids,
  orphans, position mismatch, amcheck, server checks), for reference, with its per-pass times.

Writer latency: single-row ``INSERT INTO trades`` in a loop (autocommit, one connection) for a fixed
window, without any scan, and while another process runs the full built-in scan back to back (the two
windows in alternating order from run to run); the p99 of each window and their ratio.
"""

from __future__ import annotations

import multiprocessing
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
from _common import loadavg, log, percentile, ratio, summary
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_checks as pgc
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_integrity as pgi

from tradeops.lab.postgres import SCHEMA_SQL, PostgresServer

TRADE_CHECKS = pgc.FILTER_PASS["trades"]
ACCOUNTS = 500
FILL_TRADES = """
INSERT INTO trades (id, account_id, symbol, side, quantity, price, status, created_at)
SELECT g, 1 + g % {accounts}, (ARRAY['BTC-USD', 'ETH-USD', 'SOL-USD', 'AAPL', 'MSFT', 'EUR-USD'])[1 + g % 6],
       CASE WHEN g % 7 < 3 THEN 'sell' ELSE 'buy' END, 1 + g % 10, 100 + (g % 1000) / 10.0,
       (ARRAY['open', 'closed', 'cancelled'])[1 + g % 3], now() - (g % 86400) * interval '1 second'
FROM generate_series(1, {rows}) g
"""
FILL_REST = """
INSERT INTO accounts (id, name) SELECT a, 'bench-' || a FROM generate_series(1, {accounts}) a
  ON CONFLICT (id) DO NOTHING;
INSERT INTO positions (account_id, symbol, quantity, entry_price, current_price, status, updated_at)
SELECT account_id, symbol, sum(CASE WHEN side = 'sell' THEN -quantity ELSE quantity END), 100, 101, 'open', now()
FROM trades WHERE status = 'closed' GROUP BY account_id, symbol;
SELECT setval('trades_id_seq', {rows} + 1);
-- a few of each corruption, so that every check has something to find
UPDATE trades SET status = 'bogus' WHERE id % 100003 = 0;
UPDATE trades SET quantity = -1 WHERE id % 100019 = 0 AND status <> 'closed';
UPDATE trades SET created_at = now() + interval '1 day' WHERE id % 100043 = 0;
UPDATE trades SET account_id = 999999 WHERE id % 200017 = 0 AND status <> 'closed';
INSERT INTO trades SELECT * FROM trades WHERE id % 300007 = 0 AND status <> 'closed';
UPDATE positions SET current_price = NULL WHERE id % 997 = 0;
UPDATE positions SET quantity = quantity + 1 WHERE id % 1009 = 0;
"""
WRITE_SQL = ("INSERT INTO trades (account_id, symbol, side, quantity, price, status, created_at) "
             "VALUES (%s, 'BTC-USD', 'buy', 1, 65000, 'open', now())")


def _connect(info: dict[str, Any], db: str, **kw: Any):
    return psycopg2.connect(host=info["host"], port=info["port"], user=info["user"], password=info["password"],
                            dbname=db, options="-c statement_timeout=0", application_name="tradeops-bench", **kw)


def module_params(info: dict[str, Any], db: str, checks: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {"login_host": info["host"], "login_port": info["port"], "login_user": info["user"],
            "login_password": info["password"], "login_db": db, "sslmode": "disable", "checks": list(checks),
            "allow_create_extension": True, "statement_timeout": 600}


def build(info: dict[str, Any], db: str, rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    admin = _connect(info, "postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    admin.close()
    conn = _connect(info, db)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(SCHEMA_SQL)
    cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'trades'")
    indexes = cur.fetchall()
    for name, _ in indexes:  # load first, index after: the same indexes, built once
        cur.execute(f'DROP INDEX "{name}"')
    cur.execute(FILL_TRADES.format(rows=int(rows), accounts=ACCOUNTS))
    for _, definition in indexes:
        cur.execute(definition)
    cur.execute(FILL_REST.format(rows=int(rows), accounts=ACCOUNTS))
    cur.execute("VACUUM ANALYZE")
    cur.execute("CHECKPOINT")
    cur.execute("SELECT pg_size_pretty(pg_table_size('trades')), pg_size_pretty(pg_indexes_size('trades')), "
                "(SELECT count(*) FROM trades)")
    table_size, index_size, count = cur.fetchone()
    conn.close()
    return {"build_s": round(time.perf_counter() - started, 1), "trades": count, "table_size": table_size,
            "index_size": index_size}


def _timed(cur, query, runs: int, setup: str | None = None) -> list[float]:
    def once() -> float:
        started = time.perf_counter()
        if setup:
            cur.execute(setup)
        if isinstance(query, list):
            for q in query:
                cur.execute(q)
                cur.fetchall()
        else:
            cur.execute(query)
            cur.fetchall()
        elapsed = time.perf_counter() - started
        cur.connection.rollback()
        return elapsed

    once()  # warm
    return [once() for _ in range(runs)]


MODULE_LIKE = ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL enable_indexscan = off; "
               "SET LOCAL enable_indexonlyscan = off; SET LOCAL enable_bitmapscan = off")


def scan_times(info: dict[str, Any], db: str, runs: int) -> dict[str, Any]:
    conn = _connect(info, db)
    cur = conn.cursor()
    schema = pgc.Schema()
    checks = pgc.build_row_checks(schema, 60)
    trade_checks = [checks[(name, "trades")] for name in TRADE_CHECKS]
    count_q = "SELECT count(*) FROM trades"
    cur.execute("EXPLAIN " + count_q)
    count_plan = " / ".join(r[0].strip() for r in cur.fetchall()[:3])
    conn.rollback()
    count = _timed(cur, count_q, runs)
    # what any row check must pay on top of count(*): reading every column of every row (the predicate is cheap)
    deform = _timed(cur, "SELECT count(*) FROM trades WHERE created_at IS NULL", runs, MODULE_LIKE)
    per_check_queries = [pgc.single_check_sql(schema, c, 10).as_string(conn) for c in trade_checks]
    per_check = _timed(cur, per_check_queries, runs, MODULE_LIKE)
    per_check_each = {c.name: summary(_timed(cur, q, runs, MODULE_LIKE))
                      for c, q in zip(trade_checks, per_check_queries, strict=True)}
    one_pass_text = pgc.filter_pass_sql(schema, "trades", trade_checks, 10).as_string(conn)
    one_pass_sql = _timed(cur, one_pass_text, runs, MODULE_LIKE)
    # experiment (not the module): the future_timestamps cut-off computed once in the scan transaction and
    # inlined as a constant, instead of now() + skew evaluated on every row
    cur.execute("SELECT (now() + 60.0 * interval '1 second')::text")
    cutoff = cur.fetchone()[0]
    conn.rollback()
    stable = "> now() + 60.0 * interval '1 second'"
    inlined = one_pass_text.replace(stable, f"> '{cutoff}'::timestamptz")
    one_pass_const = _timed(cur, inlined, runs, MODULE_LIKE) if inlined != one_pass_text else []
    conn.close()

    def module_pass(check_names) -> dict[str, Any]:
        result = pgi.IntegrityService(module_params(info, db, check_names)).run()
        if result["errors"]:
            raise RuntimeError(f"pg_integrity errors: {result['errors']}")
        return result

    module_pass(TRADE_CHECKS)  # warm
    one_pass, found = [], {}
    for _ in range(runs):
        result = module_pass(TRADE_CHECKS)
        one_pass.append(next(p["duration_ms"] for p in result["passes"] if p["name"] == "trades") / 1000.0)
        found = {c["name"]: c["count"] for c in result["checks"]}
    module_pass(pgc.BUILTIN_CHECKS)  # warm
    full, passes = [], {}
    for _ in range(runs):
        result = module_pass(pgc.BUILTIN_CHECKS)
        full.append(result["elapsed_ms"] / 1000.0)
        for p in result["passes"]:
            passes.setdefault(p["name"], []).append(p["duration_ms"] / 1000.0)
        full_found = {f"{c['name']}@{c['table'] or '-'}": c["count"] for c in result["checks"]}
    out = {
        "count_s": summary(count),
        "count_plan": count_plan,
        "count_all_columns_s": summary(deform),
        "one_pass_s": summary(one_pass),
        "one_pass_sql_s": summary(one_pass_sql),
        "experiment_one_pass_sql_constant_cutoff_s": summary(one_pass_const),
        "per_check_s": summary(per_check),
        "per_check_each_s": per_check_each,
        "full_scan_s": summary(full),
        "full_scan_passes_s": {k: summary(v) for k, v in passes.items()},
        "found": found,
        "full_scan_found": full_found,
    }
    out["ratios"] = {"a/c": ratio(out["one_pass_s"]["median"], out["count_s"]["median"]),
                     "c_all_columns/c": ratio(out["count_all_columns_s"]["median"], out["count_s"]["median"]),
                     "b/a": ratio(out["per_check_s"]["median"], out["one_pass_s"]["median"])}
    return out


def _scan_loop(info: dict[str, Any], db: str, stop, counter) -> None:
    while not stop.is_set():
        pgi.IntegrityService(module_params(info, db, pgc.BUILTIN_CHECKS)).run()
        with counter.get_lock():
            counter.value += 1


def _end_scans(info: dict[str, Any], db: str) -> None:
    conn = _connect(info, "postgres")
    conn.autocommit = True
    cur = conn.cursor()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = %s AND pid <> pg_backend_pid()", (db, pgc.APPLICATION_NAME))
        if not cur.fetchall():
            break
        time.sleep(0.1)
    conn.close()


def _write_window(info: dict[str, Any], db: str, seconds: float) -> list[float]:
    conn = _connect(info, db)
    conn.autocommit = True
    cur = conn.cursor()
    lat = []
    end = time.perf_counter() + seconds
    i = 0
    while True:
        started = time.perf_counter()
        if started >= end:
            break
        cur.execute(WRITE_SQL, (1 + i % ACCOUNTS,))
        lat.append(time.perf_counter() - started)
        i += 1
    conn.close()
    return lat


def writer_latency(info: dict[str, Any], db: str, runs: int, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    quiet, busy, scans = [], [], []
    quiet_n, busy_n = [], []
    for i in range(runs):
        def quiet_window() -> None:
            lat = _write_window(info, db, seconds)
            quiet.append(percentile(lat, 99) * 1000)
            quiet_n.append(len(lat))

        def busy_window() -> None:
            stop, counter = ctx.Event(), ctx.Value("i", 0)
            proc = ctx.Process(target=_scan_loop, args=(info, db, stop, counter), daemon=True)
            proc.start()
            time.sleep(1.0)  # the scan is under way before the window opens
            lat = _write_window(info, db, seconds)
            stop.set()
            proc.terminate()  # do not wait for the scan under way to finish ...
            proc.join(60)
            _end_scans(info, db)  # ... and end its query on the server, before the next window
            busy.append(percentile(lat, 99) * 1000)
            busy_n.append(len(lat))
            scans.append(counter.value)

        # alternate the order, so that a drift of the machine's load does not favour one side
        for window in ((quiet_window, busy_window) if i % 2 == 0 else (busy_window, quiet_window)):
            window()
    out = {"window_s": seconds, "p99_ms_without_scan": summary(quiet, 3), "p99_ms_with_scan": summary(busy, 3),
           "inserts_per_window_without": summary(quiet_n, 0), "inserts_per_window_with": summary(busy_n, 0),
           "full_scans_completed_per_window": summary(scans, 0),
           "runs": [{"p99_ms_without_scan": round(q, 3), "p99_ms_with_scan": round(b, 3),
                     "ratio": round(b / q, 2) if q else None} for q, b in zip(quiet, busy, strict=True)]}
    out["ratio_p99_with_over_without"] = ratio(out["p99_ms_with_scan"]["median"],
                                               out["p99_ms_without_scan"]["median"])
    out["median_of_run_ratios"] = round(statistics.median(r["ratio"] for r in out["runs"] if r["ratio"]), 2)
    return out


def run_pg(sizes: list[int], runs: int, work: Path, writer_sizes: list[int], writer_seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "by_rows": {}, "loadavg_start": loadavg()}
    with tempfile.TemporaryDirectory(prefix="pg-", dir=work) as tmp:
        server = PostgresServer(Path(tmp))
        info = server.start(secrets.token_urlsafe(24))
        try:
            conn = _connect(info, "postgres")
            cur = conn.cursor()
            cur.execute("SELECT version(), current_setting('shared_buffers'), "
                        "current_setting('max_parallel_workers_per_gather'), current_setting('jit'), "
                        "current_setting('fsync'), current_setting('synchronous_commit')")
            out["server"] = dict(zip(("version", "shared_buffers", "max_parallel_workers_per_gather", "jit",
                                      "fsync", "synchronous_commit"), cur.fetchone(), strict=True))
            conn.close()
            for rows in sizes:
                db = f"bench_{rows}"
                log(f"pg {rows} rows: building")
                section: dict[str, Any] = {"dataset": build(info, db, rows)}
                log(f"pg {rows} rows: built in {section['dataset']['build_s']} s; timing the scans")
                section["loadavg_start"] = loadavg()
                section.update(scan_times(info, db, runs))
                if rows in writer_sizes:
                    log(f"pg {rows} rows: writer latency ({runs} x 2 windows of {writer_seconds:g} s)")
                    section["writer"] = writer_latency(info, db, runs, writer_seconds)
                section["loadavg_end"] = loadavg()
                out["by_rows"][str(rows)] = section
                log(f"pg {rows} rows: a/c {section['ratios']['a/c']}, b/a {section['ratios']['b/a']}"
                    + (f", writer p99 x{section['writer']['ratio_p99_with_over_without']}" if "writer" in section
                       else ""))
        finally:
            server.stop(info)
    out["loadavg_end"] = loadavg()
    return out
