"""pg_integrity's service against a real PostgreSQL: one lab (engines=1) for the module, one fresh
database per test, copied from a template holding a small, consistent data set modelled on seed 002.

The template deliberately has no unique constraint on the keys and no foreign key, so that every
kind of corruption can be injected; each test injects its own and asserts the exact counts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import threading
import time

import psycopg2
import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_checks, _pg_integrity
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_integrity import IntegrityService

# 4 accounts x 3 symbols = 12 positions (ids 1..12), each with 6 trades: position p has trades
# (p-1)*6 + k: k=1..3 closed buys of 2, 3 and 4, k=4 a closed sell of 1, k=5 an open buy of 7,
# k=6 a cancelled sell of 5. So every position's quantity is 2+3+4-1 = 8.
SEED_SQL = """
CREATE TABLE accounts (id int PRIMARY KEY, name text);
CREATE TABLE positions (id bigint NOT NULL, account_id int, symbol text, quantity numeric, entry_price numeric,
                        current_price numeric, status text, updated_at timestamptz);
CREATE TABLE trades (id bigint NOT NULL, account_id int, symbol text, side text, quantity numeric, price numeric,
                     status text, created_at timestamptz);
CREATE INDEX positions_id_idx ON positions (id);
CREATE INDEX trades_id_idx ON trades (id);
CREATE INDEX trades_account_symbol_idx ON trades (account_id, symbol);
INSERT INTO accounts SELECT a, 'acct-' || a FROM generate_series(1, 4) a;
INSERT INTO trades (id, account_id, symbol, side, quantity, price, status, created_at)
SELECT row_number() OVER (ORDER BY a, sym, k), a, sym, side, qty, 100 + k, status,
       now() - interval '1 day' + k * interval '1 minute'
FROM generate_series(1, 4) a, unnest(ARRAY['BTC-USD', 'ETH-USD', 'SOL-USD']) sym,
     (VALUES (1, 'buy', 2, 'closed'), (2, 'buy', 3, 'closed'), (3, 'buy', 4, 'closed'), (4, 'sell', 1, 'closed'),
             (5, 'buy', 7, 'open'), (6, 'sell', 5, 'cancelled')) v(k, side, qty, status);
INSERT INTO positions (id, account_id, symbol, quantity, entry_price, current_price, status, updated_at)
SELECT row_number() OVER (ORDER BY a, sym), a, sym, 8, 101, 102, 'open', now() - interval '1 hour'
FROM generate_series(1, 4) a, unnest(ARRAY['BTC-USD', 'ETH-USD', 'SOL-USD']) sym;
"""
TEMPLATE = "pgi_template"
ROW_CHECKS = [("null_prices", "positions"), ("non_positive_quantity", "positions"), ("future_timestamps", "positions"),
              ("invalid_status", "trades"), ("non_positive_quantity", "trades"), ("future_timestamps", "trades"),
              ("duplicate_ids", "positions"), ("duplicate_ids", "trades"), ("orphan_trades", "trades"),
              ("position_mismatch", "positions")]


class PgCluster:
    """The lab's PostgreSQL (the lab user is a superuser): databases on demand, from the template."""

    _ids = itertools.count(1)

    def __init__(self, info):
        self.info = info

    def connect(self, dbname, autocommit=True, **kwargs):
        conn = psycopg2.connect(host=self.info["host"], port=self.info["port"], user=self.info["user"],
                                password=self.info["password"], dbname=dbname, connect_timeout=5, **kwargs)
        conn.autocommit = autocommit
        return conn

    def admin(self, statement):
        conn = self.connect("postgres")
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    def create_template(self):
        self.admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        self.admin(f"CREATE DATABASE {TEMPLATE}")
        conn = self.connect(TEMPLATE)
        try:
            conn.cursor().execute(SEED_SQL)
        finally:
            conn.close()

    def create_db(self):
        name = f"pgi_{os.getpid()}_{next(self._ids)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return Db(self, name)

    def drop_db(self, name):
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Db:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name

    def params(self, **extra):
        params = {"login_host": self.cluster.info["host"], "login_port": self.cluster.info["port"],
                  "login_user": self.cluster.info["user"], "login_password": self.cluster.info["password"],
                  "login_db": self.name, "sslmode": "disable", "connect_timeout": 5}
        params.update(extra)
        return params

    def connect(self, **kwargs):
        return self.cluster.connect(self.name, **kwargs)

    def execute(self, statement, args=None):
        conn = self.connect()
        try:
            conn.cursor().execute(statement, args)
        finally:
            conn.close()

    def query(self, statement, args=None):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(statement, args)
            return cur.fetchall()
        finally:
            conn.close()

    def scalar(self, statement, args=None):
        return self.query(statement, args)[0][0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.conftest import start_lab

    handle = start_lab(tmp_path_factory.mktemp("pgi-lab"), engines=1)
    try:
        pg = PgCluster(handle.lab.state["postgres"])
        pg.create_template()
        pg.lab = handle
        yield pg
    finally:
        handle.lab.down()


@pytest.fixture
def db(cluster):
    database = cluster.create_db()
    yield database
    cluster.drop_db(database.name)


def run(db, **params):
    return IntegrityService(db.params(**params)).run()


def by_check(out):
    return {(c["name"], c["table"]): c for c in out["checks"]}


def assert_row_checks(out, expected):
    """Every built-in row check is exactly as expected: the given counts, and 0 (ok) for all others."""
    checks = by_check(out)
    for key in ROW_CHECKS:
        result = checks[key]
        count = expected.get(key, 0)
        assert result["count"] == count, (key, result)
        assert result["status"] == ("corrupt" if count else "ok"), (key, result)
        if key[0] == "duplicate_ids":  # the sample lists the duplicated keys; the count, the surplus copies
            assert 0 < len(result["sample"]) <= count or count == 0 == len(result["sample"]), (key, result)
        else:
            assert len(result["sample"]) == min(count, 10), (key, result)


# --------------------------------------------------------------------------------------------
# no database needed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, option", [
    ({"schema": {"trades_table": "trades; DROP TABLE accounts"}}, "schema.trades_table"),
    ({"schema": {"positions_table": "a.b.c"}}, "schema.positions_table"),
    ({"schema": {"key_column": 'id" OR 1=1 --'}}, "schema.key_column"),
    ({"schema": {"status_column": "public.status"}}, "schema.status_column"),
    ({"schema": {"entry_price_column": ""}}, "schema.entry_price_column"),
    ({"schema": {"side_column": "x y"}}, "schema.side_column"),
    ({"quarantine_schema": "q; DROP SCHEMA public"}, "quarantine_schema"),
    ({"custom": [{"name": "bad name", "sql": "SELECT 1"}]}, "custom[0].name"),
    ({"custom": [{"name": "x", "sql": " ;\n ; "}]}, "custom[0].sql (x) is required"),
    ({"custom": [{"name": "ok", "sql": "SELECT 1"}, {"name": "x", "sql": None}]}, "custom[1].sql (x) is required"),
    ({"custom": [{"name": "x", "sql": "SELECT 1\x00; DELETE FROM trades"}]}, "custom[0].sql (x) contains a NUL"),
    ({"schema": {"trades_key_column": "fill id"}}, "schema.trades_key_column"),
    ({"schema": {"accounts_key_column": 'no" OR true --'}}, "schema.accounts_key_column"),
    ({"schema": {"open_position_status": 5}}, "schema.open_position_status"),
    ({"statement_timeout": float("inf")}, "statement_timeout: must be a finite number of seconds"),
    ({"statement_timeout": float("nan")}, "statement_timeout: must be a finite number of seconds"),
    ({"statement_timeout": -1}, "statement_timeout: must be between 0.05 and 86400 seconds, got -1"),
    ({"statement_timeout": 0}, "statement_timeout: must be between 0.05 and 86400 seconds, got 0"),
    ({"statement_timeout": 1e9}, "statement_timeout: must be between 0.05 and 86400 seconds, got 1e+09"),
    ({"statement_timeout": "soon"}, "statement_timeout: expected a number of seconds"),
    # below half a millisecond the old code sent statement_timeout=0, which PostgreSQL reads as no timeout
    ({"statement_timeout": 0.0004}, "statement_timeout: must be between 0.05 and 86400 seconds, got 0.0004"),
    ({"lock_timeout": float("inf")}, "lock_timeout: must be a finite number of seconds"),
    ({"lock_timeout": float("-nan")}, "lock_timeout: must be a finite number of seconds"),
    ({"lock_timeout": -0.5}, "lock_timeout: must be between 0.05 and 86400 seconds"),
    ({"lock_timeout": 0}, "lock_timeout: must be between 0.05 and 86400 seconds"),
    ({"lock_timeout": 86401}, "lock_timeout: must be between 0.05 and 86400 seconds"),
    ({"checks": ["null_prices", "everything"]}, "checks"),
    ({"actions": ["export"]}, "export_path"),
    ({"actions": ["export"], "export_path": "reports/rows.json"},
     "export_path must be an absolute path on the host running the module, got 'reports/rows.json'"),
    ({"sample_size": 5000}, "sample_size"),
])
def test_a_bad_option_is_rejected_naming_it_before_anything_runs(params, option):
    with pytest.raises(ValidationError) as err:
        IntegrityService(dict({"login_host": "127.0.0.1", "login_port": 1}, **params))
    assert option in str(err.value)


