"""pg_integrity's one-pass table scan against one query per check, on a throwaway lab cluster.

Baseline (DESIGN, 12M trades, warm cache): count(*) 0.8 s; five separate check queries 6.9 s; the
same checks as one count(*) FILTER scan 2.8-3.2 s. This benchmark starts a throwaway PostgreSQL
cluster with the lab's settings, fills a trades table with --rows rows (INSERT ... SELECT
generate_series, a few corrupt rows sprinkled in), VACUUM ANALYZEs it, and times, warm (every
query runs once before it is timed; the median of --repeat runs is reported):

- ``count``: ``SELECT count(*) FROM trades``;
- ``one_pass``: the module's trades pass (``filter_pass_sql``: invalid_status, non_positive_quantity
  and future_timestamps as count(*) FILTER clauses, each with its bounded array_agg sample, over
  ``WHERE <any of the predicates>``);
- ``one_pass_unfiltered``: the same without that WHERE (every FILTER on every row, in one process:
  array_agg has no parallel combine step before PostgreSQL 16), for comparison;
- ``per_check``: the same predicates as one query per check (``single_check_sql``), summed;
- ``module_trades_pass``: the same pass run by IntegrityService itself (its ``passes[].duration_ms``).

It prints JSON with the times and the ratios one_pass/count and per_check/one_pass. It is a
benchmark, not a test: it asserts nothing and is not part of ``make test``.

    python bench/pg_scan.py [--rows 5000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "collections"))

import psycopg2  # noqa: E402
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_checks as pgc  # noqa: E402
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_integrity as pgi  # noqa: E402

from tradeops.lab.postgres import PostgresServer  # noqa: E402

CHECKS = pgc.FILTER_PASS["trades"]
SCHEMA_SQL = """
CREATE TABLE accounts (id int, name text);
CREATE TABLE positions (id bigint, account_id int, symbol text, quantity numeric, entry_price numeric,
                        current_price numeric, status text, updated_at timestamptz);
CREATE TABLE trades (id bigint NOT NULL, account_id int, symbol text, side text, quantity numeric, price numeric,
                     status text, created_at timestamptz);
"""
FILL_SQL = """
INSERT INTO trades
SELECT g, 1 + g % 500, (ARRAY['BTC-USD', 'ETH-USD', 'SOL-USD', 'AAPL', 'MSFT', 'EUR-USD'])[1 + g % 6],
       CASE WHEN g % 3 = 0 THEN 'sell' ELSE 'buy' END, 1 + g % 10, 100 + (g % 1000) / 10.0,
       (ARRAY['open', 'closed', 'cancelled'])[1 + g % 3], now() - (g % 86400) * interval '1 second'
FROM generate_series(1, {rows}) g;
-- a few of each corruption, so that the samples have something to gather
UPDATE trades SET status = 'bogus' WHERE id % 100003 = 0;
UPDATE trades SET quantity = -1 WHERE id % 100019 = 0;
UPDATE trades SET created_at = now() + interval '1 day' WHERE id % 100043 = 0;
"""


def timed(cur, query, repeat):
    cur.execute(query)  # warm-up: the table is in the OS page cache (and shared_buffers) after this
    cur.fetchall()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        cur.execute(query)
        cur.fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    out: dict = {"rows": args.rows, "repeat": args.repeat, "checks": list(CHECKS)}
    with tempfile.TemporaryDirectory(prefix="tradeops-bench-pg-") as tmp:
        server = PostgresServer(Path(tmp))
        info = server.start(secrets.token_urlsafe(24))
        try:
            admin = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                                     password=info["password"], dbname="postgres")
            admin.autocommit = True
            admin.cursor().execute("CREATE DATABASE bench")
            admin.close()
            conn = psycopg2.connect(host=info["host"], port=info["port"], user=info["user"],
                                    password=info["password"], dbname="bench", options="-c statement_timeout=0")
            conn.autocommit = True
            cur = conn.cursor()
            started = time.perf_counter()
            cur.execute(SCHEMA_SQL)
            cur.execute(FILL_SQL.replace("{rows}", str(int(args.rows))))
            cur.execute("VACUUM ANALYZE trades")
            out["generate_s"] = round(time.perf_counter() - started, 1)
            cur.execute("SELECT version(), current_setting('jit'), current_setting('max_parallel_workers_per_gather'), "
                        "current_setting('shared_buffers'), pg_size_pretty(pg_table_size('trades'))")
            out["server"], out["jit"], out["parallel_workers_per_gather"], out["shared_buffers"], out["table_size"] = (
                cur.fetchone())

            schema = pgc.Schema()
            checks = pgc.build_row_checks(schema, 60)
            trade_checks = [checks[(name, "trades")] for name in CHECKS]
            count_s, count_all = timed(cur, "SELECT count(*) FROM trades", args.repeat)
            one_pass_query = pgc.filter_pass_sql(schema, "trades", trade_checks, 10)
            one_pass_s, one_pass_all = timed(cur, one_pass_query, args.repeat)
            cur.execute(one_pass_query)
            row = cur.fetchone()
            out["found"] = {name: row[2 * i] for i, name in enumerate(CHECKS)}
            unfiltered_s = timed(cur, pgc.filter_pass_sql(schema, "trades", trade_checks, 10, prefilter=False),
                                 args.repeat)[0]
            per_check = {}
            for check in trade_checks:
                per_check[check.name] = round(timed(cur, pgc.single_check_sql(schema, check, 10), args.repeat)[0], 3)
            per_check_s = sum(per_check.values())
            conn.close()

            params = {"login_host": info["host"], "login_port": info["port"], "login_user": info["user"],
                      "login_password": info["password"], "login_db": "bench", "sslmode": "disable",
                      "checks": list(CHECKS), "schema": {"positions_timestamp_column": ""}, "statement_timeout": 600}
            module_ms = []
            for _ in range(args.repeat):
                result = pgi.IntegrityService(params).run()
                module_ms.append(next(p["duration_ms"] for p in result["passes"] if p["name"] == "trades"))
        finally:
            server.stop(info)
    out["seconds"] = {
        "count": round(count_s, 3),
        "one_pass": round(one_pass_s, 3),
        "one_pass_unfiltered": round(unfiltered_s, 3),
        "per_check": round(per_check_s, 3),
        "per_check_detail": per_check,
        "module_trades_pass": round(statistics.median(module_ms) / 1000.0, 3),
        "count_runs": [round(t, 3) for t in count_all],
        "one_pass_runs": [round(t, 3) for t in one_pass_all],
    }
    out["ratios"] = {
        "one_pass_over_count": round(one_pass_s / count_s, 2),
        "per_check_over_one_pass": round(per_check_s / one_pass_s, 2),
        "one_pass_unfiltered_over_one_pass": round(unfiltered_s / one_pass_s, 2),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