def test_the_session_timeouts_are_whole_milliseconds_never_zero():
    service = IntegrityService({"login_host": "127.0.0.1", "statement_timeout": 0.05, "lock_timeout": 86400})
    assert service._options(True) == ("-c default_transaction_read_only=on -c statement_timeout=50 "
                                      "-c lock_timeout=86400000")
    assert IntegrityService({"login_host": "127.0.0.1", "statement_timeout": 0.0515})._options(False).startswith(
        "-c default_transaction_read_only=off -c statement_timeout=52 ")


def test_the_module_defaults_match_the_service_defaults():
    from ansible_collections.tradeops.remediation.plugins.modules import pg_integrity

    spec = pg_integrity.ARGUMENT_SPEC
    for name, default in _pg_integrity.DEFAULTS.items():
        assert spec[name].get("default") == default, name
    for name, default in _pg_checks.SCHEMA_DEFAULTS.items():
        assert spec["schema"]["options"][name].get("default") == default, name
    assert spec["login_password"]["no_log"] is True


# --------------------------------------------------------------------------------------------
# the scan
# --------------------------------------------------------------------------------------------
def test_a_clean_database_is_ok_with_one_pass_per_table(db):
    out = run(db)
    assert out["status"] == "ok" and out["changed"] is False and out["errors"] == [], out["msg"]
    assert_row_checks(out, {})
    assert out["database"] == db.name and out["corrupt"] == [] and out["warned"] == []
    checks = by_check(out)
    assert checks[("amcheck", None)]["status"] == "skipped"
    assert "amcheck extension not installed; set allow_create_extension" in checks[("amcheck", None)]["message"]
    assert checks[("checksum_failures", None)]["status"] == "skipped"  # the lab cluster has no data checksums
    for name in ("long_queries", "blocking_locks", "connection_saturation"):
        assert checks[(name, None)]["status"] == "ok", checks[(name, None)]
    passes = {p["name"]: p for p in out["passes"]}
    assert passes["positions"]["checks"] == ["null_prices", "non_positive_quantity", "future_timestamps"]
    assert passes["trades"]["checks"] == ["invalid_status", "non_positive_quantity", "future_timestamps"]
    assert set(passes) == {"server", "positions", "trades", "positions:duplicate_ids", "trades:duplicate_ids",
                           "trades:orphan_trades", "position_mismatch", "amcheck"}
    assert all(p["duration_ms"] >= 0 and p["status"] == "ok" for p in out["passes"])
    assert checks[("invalid_status", "trades")]["pass"] == "trades"
    assert checks[("position_mismatch", "positions")]["message"].startswith("every position quantity matches")


def test_the_lab_trading_database_is_clean(cluster):
    info = cluster.info
    out = IntegrityService({"login_host": info["host"], "login_port": info["port"], "login_user": info["user"],
                            "login_password": info["password"], "login_db": info["dbname"], "sslmode": "disable",
                            "checks": [name for name, _ in ROW_CHECKS]}).run()
    assert out["status"] == "ok", out["msg"]
    assert out["changed"] is False


INJECTIONS = {
    "null_prices": (
        "UPDATE positions SET entry_price = NULL WHERE id IN (1, 2); UPDATE positions SET current_price = NULL "
        "WHERE id = 3; UPDATE positions SET entry_price = NULL, current_price = NULL WHERE id = 4",
        {("null_prices", "positions"): 4}, [1, 2, 3, 4]),
    "invalid_status": (  # open trades only: the positions do not move
        "UPDATE trades SET status = 'filled' WHERE id IN (5, 11); UPDATE trades SET status = 'OPEN' WHERE id = 17; "
        "UPDATE trades SET status = NULL WHERE id = 23",
        {("invalid_status", "trades"): 4}, [5, 11, 17, 23]),
    "position_mismatch": (  # two positions off, one missing, one cancelled sell that became closed
        "UPDATE positions SET quantity = quantity + 1 WHERE id IN (1, 5); DELETE FROM positions WHERE id = 9; "
        "UPDATE trades SET status = 'closed' WHERE id = 72",
        {("position_mismatch", "positions"): 4}, None),
    "orphan_trades": (
        "INSERT INTO trades VALUES (1001, 99, 'BTC-USD', 'buy', 1, 100, 'open', now() - interval '1 hour'), "
        "(1002, 98, 'BTC-USD', 'buy', 1, 100, 'open', now() - interval '1 hour'), "
        "(1003, NULL, 'BTC-USD', 'buy', 1, 100, 'open', now() - interval '1 hour')",
        {("orphan_trades", "trades"): 3}, [1001, 1002, 1003]),
    "duplicate_ids": (  # id 7 three times, id 13 twice (as open trades); position 6 twice (closed, zero)
        "INSERT INTO trades SELECT id, account_id, symbol, side, quantity, price, 'open', created_at FROM trades "
        "WHERE id IN (7, 13); INSERT INTO trades SELECT id, account_id, symbol, side, quantity, price, 'open', "
        "created_at FROM trades WHERE id = 7 AND status = 'closed'; INSERT INTO positions SELECT id, account_id, "
        "symbol, 0, entry_price, current_price, 'closed', updated_at FROM positions WHERE id = 6",
        {("duplicate_ids", "trades"): 3, ("duplicate_ids", "positions"): 1}, [7, 13]),
    "non_positive_quantity": (
        "UPDATE trades SET quantity = 0 WHERE id = 5; UPDATE trades SET quantity = -2 WHERE id = 11; "
        "UPDATE trades SET quantity = NULL WHERE id = 17; UPDATE positions SET quantity = 0 WHERE id = 2; "
        "UPDATE positions SET quantity = 0, status = 'closed' WHERE id = 3",
        {("non_positive_quantity", "trades"): 3, ("non_positive_quantity", "positions"): 1,
         ("position_mismatch", "positions"): 2}, [5, 11, 17]),
    "future_timestamps": (  # the third is within the 60 s clock skew allowance
        "UPDATE trades SET created_at = now() + interval '1 day' WHERE id IN (1, 2); UPDATE trades SET created_at = "
        "now() + interval '30 seconds' WHERE id = 3; UPDATE positions SET updated_at = now() + interval '1 hour' "
        "WHERE id = 1",
        {("future_timestamps", "trades"): 2, ("future_timestamps", "positions"): 1}, [1, 2]),
}


@pytest.mark.parametrize("kind", sorted(INJECTIONS))
def test_every_injected_corruption_is_found_with_the_exact_count(db, kind):
    statement, expected, sample = INJECTIONS[kind]
    db.execute(statement)
    out = run(db, checks=[name for name, _ in ROW_CHECKS])
    assert out["status"] == "corrupt", out["msg"]
    assert_row_checks(out, expected)
    assert sorted(set(n for n, _ in expected)) == sorted(out["corrupt"])
    main = by_check(out)[next(iter(expected))]
    if sample is not None:
        assert sorted(main["sample"]) == sample, main
    assert main["message"].startswith(f"{main['count']} "), main


def test_position_mismatch_sample_shows_both_sides(db):
    db.execute("UPDATE positions SET quantity = 9 WHERE id = 1")
    out = run(db, checks=["position_mismatch"], sample_size=1)
    result = by_check(out)[("position_mismatch", "positions")]
    assert result["count"] == 1 and result["sample"] == [
        {"account_id": 1, "symbol": "BTC-USD", "position_quantity": 9, "trades_quantity": 8, "position_rows": 1}]


def test_schema_options_point_the_checks_at_other_tables_and_columns(db):
    db.execute("CREATE SCHEMA book; ALTER TABLE trades SET SCHEMA book; ALTER TABLE book.trades RENAME TO fills; "
               "ALTER TABLE book.fills RENAME COLUMN status TO state; "
               "ALTER TABLE book.fills RENAME COLUMN id TO fill_id; "
               "UPDATE book.fills SET state = 'new' WHERE state = 'open'; UPDATE book.fills SET state = 'weird' "
               "WHERE fill_id = 1")
    out = run(db, checks=["invalid_status", "duplicate_ids", "orphan_trades"], sample_size=5,
              schema={"trades_table": "book.fills", "status_column": "state", "key_column": "fill_id",
                      "allowed_statuses": ["new", "closed", "cancelled"]})
    checks = by_check(out)
    assert checks[("invalid_status", "book.fills")]["count"] == 1
    assert checks[("invalid_status", "book.fills")]["sample"] == [1]
    # the key column applies to every table: positions and accounts have no fill_id
    assert checks[("duplicate_ids", "positions")]["status"] == "error"
    assert 'column s.fill_id does not exist' in checks[("duplicate_ids", "positions")]["message"]
    assert "schema *_column options" in checks[("duplicate_ids", "positions")]["message"]


def test_a_missing_table_is_an_error_naming_the_option(db):
    out = run(db, checks=["invalid_status", "null_prices"], schema={"trades_table": "nope"})
    checks = by_check(out)
    assert checks[("invalid_status", "nope")]["status"] == "error"
    assert "table nope not found; set schema.trades_table" in checks[("invalid_status", "nope")]["message"]
    assert checks[("null_prices", "positions")]["status"] == "ok"
    assert out["status"] == "error"
    assert "schema.trades_table" in IntegrityService.failure_message(out, False)


# --------------------------------------------------------------------------------------------
# custom checks and the READ ONLY transaction
# --------------------------------------------------------------------------------------------
def test_custom_checks_count_and_sample_and_every_write_is_refused(db):
    before = db.query("SELECT count(*), sum(quantity) FROM trades")
    out = run(db, checks=[], sample_size=3, statement_timeout=0.5, custom=[
        {"name": "big_open_trades", "sql": "SELECT id, quantity FROM trades WHERE status = 'open' ORDER BY id;"},
        {"name": "none", "sql": "SELECT id FROM trades WHERE quantity > 1000"},
        {"name": "session_write_on", "sql": "SET default_transaction_read_only = off"},
        {"name": "delete", "sql": "DELETE FROM trades WHERE id < 10 RETURNING id"},
        {"name": "cte_delete", "sql": "WITH d AS (DELETE FROM trades RETURNING id) SELECT id FROM d"},
        {"name": "create", "sql": "CREATE TABLE evil (i int)"},
        {"name": "lock_rows", "sql": "SELECT id FROM trades FOR UPDATE"},
        {"name": "sequence", "sql": "SELECT nextval('evil_seq')"},
        {"name": "slow", "sql": "SELECT pg_sleep(5)"},
    ])
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["big_open_trades"]["status"] == "corrupt" and checks["big_open_trades"]["count"] == 12
    assert checks["big_open_trades"]["sample"] == [5, 11, 17]
    assert checks["big_open_trades"]["pass"] == "custom:big_open_trades"
    assert checks["none"]["status"] == "ok" and checks["none"]["count"] == 0
    for index, name in enumerate(["session_write_on", "delete", "cte_delete", "create", "lock_rows"], start=2):
        assert checks[name]["status"] == "error", checks[name]
        assert checks[name]["message"].startswith(f"custom[{index}].sql ({name}) was refused by PostgreSQL: ")
        assert f"Rewrite custom[{index}].sql ({name}) as such a query and re-run" in checks[name]["message"]
    assert checks["sequence"]["status"] == "error"
    assert checks["sequence"]["message"] == ('custom[7].sql (sequence): relation "evil_seq" does not exist; fix '
                                             'custom[7].sql (sequence) and re-run')
    assert "statement timeout" in checks["slow"]["message"] and "raise statement_timeout" in checks["slow"]["message"]
    assert checks["slow"]["message"].startswith("custom[8].sql (slow): ")
    assert out["status"] == "error" and len(out["errors"]) == 7
    message = IntegrityService.failure_message(out, False)
    assert "delete: custom[3].sql (delete) was refused by PostgreSQL" in message
    assert db.query("SELECT count(*), sum(quantity) FROM trades") == before
    assert db.scalar("SELECT to_regclass('evil')") is None


def test_a_custom_check_cannot_end_the_scan_transaction_and_the_next_checks_still_run(db):
    out = run(db, checks=["null_prices"], custom=[
        {"name": "commit", "sql": "COMMIT"},
        {"name": "then_delete", "sql": "DELETE FROM trades RETURNING id"},
        {"name": "still_read_only", "sql": "SELECT current_setting('transaction_read_only') || '/' || "
                                           "current_setting('transaction_isolation')"}])
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["commit"]["status"] == checks["then_delete"]["status"] == "error"
    assert "custom[0].sql (commit) was refused by PostgreSQL" in checks["commit"]["message"]
    # the same transaction: still READ ONLY, still REPEATABLE READ (a new one would be read committed)
    assert checks["still_read_only"]["sample"] == ["on/repeatable read"], checks["still_read_only"]
    assert checks["null_prices"]["status"] == "ok"
    assert db.scalar("SELECT count(*) FROM trades") == 72


# --------------------------------------------------------------------------------------------
# custom checks: PostgreSQL, not a Python scanner, decides what a custom check may run
# --------------------------------------------------------------------------------------------
# What the scan's wrapper becomes when a text closes its parentheses: "<ours> FROM (\nSELECT 1) AS q) AS w;
# <stmt>; SELECT 1 AS n FROM (SELECT * FROM (SELECT 1\n) AS q) AS w", three statements for the server. These
# prove the server's own walls (SPI read_only in query_to_xml, the READ ONLY transaction), not the wrapper's.
BREAKOUT = "SELECT 1) AS q) AS w; {}; SELECT 1 AS n FROM (SELECT * FROM (SELECT 1"
HOSTILE_SETUP = """
CREATE SEQUENCE pgi_seq;
CREATE FUNCTION pgi_evil() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $f$
BEGIN DELETE FROM trades; RETURN 1; END $f$;
CREATE PROCEDURE pgi_proc() LANGUAGE plpgsql AS $p$ BEGIN DELETE FROM trades; COMMIT; END $p$;
"""
HOSTILE = {
    # the exploit: PostgreSQL reads a€$x$ as ONE identifier (every byte >= 0x80 is an identifier
    # character), a Python scanner as the opening of a $x$ dollar quote that hides everything up to b€$x$; the
    # SAVEPOINT makes the scan carry on as if nothing happened
    "nonascii_dollar_commit": "SELECT 1 AS a€$x$; COMMIT; BEGIN READ WRITE; DELETE FROM trades; COMMIT; BEGIN; "
                              "SAVEPOINT tradeops_pg_integrity; SELECT 1 AS b€$x$",
    "nonascii_dollar_delete": "SELECT id AS é€$q$ FROM trades; DELETE FROM trades RETURNING id AS ü€$q$",
    "nonascii_tag_lookalike": "SELECT 1 AS x€$€$; DELETE FROM positions RETURNING 1 AS y€$€$",
    "nested_dollar_quotes": "SELECT $outer$ it's $inner$ ; $inner$ $outer$ AS s; DELETE FROM positions RETURNING id",
    "dollar_quote_hides_nothing": "SELECT $$;$$ AS a; COMMIT; DELETE FROM trades; SELECT $x$;$x$",
    "e_string_escaped_quote": "SELECT E'it\\'s; COMMIT' AS a; DELETE FROM trades RETURNING id",
    "e_string_lookalike": "SELECT 1 AS x€e'\\'; DELETE FROM trades RETURNING id; SELECT '\\'",
    "standard_string_backslash": "SELECT 'a\\' AS s; DELETE FROM trades RETURNING id; SELECT '\\' AS t",
    "line_comment": "SELECT 1 -- ; harmless\n; DELETE FROM trades RETURNING id",
    "nested_block_comment": "SELECT 1 /* outer /* inner ; */ still a comment ; */ ; DELETE FROM trades RETURNING id",
    "commit_begin_delete": "COMMIT; BEGIN READ WRITE; DELETE FROM trades",
    "rollback": "ROLLBACK",
    "rollback_then_delete": "ROLLBACK; DELETE FROM trades",
    "begin": "BEGIN READ WRITE",
    "set_transaction_read_write": "SET TRANSACTION READ WRITE",
    "set_config_read_write": "SELECT set_config('transaction_read_only', 'off', true)",
    "set_session_read_write": "SET default_transaction_read_only = off",
    "set_role": "SET ROLE pg_write_all_data",
    "reset_all": "RESET ALL",
    "do_block": "DO $$BEGIN DELETE FROM trades; END$$",
    "copy_to_program": "COPY trades TO PROGRAM 'touch {flag}'",
    "copy_from_program": "COPY accounts FROM PROGRAM 'touch {flag}; printf \"77\\tx\\n\"'",
    "cte_delete": "WITH d AS (DELETE FROM trades RETURNING *) SELECT id FROM d",
    "cte_update": "WITH u AS (UPDATE positions SET quantity = 0 RETURNING id) SELECT count(*) FROM u",
    "for_update": "SELECT id FROM trades FOR UPDATE",
    "for_share_in_subquery": "SELECT * FROM (SELECT id FROM trades FOR SHARE) s",
    "two_selects": "SELECT 1; SELECT 2",
    "select_then_delete": "SELECT id FROM trades; DELETE FROM trades RETURNING id",
    "writing_function": "SELECT pgi_evil()",
    "nextval": "SELECT nextval('pgi_seq')",
    "select_into": "SELECT * INTO pgi_copy FROM trades",
    "create_table_as": "CREATE TABLE pgi_copy AS SELECT * FROM trades",
    "call_committing_procedure": "CALL pgi_proc()",
    "explain_analyze_delete": "EXPLAIN ANALYZE DELETE FROM trades",
    "truncate": "TRUNCATE trades",
    "lock": "LOCK TABLE trades IN ACCESS EXCLUSIVE MODE",
    "prepare_execute": "PREPARE p AS DELETE FROM trades; EXECUTE p",
    "breakout_delete": BREAKOUT.format("DELETE FROM trades RETURNING 1"),
    "breakout_commit": BREAKOUT.format("COMMIT; BEGIN READ WRITE; DELETE FROM trades; COMMIT"),
    "breakout_set": BREAKOUT.format("SET TRANSACTION READ WRITE"),
    "breakout_do": BREAKOUT.format("DO $$BEGIN DELETE FROM trades; END$$"),
    "breakout_copy": BREAKOUT.format("COPY trades TO PROGRAM 'touch {flag}'"),
    "breakout_cte": BREAKOUT.format("WITH d AS (DELETE FROM trades RETURNING *) SELECT 1"),
    "breakout_writing_function": BREAKOUT.format("SELECT pgi_evil()"),
    "breakout_call": BREAKOUT.format("CALL pgi_proc()"),
    "breakout_own_result": "SELECT 1) AS q) AS w; SELECT 1 AS z FROM (SELECT * FROM (SELECT 1",
}


HOSTILE_BUT_READ_ONLY = {"two_selects"}  # two queries: refused by the module's wrapper, harmless in query_to_xml


def fingerprint(db):
    """Every relation of the database with its row count and a digest of its rows, sequences with their
    state, the functions and the database settings: what a custom check must never change."""
    out = {}
    relations = db.query(
        "SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f') AND n.nspname NOT IN "
        "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1")
    for name, kind in relations:
        if kind == "S":
            out[name] = db.query(f"SELECT last_value, is_called FROM {name}")[0]
        elif kind != "v":
            out[name] = db.query(f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                                 f"FROM {name} AS x")[0]
    out["functions"] = db.query("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                                "ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1")
    out["settings"] = db.query("SELECT setrole, setconfig FROM pg_db_role_setting ORDER BY 1")
    return out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_custom_check_changes_nothing_and_is_refused_by_the_server(db, name, tmp_path):
    db.execute(HOSTILE_SETUP)
    flag = f"/tmp/pgi-hostile-{os.getpid()}-{name}"  # a path the server's user can write
    text = HOSTILE[name].replace("{flag}", flag)
    before = fingerprint(db)
    assert before["public.trades"][0] == 72 and before["public.positions"][0] == 12
    try:
        out = run(db, checks=["null_prices"], custom=[
            {"name": "hostile", "sql": text},
            {"name": "after", "sql": "SELECT current_user::text || '/' || current_setting('transaction_read_only') "
                                     "|| '/' || current_setting('transaction_isolation')"}])
    finally:
        ran_program = os.path.exists(flag)
        if ran_program:
            os.unlink(flag)
    # nothing changed, whatever the module reports
    assert fingerprint(db) == before, name
    assert not ran_program, f"{name}: the server ran a program"
    # and the check was refused, naming custom[0].sql, without disturbing the rest of the scan
    checks = {c["name"]: c for c in out["checks"]}
    hostile = checks["hostile"]
    assert hostile["status"] == "error" and hostile["count"] == 0, hostile
    assert hostile["message"].startswith("custom[0].sql (hostile) was refused by PostgreSQL: "), hostile["message"]
    assert "Rewrite custom[0].sql (hostile) as such a query and re-run" in hostile["message"]
    if name.startswith("breakout_"):  # the text did break out of the wrapper: the server's walls refused it
        assert "syntax error" not in hostile["message"], hostile["message"]
    assert checks["after"]["status"] == "corrupt" and checks["after"]["sample"] == [
        f"{db.cluster.info['user']}/on/repeatable read"]
    assert checks["null_prices"]["status"] == "ok"
    assert out["status"] == "error" and out["errors"] == [f"hostile: {hostile['message']}"]
    assert "custom[0].sql" in IntegrityService.failure_message(out, False)

    # The wall itself, without the scan's wrapper: the raw text straight into query_to_xml in a READ ONLY
    # transaction is refused by the server too (only a text of read-only queries gets through, changing nothing)
    conn = db.connect(autocommit=False, options="-c default_transaction_read_only=on")
    try:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with pytest.raises(psycopg2.Error) if name not in HOSTILE_BUT_READ_ONLY else contextlib.nullcontext():
            cur.execute("SELECT pg_catalog.query_to_xml(%s, false, false, '')", (text,))
        conn.rollback()
    finally:
        conn.close()
        ran_program = os.path.exists(flag)
        if ran_program:
            os.unlink(flag)
    assert fingerprint(db) == before and not ran_program, name


BENIGN = {
    "trailing_semicolons": ("SELECT id FROM trades WHERE status = 'open' ORDER BY id;  ;\n ", 12, [5, 11, 17]),
    "quotes_and_comments_holding_semicolons": (
        "SELECT id FROM trades WHERE status <> ';' AND status <> $$;COMMIT;$$ AND status <> $t$ ; $q$ $t$ "
        "AND status <> E'\\';' AND status <> 'a\\' /* ; /* nested ; */ */ AND id IN (5, 11) ORDER BY id "
        "-- ; DELETE FROM trades", 2, [5, 11]),
    "non_ascii_identifier_with_dollars": ("SELECT id AS é€$x$, 1 AS ü€$x$ FROM trades WHERE id = 5", 1, [5]),
    "cte": ("WITH t AS (SELECT id FROM trades WHERE quantity > 6) SELECT id FROM t ORDER BY id DESC", 12,
            [71, 65, 59]),
    "values": ("VALUES (3), (1), (2)", 3, [3, 1, 2]),
    "table": ("TABLE accounts ORDER BY id DESC", 4, [4, 3, 2]),
    "union_limit": ("SELECT id FROM trades WHERE id < 3 UNION ALL SELECT id FROM positions WHERE id = 9 LIMIT 5", 3,
                    [1, 2, 9]),
    "column_named_q_twice": ("SELECT 'k' || id AS q, id AS q FROM trades WHERE id = 1", 1, ["k1"]),
    "numeric_null_and_json": ("SELECT x FROM (VALUES (1.50::numeric), (NULL), (2.0), (7)) v(x)", 4, ["1.50", None, 2]),
    "no_rows": ("SELECT id FROM trades WHERE false", 0, []),
    "percent_signs_and_placeholders": ("SELECT '100%s %d %% $1' AS x", 1, ["100%s %d %% $1"]),
    "set_config_is_reverted_after_the_check": (
        "SELECT set_config('default_transaction_read_only', 'off', false) || set_config('search_path', 'nope', "
        "false)", 1, ["offnope"]),
}


def test_benign_custom_checks_count_and_sample_in_order(db):
    out = run(db, checks=[], sample_size=3, custom=[{"name": n, "sql": t} for n, (t, _, _) in BENIGN.items()] + [
        {"name": "settings_restored", "sql": "SELECT current_setting('default_transaction_read_only') || '/' || "
                                             "current_setting('search_path')"}])
    checks = {c["name"]: c for c in out["checks"]}
    for name, (_, count, sample) in BENIGN.items():
        assert (checks[name]["count"], checks[name]["sample"]) == (count, sample), (name, checks[name])
        assert checks[name]["status"] == ("corrupt" if count else "ok"), checks[name]
    assert checks["settings_restored"]["sample"] == ['on/"$user", public']
    assert out["errors"] == [] and out["status"] == "corrupt"


def test_an_exported_custom_check_exports_its_full_rows_through_the_server(db, tmp_path):
    path = tmp_path / "rows.json"
    out = run(db, checks=[], actions=["export"], export_path=str(path), custom=[
        {"name": "odd", "sql": "SELECT id, status, '<&>' AS xml_chars, E'\\x01' AS control, NULL AS nothing "
                               "FROM trades WHERE id IN (5, 11) ORDER BY id DESC;"}])
    assert out["actions"][0]["status"] == "ok", out["msg"]
    rows = json.loads(path.read_text())["checks"][0]["rows"]
    assert rows == [{"id": 11, "status": "open", "xml_chars": "<&>", "control": "\u0001", "nothing": None},
                    {"id": 5, "status": "open", "xml_chars": "<&>", "control": "\u0001", "nothing": None}]


def test_lock_timeout_bounds_the_scan(db):
    holder = db.connect(autocommit=False)
    try:
        holder.cursor().execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        out = run(db, lock_timeout=1, checks=[name for name, _ in ROW_CHECKS])
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert elapsed < 3.5, elapsed  # one lock_timeout for the table, not one per check, and no hang
    checks = by_check(out)
    for key in [("invalid_status", "trades"), ("non_positive_quantity", "trades"), ("duplicate_ids", "trades"),
                ("orphan_trades", "trades"), ("position_mismatch", "positions")]:
        assert checks[key]["status"] == "error", key
        assert "could not lock trades within lock_timeout (1 s)" in checks[key]["message"]
        assert "raise lock_timeout" in checks[key]["message"]
    for key in [("null_prices", "positions"), ("duplicate_ids", "positions")]:
        assert checks[key]["status"] == "ok", key
    assert out["status"] == "error"


# --------------------------------------------------------------------------------------------
# server checks and amcheck
# --------------------------------------------------------------------------------------------
def test_long_queries_blocking_locks_and_saturation_are_warnings(db):
    db.execute("CREATE TABLE other (i int)")
    holder = db.connect(autocommit=False)
    holder.cursor().execute("LOCK TABLE other IN ACCESS EXCLUSIVE MODE")
    waiter = db.connect(options="-c statement_timeout=20000")
    sleeper = db.connect(options="-c statement_timeout=20000")
    holder_pid, waiter_pid, sleeper_pid = (c.get_backend_pid() for c in (holder, waiter, sleeper))
    def execute(conn, statement):
        try:
            conn.cursor().execute(statement)
        except psycopg2.Error:
            pass  # cancelled at the end of the test

    threads = [threading.Thread(target=execute, args=(conn, statement), daemon=True)
               for conn, statement in ((waiter, "SELECT * FROM other"), (sleeper, "SELECT pg_sleep(20)"))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = "
                        "'active' AND query IN ('SELECT * FROM other', 'SELECT pg_sleep(20)')") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.6)
        out = run(db, checks=["long_queries", "blocking_locks", "connection_saturation"], long_query_seconds=0.5,
                  max_connection_ratio=0.01)
    finally:
        db.execute("SELECT pg_cancel_backend(%s)", (sleeper.get_backend_pid(),))
        holder.rollback()
        for t in threads:
            t.join(5)
        for conn in (holder, waiter, sleeper):
            conn.close()
    checks = by_check(out)
    assert out["status"] == "warn" and sorted(out["warned"]) == ["blocking_locks", "connection_saturation",
                                                                "long_queries"]
    long = checks[("long_queries", None)]
    assert long["status"] == "warn" and {s["pid"] for s in long["sample"]} == {
        waiter_pid, sleeper_pid}
    assert "SELECT pg_sleep(20)" in [s["query"] for s in long["sample"]]
    locks = checks[("blocking_locks", None)]
    assert locks["status"] == "warn" and locks["count"] == 1
    assert locks["sample"][0]["pid"] == waiter_pid
    assert locks["sample"][0]["relation"] == "other"
    assert [b["pid"] for b in locks["sample"][0]["blocked_by"]] == [holder_pid]
    saturation = checks[("connection_saturation", None)]
    assert saturation["status"] == "warn" and saturation["sample"][0]["max_connections"] == 100
    assert IntegrityService.failure_message(out, True) is None  # warnings never fail the task


def test_amcheck_runs_bt_index_check_only_and_finds_a_corrupt_index(db):
    # counts every call of a function, C ones included, so the test can prove which amcheck function ran
    db.execute(f"ALTER DATABASE {db.name} SET track_functions = 'all'")
    out = run(db, checks=["amcheck"])
    assert out["status"] == "ok" and out["changed"] is False
    assert by_check(out)[("amcheck", None)]["status"] == "skipped"
    assert db.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'") == 0

    out = run(db, checks=["amcheck"], allow_create_extension=True)
    amcheck = by_check(out)[("amcheck", None)]
    assert amcheck["status"] == "ok", amcheck
    assert amcheck["message"] == "bt_index_check passed on 4 btree index(es) of positions, trades, accounts"
    assert out["changed"] is True and out["actions"][0]["action"] == "create_extension"
    out = run(db, checks=["amcheck"], allow_create_extension=True, amcheck_heapallindexed=True)
    assert out["changed"] is False and out["actions"] == []  # the extension is there now
    assert by_check(out)[("amcheck", None)]["status"] == "ok"

    # A btree whose comparison function changes after the index was built: its items are then out of
    # order, which is exactly what bt_index_check verifies (a real, safe, SQL-only index corruption).
    db.execute("""
        CREATE FUNCTION pgi_cmp(int8, int8) RETURNS int4 LANGUAGE sql IMMUTABLE AS 'SELECT btint8cmp($1, $2)';
        CREATE OPERATOR CLASS pgi_ops FOR TYPE int8 USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =,
            OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 pgi_cmp(int8, int8);
        CREATE INDEX trades_corrupt_idx ON trades (id pgi_ops);
        CREATE OR REPLACE FUNCTION pgi_cmp(int8, int8) RETURNS int4 LANGUAGE sql IMMUTABLE
            AS 'SELECT btint8cmp($2, $1)';
    """)
    out = run(db, checks=["amcheck"])
    amcheck = by_check(out)[("amcheck", None)]
    assert amcheck["status"] == "corrupt" and amcheck["count"] == 1, amcheck
    assert amcheck["sample"][0]["index"] == "trades_corrupt_idx" and amcheck["sample"][0]["table"] == "trades"
    assert "item order invariant violated" in amcheck["sample"][0]["message"]
    assert out["status"] == "corrupt" and out["corrupt"] == ["amcheck"]
    assert "trades_corrupt_idx" in IntegrityService.failure_message(out, True)

    deadline = time.monotonic() + 5
    while True:  # function statistics arrive when the module's sessions have ended
        calls = dict(db.query("SELECT funcname, sum(calls) FROM pg_stat_user_functions "
                              "WHERE funcname LIKE 'bt_index%' GROUP BY 1"))
        if calls.get("bt_index_check", 0) >= 4 + 4 + 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # 4 indexes twice, then 4 good ones (a call that raises is not counted); never the parent check
    assert calls.get("bt_index_check") >= 12 and "bt_index_parent_check" not in calls, calls


# --------------------------------------------------------------------------------------------
# actions
# --------------------------------------------------------------------------------------------
QUARANTINE_INJECTION = """
UPDATE positions SET entry_price = NULL WHERE id IN (1, 2);
UPDATE trades SET status = 'bogus' WHERE id = 5;
UPDATE trades SET quantity = -1 WHERE id = 11;
UPDATE trades SET created_at = now() + interval '1 day' WHERE id = 17;
INSERT INTO trades VALUES (1001, 99, 'BTC-USD', 'buy', 1, 100, 'open', now() - interval '1 hour'),
                          (1002, 99, 'BTC-USD', 'buy', 1, 100, 'weird', now() - interval '1 hour');
INSERT INTO trades SELECT id, account_id, symbol, side, quantity, price, 'open', created_at FROM trades WHERE id = 7;
INSERT INTO positions SELECT id, account_id, symbol, 0, entry_price, current_price, 'closed', updated_at
  FROM positions WHERE id = 6;
"""
BAD_TRADES = "id IN (5, 11, 17, 1001, 1002) OR (id = 7 AND status = 'open')"
BAD_POSITIONS = "id IN (1, 2) OR (id = 6 AND status = 'closed')"
TRADE_COLUMNS = "id, account_id, symbol, side, quantity, price, status, created_at"
POSITION_COLUMNS = "id, account_id, symbol, quantity, entry_price, current_price, status, updated_at"


def rows(db, table, columns, where="true"):
    return sorted(db.query(f"SELECT row_to_json(q)::text FROM (SELECT {columns} FROM {table} WHERE {where}) q"))


def test_quarantine_moves_every_bad_row_in_one_transaction_and_keeps_them_all(db):
    db.execute(QUARANTINE_INJECTION)
    bad_trades, bad_positions = rows(db, "trades", TRADE_COLUMNS, BAD_TRADES), rows(db, "positions", POSITION_COLUMNS,
                                                                                     BAD_POSITIONS)
    assert (len(bad_trades), len(bad_positions)) == (6, 3)
    all_trades, all_positions = rows(db, "trades", TRADE_COLUMNS), rows(db, "positions", POSITION_COLUMNS)
    assert (len(all_trades), len(all_positions)) == (75, 13)

    out = run(db, actions=["quarantine"], incident_id="INC-42", checks=[name for name, _ in ROW_CHECKS])
    assert out["changed"] is True and out["errors"] == [], out["msg"]
    action = out["actions"][0]
    assert action["action"] == "quarantine" and action["status"] == "ok"
    assert {t["table"]: t["moved"] for t in action["tables"]} == {"positions": 3, "trades": 6}
    # live + quarantined = original, row for row, and exactly the bad rows moved
    moved_trades = rows(db, "tradeops_quarantine.trades", TRADE_COLUMNS)
    moved_positions = rows(db, "tradeops_quarantine.positions", POSITION_COLUMNS)
    assert moved_trades == bad_trades and moved_positions == bad_positions
    assert sorted(rows(db, "trades", TRADE_COLUMNS) + moved_trades) == all_trades
    assert sorted(rows(db, "positions", POSITION_COLUMNS) + moved_positions) == all_positions
    # the first copy of a duplicated key stays; a row bad twice is moved once, by the first check
    assert db.query("SELECT status FROM trades WHERE id = 7") == [("closed",)]
    assert db.query("SELECT check_name, incident_id, source_table, batch_id FROM tradeops_quarantine.trades "
                    "WHERE id = 1002") == [("invalid_status", "INC-42", "trades", action["batch_id"])]
    assert dict(db.query("SELECT check_name, count(*) FROM tradeops_quarantine.trades GROUP BY 1")) == {
        "invalid_status": 2, "non_positive_quantity": 1, "future_timestamps": 1, "orphan_trades": 1,
        "duplicate_ids": 1}

    again = run(db, actions=["quarantine"], incident_id="INC-42", checks=[name for name, _ in ROW_CHECKS])
    assert again["changed"] is False and again["actions"][0]["message"] == "nothing to quarantine"
    assert again["corrupt"] == ["position_mismatch"]  # positions 1 and 2 are gone; that is reconcile's job
    assert db.scalar("SELECT count(*) FROM tradeops_quarantine.trades") == 6


# A btree whose comparison function changed after it was built (as in the amcheck test): bt_index_check
# finds its items out of order; REINDEX rebuilds it with the function as it is now.
FLIPPED_INDEX = """
CREATE FUNCTION pgi_cmp(int8, int8) RETURNS int4 LANGUAGE sql IMMUTABLE AS 'SELECT btint8cmp($1, $2)';
CREATE OPERATOR CLASS pgi_ops FOR TYPE int8 USING btree AS OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =,
    OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 pgi_cmp(int8, int8);
CREATE INDEX trades_corrupt_idx ON trades (id pgi_ops);
CREATE OR REPLACE FUNCTION pgi_cmp(int8, int8) RETURNS int4 LANGUAGE sql IMMUTABLE AS 'SELECT btint8cmp($2, $1)';
"""


def test_reindex_rebuilds_only_the_corrupt_index_in_a_read_only_database_and_keeps_every_row(db):
    db.execute(FLIPPED_INDEX)
    trades = rows(db, "trades", TRADE_COLUMNS)
    oid_before = db.scalar("SELECT pg_relation_filenode('trades_id_idx')")
    assert run(db, checks=["amcheck"], allow_create_extension=True)["status"] == "corrupt"
    planned = IntegrityService(db.params(checks=["amcheck"], actions=["reindex"]), check_mode=True).run()
    assert planned["actions"][-1]["message"] == "would REINDEX trades_corrupt_idx and check it again (check mode)"
    assert planned["changed"] is True
    assert run(db, checks=["amcheck"])["status"] == "corrupt"  # check mode rebuilt nothing

    out = run(db, read_only=True, read_only_sessions="terminate", checks=["amcheck"], actions=["reindex"])
    action = out["actions"][-1]
    assert action["action"] == "reindex" and action["status"] == "ok" and action["changed"] is True, action
    assert action["indexes"] == ["trades_corrupt_idx"]
    assert out["status"] == "corrupt"  # what the scan saw before the rebuild
    assert db.scalar("SHOW default_transaction_read_only") == "on"  # rebuilt all the same, in its own transaction
    after = run(db, checks=["amcheck"])
    assert by_check(after)[("amcheck", None)]["status"] == "ok", after["checks"]
    assert rows(db, "trades", TRADE_COLUMNS) == trades  # not a row touched
    assert db.scalar("SELECT pg_relation_filenode('trades_id_idx')") == oid_before  # the good indexes were left alone

    again = run(db, checks=["amcheck"], actions=["reindex"])
    assert again["changed"] is False and again["actions"][-1]["message"] == "no corrupt index to rebuild"
    run(db, read_only=False)


def test_quarantine_checks_limit_what_is_moved(db):
    db.execute(QUARANTINE_INJECTION)
    out = run(db, actions=["quarantine"], quarantine_checks=["orphan_trades"], checks=["orphan_trades"],
              quarantine_schema="incident_q")
    assert out["actions"][0]["tables"] == [{"table": "trades", "quarantine_table": "incident_q.trades", "moved": 2}]
    assert db.scalar("SELECT count(*) FROM trades") == 73
    assert db.scalar("SELECT to_regclass('incident_q.positions')") is None


def test_reconcile_rewrites_positions_from_filled_trades_and_records_the_old_rows(db):
    db.execute("UPDATE positions SET quantity = 11 WHERE id = 1; UPDATE positions SET quantity = NULL WHERE id = 2; "
               "DELETE FROM positions WHERE id = 3")
    out = run(db, checks=["position_mismatch"], actions=["reconcile"], incident_id="INC-7")
    action = out["actions"][0]
    assert action["status"] == "ok" and action["changed"] is True, action.get("message")
    assert action["reconciled"] == 2 and action["unreconciled"] == 1  # position 3 has no row to rewrite
    # and no key that fills itself to create one with: said so, naming the column
    assert action["created"] == 0 and action["missing_without_key"] == 1
    assert ("1 account/symbol(s) have filled trades but no position, and positions.id has no default or identity, "
            "so reconcile cannot create their positions") in action["message"]
    assert db.query("SELECT id, quantity FROM positions WHERE id IN (1, 2) ORDER BY id") == [(1, 8), (2, 8)]
    assert db.query("SELECT id, old_quantity, new_quantity, incident_id FROM "
                    "tradeops_quarantine.positions__reconciled ORDER BY id") == [
        (1, 11, 8, "INC-7"), (2, None, 8, "INC-7")]
    again = run(db, checks=["position_mismatch"], actions=["reconcile"])
    assert again["changed"] is False and by_check(again)[("position_mismatch", "positions")]["count"] == 1
    assert "positions.id has no default or identity" in again["actions"][0]["message"]


@pytest.mark.parametrize("status, expected", [(None, "open"), ("live", "live"), ("", "from-column-default")])
def test_reconcile_creates_a_missing_position_with_open_position_status(db, status, expected):
    db.execute("ALTER TABLE positions ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 100); "
               "ALTER TABLE positions ALTER COLUMN status SET DEFAULT 'from-column-default'; "
               "DELETE FROM positions WHERE id IN (3, 7)")
    schema = {} if status is None else {"open_position_status": status}
    out = run(db, checks=["position_mismatch"], actions=["reconcile"], schema=schema)
    action = out["actions"][0]
    assert action["status"] == "ok" and action["created"] == 2 and action["unreconciled"] == 0, action["message"]
    assert "missing_without_key" not in action
    assert db.query("SELECT id, account_id, symbol, quantity, status FROM positions WHERE id >= 100 ORDER BY id") == [
        (100, 1, "SOL-USD", 8, expected), (101, 3, "BTC-USD", 8, expected)]
    assert run(db, checks=["position_mismatch"])["status"] == "ok"


# A database of foreign design: mixed-case schema and tables, each table with its own key, and decoy columns
# named like the defaults (every "id" below is wrong on purpose: all the same in Holdings and Fills, the
# account numbers' positions in Accounts), plus lowercase tables of the same names that unquoted names would reach.
FOREIGN_SQL = """
CREATE SCHEMA "Book";
CREATE TABLE "Book"."Accounts" (account_no int NOT NULL, id int, name text);
INSERT INTO "Book"."Accounts" SELECT 100 + id, id, name FROM accounts;
CREATE TABLE "Book"."Holdings" (holding_id bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 5000), id bigint,
    account_id int, symbol text, quantity numeric, entry_price numeric, current_price numeric, state text,
    updated_at timestamptz);
INSERT INTO "Book"."Holdings" (holding_id, id, account_id, symbol, quantity, entry_price, current_price, state,
                               updated_at)
SELECT 1000 + id, 7, 100 + account_id, symbol, quantity, entry_price, current_price, status, updated_at FROM positions;
CREATE TABLE "Book"."Fills" (fill_id bigint NOT NULL, id bigint, account_id int, symbol text, side text,
    quantity numeric, price numeric, state text, created_at timestamptz);
INSERT INTO "Book"."Fills"
SELECT id, 1, 100 + account_id, symbol, side, quantity, price, status, created_at FROM trades;
CREATE SCHEMA book;
CREATE TABLE book.holdings (LIKE "Book"."Holdings");
CREATE TABLE book.fills (LIKE "Book"."Fills");
CREATE TABLE book.accounts (LIKE "Book"."Accounts");
INSERT INTO book.accounts VALUES (1, 1, 'decoy');
"""
FOREIGN_SCHEMA = {"positions_table": "Book.Holdings", "trades_table": "Book.Fills", "accounts_table": "Book.Accounts",
                  "positions_key_column": "holding_id", "trades_key_column": "fill_id",
                  "accounts_key_column": "account_no", "status_column": "state"}
FOREIGN_CHECKS = [("null_prices", "Book.Holdings"), ("non_positive_quantity", "Book.Holdings"),
                  ("future_timestamps", "Book.Holdings"), ("invalid_status", "Book.Fills"),
                  ("non_positive_quantity", "Book.Fills"), ("future_timestamps", "Book.Fills"),
                  ("duplicate_ids", "Book.Holdings"), ("duplicate_ids", "Book.Fills"), ("orphan_trades", "Book.Fills"),
                  ("position_mismatch", "Book.Holdings")]


def test_a_foreign_schema_mixed_case_with_a_key_per_table_is_checked_quarantined_and_reconciled_exactly(db):
    db.execute(FOREIGN_SQL)
    clean = run(db, checks=[name for name, _ in ROW_CHECKS], schema=FOREIGN_SCHEMA)
    assert clean["status"] == "ok", clean["msg"]
    assert sorted(by_check(clean)) == sorted(FOREIGN_CHECKS)

    db.execute("""
        UPDATE "Book"."Holdings" SET quantity = 11 WHERE holding_id = 1001;
        DELETE FROM "Book"."Holdings" WHERE holding_id = 1003;
        -- account 1: an id of the decoy column Accounts.id and of book.accounts, not an account_no
        INSERT INTO "Book"."Fills" VALUES (9001, 1, 1, 'BTC-USD', 'buy', 1, 100, 'open', now() - interval '1 hour');
        INSERT INTO "Book"."Fills" SELECT fill_id, id, account_id, symbol, side, quantity, price, 'open', created_at
            FROM "Book"."Fills" WHERE fill_id = 5;
    """)
    out = run(db, checks=[name for name, _ in ROW_CHECKS], schema=dict(FOREIGN_SCHEMA, open_position_status="live"),
              actions=["quarantine", "reconcile"], quarantine_checks=["orphan_trades", "duplicate_ids"],
              incident_id="INC-F")
    checks = by_check(out)
    counts = {key: c["count"] for key, c in checks.items() if c["count"]}
    assert counts == {("orphan_trades", "Book.Fills"): 1, ("duplicate_ids", "Book.Fills"): 1,
                      ("position_mismatch", "Book.Holdings"): 2}, counts
    assert checks[("orphan_trades", "Book.Fills")]["sample"] == [9001]
    assert checks[("duplicate_ids", "Book.Fills")]["sample"] == [5]
    assert checks[("orphan_trades", "Book.Fills")]["message"] == (
        "1 trade(s) whose account_id is NULL or matches no Book.Accounts.account_no")
    quarantine, reconcile = out["actions"]
    assert quarantine["status"] == "ok" and quarantine["tables"] == [
        {"table": "Book.Fills", "quarantine_table": "tradeops_quarantine.Book__Fills", "moved": 2}], quarantine
    assert db.query('SELECT fill_id, check_name, state FROM tradeops_quarantine."Book__Fills" ORDER BY 1') == [
        (5, "duplicate_ids", "open"), (9001, "orphan_trades", "open")]
    assert reconcile["status"] == "ok", reconcile["message"]
    assert (reconcile["reconciled"], reconcile["created"], reconcile["unreconciled"]) == (1, 1, 0)
    assert db.query('SELECT holding_id, account_id, symbol, quantity, state FROM "Book"."Holdings" '
                    "WHERE holding_id IN (1001, 1003) OR holding_id >= 5000 ORDER BY 1") == [
        (1001, 101, "BTC-USD", 8, "open"), (5000, 101, "SOL-USD", 8, "live")]
    assert db.query('SELECT holding_id, old_quantity, new_quantity FROM '
                    'tradeops_quarantine."Book__Holdings__reconciled" ORDER BY 1') == [(1001, 11, 8), (5000, None, 8)]
    # the decoys and the lab's own tables were not touched
    assert db.query("SELECT (SELECT count(*) FROM book.holdings), (SELECT count(*) FROM book.fills), "
                    "(SELECT count(*) FROM positions), (SELECT count(*) FROM trades)") == [(0, 0, 12, 72)]
    assert db.scalar('SELECT count(*) FROM "Book"."Fills"') == 72
    assert run(db, checks=[name for name, _ in ROW_CHECKS], schema=FOREIGN_SCHEMA)["status"] == "ok"


def test_key_column_alone_still_keys_every_table(db):
    db.execute(FOREIGN_SQL)
    # the old single option: "id" for all three tables, which here are the decoy columns
    out = run(db, checks=["duplicate_ids", "orphan_trades"], schema=dict(
        FOREIGN_SCHEMA, positions_key_column=None, trades_key_column=None, accounts_key_column=None, key_column="id"))
    counts = {key: c["count"] for key, c in by_check(out).items()}
    assert counts == {("duplicate_ids", "Book.Holdings"): 11, ("duplicate_ids", "Book.Fills"): 71,
                      ("orphan_trades", "Book.Fills"): 72}
    # one key of its own wins over key_column for its table only
    out = run(db, checks=["duplicate_ids", "orphan_trades"], schema=dict(
        FOREIGN_SCHEMA, positions_key_column=None, trades_key_column=None, key_column="id"))
    counts = {key: c["count"] for key, c in by_check(out).items()}
    assert counts == {("duplicate_ids", "Book.Holdings"): 11, ("duplicate_ids", "Book.Fills"): 71,
                      ("orphan_trades", "Book.Fills"): 0}


@pytest.mark.parametrize("real_default, decoy_default", [(True, False), (False, True)])
def test_reconcile_asks_the_mixed_case_table_for_its_key_default_not_a_lowercase_decoy(db, real_default,
                                                                                       decoy_default):
    # only the options that always existed (one key_column), so that the old code runs this test too
    db.execute("""
        CREATE SCHEMA "Book"; CREATE SCHEMA book;
        CREATE TABLE "Book"."Accounts" AS SELECT * FROM accounts;
        CREATE TABLE "Book"."Fills" AS SELECT * FROM trades;
        CREATE TABLE "Book"."Holdings" (LIKE positions);
        INSERT INTO "Book"."Holdings" SELECT * FROM positions;
        CREATE TABLE book.holdings (LIKE positions);
        DELETE FROM "Book"."Holdings" WHERE id = 3;
    """)
    for table, has in (('"Book"."Holdings"', real_default), ("book.holdings", decoy_default)):
        if has:
            db.execute(f"ALTER TABLE {table} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 100)")
    out = run(db, checks=["position_mismatch"], actions=["reconcile"], schema={
        "positions_table": "Book.Holdings", "trades_table": "Book.Fills", "accounts_table": "Book.Accounts"})
    action = out["actions"][0]
    assert action["status"] == "ok", action["message"]
    if real_default:
        assert action["created"] == 1 and action["unreconciled"] == 0 and action["changed"] is True, action["message"]
        assert db.query('SELECT id, account_id, symbol, quantity, status FROM "Book"."Holdings" WHERE id >= 100') == [
            (100, 1, "SOL-USD", 8, "open")]
    else:
        assert action["changed"] is False and action["unreconciled"] == 1 and action["missing_without_key"] == 1
        assert "Book.Holdings.id has no default or identity" in action["message"], action["message"]
        assert db.scalar('SELECT count(*) FROM "Book"."Holdings"') == 11
    assert db.scalar("SELECT count(*) FROM book.holdings") == 0


def test_export_writes_the_offending_rows_0600_and_is_idempotent(db, tmp_path):
    db.execute(QUARANTINE_INJECTION)
    path = tmp_path / "evidence" / "rows.json"
    path.parent.mkdir()
    params = dict(actions=["export"], export_path=str(path), incident_id="INC-9",
                  checks=[name for name, _ in ROW_CHECKS])
    out = run(db, **params)
    assert out["changed"] is True and out["actions"][0]["status"] == "ok", out["msg"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["database"] == db.name and doc["incident_id"] == "INC-9"
    exported = {(c["name"], c["table"]): c for c in doc["checks"]}
    assert [r["id"] for r in exported[("null_prices", "positions")]["rows"]] == [1, 2]
    assert exported[("null_prices", "positions")]["rows"][0]["entry_price"] is None
    assert exported[("orphan_trades", "trades")]["rows"][0] == {
        "id": 1001, "account_id": 99, "symbol": "BTC-USD", "side": "buy", "quantity": 1, "price": 100,
        "status": "open", "created_at": exported[("orphan_trades", "trades")]["rows"][0]["created_at"]}
    assert exported[("duplicate_ids", "trades")]["rows"][0]["status"] == "open"  # the copy, not the first row
    assert all(len(c["rows"]) == c["count"] for c in doc["checks"])
    assert sorted(os.listdir(path.parent)) == ["rows.json"]  # no temp file left behind
    again = run(db, **params)
    assert again["changed"] is False and "already holds" in again["actions"][0]["message"]


def test_read_only_on_and_off_verified_idempotent_and_terminate_ends_open_sessions(db):
    other = db.connect()  # opened before the change: it keeps the old default
    other_pid = other.get_backend_pid()
    out = run(db, read_only=True, read_only_sessions="terminate", read_only_wait_seconds=5, checks=[])
    action = out["actions"][0]
    assert action["status"] == "ok" and action["changed"] is True and action["verified"] is True, action
    assert action["before"] == "off" and action["after"] == "on" and action["terminated"] == [other_pid]
    with pytest.raises(psycopg2.OperationalError):
        other.cursor().execute("SELECT 1")
    other.close()
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        db.execute("INSERT INTO accounts VALUES (50, 'x')")
    assert db.scalar("SHOW default_transaction_read_only") == "on"

    again = run(db, read_only=True, checks=[])
    assert again["changed"] is False and again["actions"][0]["verified"] is True

    late = db.connect()  # opened while read-only; wait mode waits for it, then gives up naming it
    try:
        started = time.monotonic()
        out = run(db, read_only=False, read_only_wait_seconds=0.5, checks=[])
        assert time.monotonic() - started < 3
        assert out["status"] == "error" and out["changed"] is True
        assert f"pid {late.get_backend_pid()}" in out["actions"][0]["message"]
        assert "read_only_sessions: terminate" in IntegrityService.failure_message(out, False)
    finally:
        late.close()
    out = run(db, read_only=False, checks=[])
    assert out["changed"] is False and out["actions"][0]["verified"] is True
    db.execute("INSERT INTO accounts VALUES (50, 'x')")


def test_read_only_runs_first_and_the_scan_and_quarantine_still_work(db):
    db.execute("UPDATE positions SET current_price = NULL WHERE id = 12")
    out = run(db, read_only=True, actions=["quarantine"], checks=["null_prices"])
    assert [a["action"] for a in out["actions"]] == ["read_only", "quarantine"]
    assert out["actions"][1]["tables"][0]["moved"] == 1 and out["errors"] == []
    assert db.scalar("SHOW default_transaction_read_only") == "on"
    out = run(db, read_only=False, checks=["null_prices"])
    assert out["status"] == "ok" and out["actions"][-1]["action"] == "read_only"
    assert out["actions"][-1]["after"] == "off" and out["changed"] is True


def test_the_password_never_appears(db):
    password = db.cluster.info["password"]
    out = run(db, checks=["null_prices"], custom=[{"name": "leak", "sql": f"SELECT '{password}'::int"}])
    assert password not in json.dumps(out)
    assert "********" in by_check(out)[("leak", None)]["message"]
    with pytest.raises(BackendError) as err:
        IntegrityService(db.params(login_password=password + "-wrong")).run()
    assert password not in str(err.value) and "password authentication failed" in str(err.value)
