# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL integrity checks and the repair actions behind ``tradeops.remediation.pg_integrity``.

Plain Python with no Ansible globals: ``IntegrityService(params, check_mode).run()`` returns a
result dict; the module is a thin adapter around it. Everything raised is a :class:`TradeopsError`.

How a run goes (each step is optional):

1. ``read_only: true`` first (contain the writes): ``ALTER DATABASE ... SET
   default_transaction_read_only = on`` on an autocommit session, then the sessions opened before
   it are waited for or terminated, then a new session verifies ``SHOW default_transaction_read_only``.
2. The scan, on its own session, in ONE ``REPEATABLE READ, READ ONLY`` transaction (one snapshot
   for every pass), with ``statement_timeout``, ``lock_timeout`` and
   ``application_name=tradeops.pg_integrity``. The session also starts with
   ``default_transaction_read_only=on``. Every checked table is locked ``ACCESS SHARE`` (what a
   SELECT takes) once, up front, so a table held by another session costs one ``lock_timeout``, not
   one per pass. The passes, each in a savepoint so that one error does not end the others:

   * ``server``: checksum_failures, long_queries, blocking_locks, connection_saturation (catalog
     views only; first, so that the statistics snapshot is taken before our own work);
   * ``positions`` and ``trades``: ONE sequential pass over each table computing every row check
     on it as ``count(*) FILTER (WHERE ...)`` plus a bounded sample
     ``(array_agg(key) FILTER (WHERE ...))[1:sample_size]`` (null_prices, invalid_status,
     non_positive_quantity, future_timestamps), over ``WHERE <any of the predicates>`` so that the
     scan filters in parallel workers (see :func:`filter_pass_sql`);
   * ``<table>:duplicate_ids`` (GROUP BY key HAVING count(*) > 1), ``trades:orphan_trades`` (anti
     join to accounts) and ``position_mismatch`` (positions and filled trades grouped by account
     and symbol, full join): their own queries, because they need grouping or joins;
   * ``amcheck``: ``bt_index_check`` on every btree index of the checked tables (never
     ``bt_index_parent_check``, which blocks writers);
   * ``custom:<name>``: the user's query. Its text is never part of the SQL this module sends: it
     is a bound parameter of ``pg_catalog.query_to_xml()``, which PostgreSQL parses and runs through
     SPI with ``read_only=true`` (see :func:`custom_check_sql`), so the SERVER refuses anything but
     read-only queries (COMMIT/ROLLBACK, SET, DO, COPY, CALL, data-modifying CTEs, FOR UPDATE, ...),
     whatever the text and however it is quoted. The READ ONLY transaction is a second wall (a
     function that writes is refused), and the savepoint it runs in is always rolled back, so not
     even a ``set_config()`` survives it. Nothing here parses SQL in Python.

   The built-in passes read the heap, never an index (index scans are off for them): an index
   may be what is corrupt. ``export`` streams the offending rows inside the same snapshot.
3. ``reindex`` (the btree indexes amcheck found corrupt are rebuilt from their tables and checked
   again), then ``quarantine`` then ``reconcile``, each in ONE read-write transaction on the write session,
   with the source tables locked ``SHARE ROW EXCLUSIVE`` (readers go on, writers wait), counts
   verified before COMMIT; anything unexpected rolls the whole transaction back.
4. ``read_only: false`` last (resume the writes), and only when nothing errored.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import decimal
import json
import math
import os
import re
import tempfile
import time
import uuid

from ansible_collections.tradeops.remediation.plugins.module_utils import _postgres
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import REDACTED, redact
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    TradeopsError,
    ValidationError,
)

try:
    import psycopg2
    from psycopg2 import sql

    HAS_PSYCOPG2 = True
except ImportError:  # the module reports it; the sanity import test runs without it
    psycopg2 = None
    sql = None
    HAS_PSYCOPG2 = False

OK = "ok"
WARN = "warn"
CORRUPT = "corrupt"
ERROR = "error"
SKIPPED = "skipped"
SEVERITY = {OK: 0, SKIPPED: 0, WARN: 1, CORRUPT: 2, ERROR: 3}
APPLICATION_NAME = "tradeops.pg_integrity"

ROW_CHECKS = ("null_prices", "invalid_status", "position_mismatch", "orphan_trades", "duplicate_ids",
              "non_positive_quantity", "future_timestamps")
SERVER_CHECKS = ("amcheck", "checksum_failures", "long_queries", "blocking_locks", "connection_saturation")
BUILTIN_CHECKS = ROW_CHECKS + SERVER_CHECKS
# Row-level checks whose rows can be moved to the quarantine schema, in the order they are moved:
# the row defects first, duplicates last, so that the copy kept of a duplicated key is a good row.
QUARANTINABLE = ("null_prices", "invalid_status", "non_positive_quantity", "future_timestamps", "orphan_trades",
                 "duplicate_ids")
ACTIONS = ("export", "reindex", "quarantine", "reconcile")
SESSION_MODES = ("wait", "terminate")
TABLE_ROLES = ("positions", "trades", "accounts")

SCHEMA_DEFAULTS = dict(
    positions_table="positions",
    trades_table="trades",
    accounts_table="accounts",
    key_column="id",
    # each table's own key; None: key_column
    positions_key_column=None,
    trades_key_column=None,
    accounts_key_column=None,
    account_id_column="account_id",
    symbol_column="symbol",
    quantity_column="quantity",
    status_column="status",
    entry_price_column="entry_price",
    current_price_column="current_price",
    side_column="side",
    trades_timestamp_column="created_at",
    trade_price_column="price",
    positions_timestamp_column="updated_at",
    allowed_statuses=["open", "closed", "cancelled"],
    filled_statuses=["closed"],
    sell_sides=["sell"],
    closed_position_statuses=["closed"],
    open_position_status="open",
)
# columns that may be set to '' to leave out what they feed
OPTIONAL_COLUMNS = ("side_column", "trades_timestamp_column", "positions_timestamp_column")
STATUS_LISTS = ("allowed_statuses", "filled_statuses", "sell_sides", "closed_position_statuses")
NONEMPTY_LISTS = ("allowed_statuses", "filled_statuses")

DEFAULTS = dict(
    checks=list(BUILTIN_CHECKS),
    custom=[],
    sample_size=10,
    clock_skew_seconds=60.0,
    long_query_seconds=300.0,
    max_connection_ratio=0.9,
    statement_timeout=30.0,
    lock_timeout=5.0,
    allow_create_extension=False,
    amcheck_heapallindexed=False,
    fail_on_corruption=False,
    read_only=None,
    read_only_sessions="wait",
    read_only_wait_seconds=30.0,
    actions=[],
    export_path=None,
    quarantine_schema="tradeops_quarantine",
    quarantine_checks=None,
    incident_id=None,
)
MAX_SAMPLE = 1000
# bookkeeping columns of a quarantine table, after the source table's own columns
QUARANTINE_COLUMNS = ("quarantined_at", "source_table", "check_name", "reason", "incident_id", "batch_id",
                      "source_ctid")
RECONCILE_COLUMNS = ("reconciled_at", "source_table", "old_quantity", "new_quantity", "incident_id", "batch_id",
                     "source_ctid")
QUERY_TEXT_CHARS = 200
CUSTOM_RULE = ("A custom check must be ONE read-only query that returns the violating rows (SELECT, VALUES, TABLE "
               "or WITH ... SELECT, optionally ending with ';'): no INSERT/UPDATE/DELETE, SELECT ... FOR UPDATE, "
               "COMMIT/ROLLBACK, SET/RESET, DO, COPY, CALL or second statement. Rewrite %s as such a query and re-run")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_CHECK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_PASSWORD_LITERAL = re.compile(r"(?i)(password\s*)'(?:[^']|'')*'")

# SQLSTATEs
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
READ_ONLY_SQL_TRANSACTION = "25006"
UNDEFINED_TABLE = "42P01"
UNDEFINED_COLUMN = "42703"
INSUFFICIENT_PRIVILEGE = "42501"
INDEX_CORRUPTED = "XX002"
DATA_CORRUPTED = "XX001"
# what PostgreSQL answers when a custom check is not one read-only query: a syntax error (a second
# statement, or a statement that is not a query), "<command> is not allowed in a non-volatile function"
# (SPI read_only: COMMIT, SET, DO, COPY, CALL, FOR UPDATE, ...), a data-modifying WITH below the top
# level, a write refused by the READ ONLY transaction, "transaction read-write mode must be set before
# any query", and query_to_xml's "invalid query" (a statement that returns no rows)
CUSTOM_REFUSED = ("42601", "0A000", "25006", "25001", "22000", "2D000", "0B000")


# --------------------------------------------------------------------------------------------
# Validation helpers: every message names the option
# --------------------------------------------------------------------------------------------
def identifier(value, option, qualified=False, empty_ok=False):
    """Validate a name from the options; returns its parts (``schema.table`` gives two).

    Names are then quoted with ``psycopg2.sql.Identifier``, so they are used exactly as given (case
    included). The strict pattern is a second wall: nothing but a plain name ever reaches the SQL.
    """
    if empty_ok and value in (None, ""):
        return None
    kind = "a table name (optionally schema-qualified: schema.table)" if qualified else "a column or schema name"
    if not isinstance(value, str) or not value:
        raise ValidationError("%s must be %s, got %r" % (option, kind, value))
    parts = value.split(".") if qualified else [value]
    if len(parts) > 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ValidationError(
            "%s: %r is not %s: each name must start with a letter or _, hold only letters, digits, _ and $, "
            "and be at most 63 characters" % (option, value, kind))
    return tuple(parts)


def _number(value, option, minimum=None, maximum=None, above=None, integer=False):
    kind = "a whole number" if integer else "a number"
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = int(value) if integer else float(value)
        if integer and float(value) != number:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ValidationError("%s must be %s, got %r" % (option, kind, value))
    if not integer and not math.isfinite(number):
        raise ValidationError("%s must be a finite number, got %r" % (option, value))
    if above is not None and not number > above:
        raise ValidationError("%s must be greater than %s, got %s" % (option, above, value))
    if minimum is not None and number < minimum:
        raise ValidationError("%s must be at least %s, got %s" % (option, minimum, value))
    if maximum is not None and number > maximum:
        raise ValidationError("%s must be at most %s, got %s" % (option, maximum, value))
    return number


def _string_list(value, option, nonempty=False):
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValidationError("%s must be a list of strings, got %r" % (option, value))
    if nonempty and not value:
        raise ValidationError("%s must not be empty" % option)
    return list(value)


def _choices(value, option, choices):
    value = _string_list(value, option)
    bad = [v for v in value if v not in choices]
    if bad:
        raise ValidationError("%s: unknown %s; expected some of %s" % (
            option, ", ".join(repr(b) for b in bad), ", ".join(choices)))
    seen = []
    for v in value:
        if v not in seen:
            seen.append(v)
    return seen


def plain(value):
    """A JSON-safe form of a value read from PostgreSQL."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value() and abs(value) < 2 ** 53:
            return int(value)
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return dict((str(k), plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def _milliseconds(seconds):
    return max(1, int(round(seconds * 1000)))


def _elapsed_ms(start):
    return int((time.monotonic() - start) * 1000)


def _fmt(number):
    return ("%d" % number) if float(number).is_integer() else ("%g" % number)


def _pg_message(err):
    """One line from a psycopg2 error: the primary message, plus DETAIL when there is one."""
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or " ".join(str(err).split()) or type(err).__name__
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    if detail:
        message = "%s (%s)" % (message, " ".join(detail.split()))
    return message


def _query_text(text):
    """A pg_stat_activity query, shortened, with password literals hidden."""
    if text is None:
        return None
    text = " ".join(text.split())
    text = _PASSWORD_LITERAL.sub(lambda m: m.group(1) + "'" + REDACTED + "'", text)
    return text if len(text) <= QUERY_TEXT_CHARS else text[:QUERY_TEXT_CHARS] + "..."


def _require_psycopg2():
    if not HAS_PSYCOPG2:
        raise MissingLibraryError("psycopg2", "the PostgreSQL integrity checks")


# --------------------------------------------------------------------------------------------
# The checked tables and columns
# --------------------------------------------------------------------------------------------
class Schema:
    """The validated table and column names of the ``schema`` option (defaults: seed 002 / the lab)."""

    COLUMNS = ("key_column", "account_id_column", "symbol_column", "quantity_column", "status_column",
               "entry_price_column", "current_price_column", "side_column", "trades_timestamp_column",
               "positions_timestamp_column", "trade_price_column")

    def __init__(self, options=None):
        opts = dict(SCHEMA_DEFAULTS)
        given = options or {}
        if not isinstance(given, dict):
            raise ValidationError("schema must be a dict of table and column names, got %r" % (given,))
        unknown = sorted(set(given) - set(SCHEMA_DEFAULTS))
        if unknown:
            raise ValidationError("schema: unknown option(s) %s; expected some of %s" % (
                ", ".join(unknown), ", ".join(sorted(SCHEMA_DEFAULTS))))
        opts.update(dict((k, v) for k, v in given.items() if v is not None))
        self.tables = {}
        for role in TABLE_ROLES:
            self.tables[role] = identifier(opts[role + "_table"], "schema.%s_table" % role, qualified=True)
        self.columns = {}
        for option in self.COLUMNS:
            parts = identifier(opts[option], "schema." + option, empty_ok=option in OPTIONAL_COLUMNS)
            self.columns[option[:-len("_column")]] = parts[0] if parts else None
        self.keys = {}  # each table's key column (schema.<role>_key_column, else schema.key_column)
        for role in TABLE_ROLES:
            option = role + "_key_column"
            if opts.get(option) in (None, ""):
                self.keys[role] = self.columns["key"]
            else:
                self.keys[role] = identifier(opts[option], "schema." + option)[0]
        status = opts.get("open_position_status")
        if not isinstance(status, str):
            raise ValidationError("schema.open_position_status must be a string (the status reconcile gives a "
                                  "position it creates; '' leaves it to the column's default), got %r" % (status,))
        self.open_position_status = status
        self.lists = {}
        for option in STATUS_LISTS:
            self.lists[option] = _string_list(opts[option], "schema." + option, nonempty=option in NONEMPTY_LISTS)
        labels = [self.label(role) for role in TABLE_ROLES]
        if len(set(labels)) != len(labels):
            raise ValidationError("schema: positions_table, trades_table and accounts_table must be three different "
                                  "tables, got %s" % ", ".join(labels))

    def label(self, role):
        return ".".join(self.tables[role])

    def table(self, role):
        return sql.Identifier(*self.tables[role])

    def col(self, name, alias="s"):
        return sql.Identifier(alias, self.columns[name])

    def key(self, role, alias="s"):
        """The key column of a table (role), qualified by ``alias`` (or bare when alias is None)."""
        return sql.Identifier(alias, self.keys[role]) if alias else sql.Identifier(self.keys[role])

    def has(self, name):
        return bool(self.columns.get(name))

    def literal_list(self, option):
        return sql.SQL("{}::text[]").format(sql.Literal(self.lists[option]))


class RowCheck:
    """One built-in row check on one table: a predicate on the table's rows (alias ``s``)."""

    def __init__(self, name, role, predicate, reason):
        self.name = name
        self.role = role
        self.predicate = predicate
        self.reason = reason


def build_row_checks(schema, clock_skew_seconds):
    """Every per-row check, keyed by (name, table role). Duplicates and orphans need subqueries;
    the others are plain predicates that fit one FILTER pass."""
    _require_psycopg2()
    c = schema.col
    out = {}

    def add(name, role, predicate, reason):
        out[(name, role)] = RowCheck(name, role, predicate, reason)

    add("null_prices", "positions",
        sql.SQL("({} IS NULL OR {} IS NULL)").format(c("entry_price"), c("current_price")),
        "%s or %s is NULL" % (schema.columns["entry_price"], schema.columns["current_price"]))
    add("invalid_status", "trades",
        sql.SQL("({st} IS NULL OR NOT ({st}::text = ANY({allowed})))").format(
            st=c("status"), allowed=schema.literal_list("allowed_statuses")),
        "%s is NULL or not one of %s" % (schema.columns["status"], ", ".join(schema.lists["allowed_statuses"])))
    add("non_positive_quantity", "trades",
        sql.SQL("({q} IS NULL OR {q} <= 0)").format(q=c("quantity")),
        "%s is NULL or <= 0" % schema.columns["quantity"])
    add("non_positive_quantity", "positions",
        sql.SQL("({q} IS NULL OR {q} < 0 OR ({q} = 0 AND NOT coalesce({st}::text = ANY({closed}), false)))").format(
            q=c("quantity"), st=c("status"), closed=schema.literal_list("closed_position_statuses")),
        "%s is NULL, < 0, or 0 on a position whose %s is not one of [%s]" % (
            schema.columns["quantity"], schema.columns["status"], ", ".join(schema.lists["closed_position_statuses"])))
    skew = sql.Literal(float(clock_skew_seconds))
    for role in ("trades", "positions"):
        column = schema.columns[role + "_timestamp"]
        if column:
            add("future_timestamps", role,
                # now() inline, not as a sub-select: an InitPlan cutoff made the one-pass trades scan twice as
                # slow at 10M rows (bench/, 2026-12-02: 2.0 s against 1.1 s; the plan was not inspected)
                sql.SQL("({ts} > now() + {skew} * interval '1 second')").format(ts=c(role + "_timestamp"), skew=skew),
                "%s is more than %s s in the future" % (column, _fmt(clock_skew_seconds)))
    add("orphan_trades", "trades",
        sql.SQL("(NOT EXISTS (SELECT 1 FROM {accounts} AS a WHERE {akey} = {acc}))").format(
            accounts=schema.table("accounts"), akey=schema.key("accounts", "a"), acc=c("account_id")),
        "%s is NULL or matches no %s.%s" % (
            schema.columns["account_id"], schema.label("accounts"), schema.keys["accounts"]))
    for role in ("positions", "trades"):
        add("duplicate_ids", role,
            sql.SQL("(EXISTS (SELECT 1 FROM (SELECT {dkey} AS k, min(d.ctid) AS first FROM {table} AS d "
                    "WHERE {dkey} IS NOT NULL GROUP BY {dkey} HAVING count(*) > 1) AS g "
                    "WHERE g.k = {key} AND g.first <> s.ctid))").format(
                dkey=schema.key(role, "d"), table=schema.table(role), key=schema.key(role)),
            "%s appears more than once (every copy but the first, by ctid)" % schema.keys[role])
    return out


# the checks computed in the one FILTER pass over each table, in result order
FILTER_PASS = {
    "positions": ("null_prices", "non_positive_quantity", "future_timestamps"),
    "trades": ("invalid_status", "non_positive_quantity", "future_timestamps"),
}


def filter_pass_sql(schema, role, checks, sample_size, prefilter=True):
    """ONE sequential pass over a table: per check, ``count(*) FILTER (WHERE ...)`` and the first
    ``sample_size`` keys of the rows that match (``(array_agg(key) FILTER (WHERE ...))[1:n]``).

    With ``prefilter`` (the default, what the module runs) the pass has ``WHERE p1 OR p2 OR ...``:
    the predicates are evaluated once per row, inside the (parallel) scan, and the aggregates only
    see the offending rows. Without it every FILTER is evaluated on every row by one process, since
    ``array_agg`` cannot be aggregated in parallel before PostgreSQL 16: bench/pg_scan.py measured
    that at 1.09 s for 5M trades, against 0.70 s for one query per check and 0.38 s prefiltered.
    """
    key = schema.key(role)
    columns = []
    for check in checks:
        columns.append(sql.SQL("count(*) FILTER (WHERE {})").format(check.predicate))
        columns.append(sql.SQL("to_jsonb((array_agg({key}) FILTER (WHERE {p}))[1:{n}])").format(
            key=key, p=check.predicate, n=sql.Literal(int(sample_size))))
    query = sql.SQL("SELECT {} FROM {} AS s").format(sql.SQL(", ").join(columns), schema.table(role))
    if prefilter:
        query += sql.SQL(" WHERE {}").format(sql.SQL(" OR ").join(check.predicate for check in checks))
    return query


def single_check_sql(schema, check, sample_size):
    """One check as its own query (the benchmark compares this with the FILTER pass)."""
    return sql.SQL("SELECT count(*), to_jsonb((array_agg({key}))[1:{n}]) FROM {table} AS s WHERE {p}").format(
        key=schema.key(check.role), n=sql.Literal(int(sample_size)), table=schema.table(check.role),
        p=check.predicate)


def duplicates_sql(schema, role, sample_size):
    return sql.SQL(
        "SELECT coalesce(sum(n - 1), 0)::bigint, count(*), to_jsonb((array_agg(k))[1:{n}]) "
        "FROM (SELECT {key} AS k, count(*) AS n FROM {table} AS s WHERE {key} IS NOT NULL "
        "GROUP BY {key} HAVING count(*) > 1) AS g").format(
        key=schema.key(role), table=schema.table(role), n=sql.Literal(int(sample_size)))


def _mismatch_cte(schema):
    """``m``: one row per (account, symbol) whose position quantity total differs from the
    (signed, if side_column is set) sum of its filled trades."""
    if schema.has("side"):
        signed = sql.SQL("CASE WHEN {side}::text = ANY({sells}) THEN -{q} ELSE {q} END").format(
            side=schema.col("side"), sells=schema.literal_list("sell_sides"), q=schema.col("quantity"))
    else:
        signed = schema.col("quantity")
    return sql.SQL(
        "WITH p AS (SELECT {pacc} AS account_id, {psym} AS symbol, sum({pq}) AS quantity, count(*) AS n "
        "FROM {positions} AS s GROUP BY 1, 2), "
        "t AS (SELECT {tacc} AS account_id, {tsym} AS symbol, sum({signed}) AS quantity "
        "FROM {trades} AS s WHERE {tst}::text = ANY({filled}) GROUP BY 1, 2), "
        "m AS (SELECT coalesce(p.account_id, t.account_id) AS account_id, coalesce(p.symbol, t.symbol) AS symbol, "
        "p.quantity AS position_quantity, coalesce(t.quantity, 0) AS trades_quantity, "
        "coalesce(p.n, 0) AS position_rows "
        "FROM p FULL JOIN t ON p.account_id = t.account_id AND p.symbol = t.symbol "
        "WHERE coalesce(p.quantity, 0) <> coalesce(t.quantity, 0)) ").format(
        pacc=schema.col("account_id"), psym=schema.col("symbol"), pq=schema.col("quantity"),
        positions=schema.table("positions"), tacc=schema.col("account_id"), tsym=schema.col("symbol"),
        signed=signed, trades=schema.table("trades"), tst=schema.col("status"),
        filled=schema.literal_list("filled_statuses"))


_MISMATCH_ROW = sql.SQL(
    "jsonb_build_object('account_id', account_id, 'symbol', symbol, 'position_quantity', position_quantity, "
    "'trades_quantity', trades_quantity, 'position_rows', position_rows)") if HAS_PSYCOPG2 else None


def mismatch_sql(schema, sample_size):
    return _mismatch_cte(schema) + sql.SQL(
        "SELECT count(*), to_jsonb((array_agg({row} ORDER BY account_id, symbol))[1:{n}]) FROM m").format(
        row=_MISMATCH_ROW, n=sql.Literal(int(sample_size)))


def orphans_sql(schema, check, sample_size):
    return single_check_sql(schema, check, sample_size)


# A custom check's text is DATA to this module: it is sent as a bound parameter (a string literal
# quoted by libpq) of pg_catalog.query_to_xml(text, nulls, tableforest, targetns). PostgreSQL parses
# that text itself and runs it through SPI with read_only=true: every statement in it must be a
# read-only query (no utility statement - COMMIT, ROLLBACK, BEGIN, SET, RESET, DO, COPY, CALL,
# EXPLAIN ... - no INSERT/UPDATE/DELETE/MERGE, no data-modifying WITH, no FOR UPDATE/SHARE), and the
# last must return rows; a transaction command can never end the scan's transaction from inside SPI.
# The text is wrapped as the subquery ``q`` so that the server computes the count and the sample
# (typed, through row_to_json) and returns one small row; the wrapper makes a text with a second
# statement a syntax error, but nothing depends on it: a text that closes the parentheses and adds
# statements of its own is still inside query_to_xml's read-only SPI call, in the READ ONLY transaction.
_CUSTOM_OPEN = "\n"
_CUSTOM_CLOSE = "\n) AS q"
_XML_ROWS = "XMLTABLE('/table/row' PASSING pg_catalog.query_to_xml(%s, false, false, '') COLUMNS "


def custom_text(text):
    """The check's text with trailing blanks and ``;`` removed (cosmetic: it goes inside parentheses)."""
    text = text.rstrip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def custom_check_sql(text, sample_size):
    """(query, params) returning ``(count, sample)`` of a custom check: the number of rows its query
    returns and, as JSON text, the first column of the first ``sample_size`` of them, in its order."""
    inner = ("SELECT pg_catalog.count(*) AS n, pg_catalog.json_agg((SELECT e.value FROM "
             "pg_catalog.json_each(pg_catalog.row_to_json(w.r)) WITH ORDINALITY AS e(k, value, o) "
             "ORDER BY e.o LIMIT 1) ORDER BY w.i) FILTER (WHERE w.i <= %d) AS sample FROM (SELECT "
             "pg_catalog.row_number() OVER () AS i, q.*::record AS r FROM (" % int(sample_size)
             + _CUSTOM_OPEN + custom_text(text) + _CUSTOM_CLOSE + ") AS w")
    return ("SELECT x.n, x.sample FROM " + _XML_ROWS + "n bigint PATH 'n', sample text PATH 'sample') AS x",
            (inner,))


def custom_export_sql(text):
    """(query, params) returning every row of a custom check as JSON text (row_to_json), in its order."""
    inner = "SELECT pg_catalog.row_to_json(q.*)::text AS j FROM (" + _CUSTOM_OPEN + custom_text(text) + _CUSTOM_CLOSE
    return ("SELECT x.j FROM " + _XML_ROWS + "o FOR ORDINALITY, j text PATH 'j') AS x ORDER BY x.o", (inner,))


def _result(name, table, pass_name, status, count=0, sample=None, message=""):
    return {"name": name, "table": table, "pass": pass_name, "status": status, "count": count,
            "sample": sample if sample is not None else [], "message": message}


def _count_status(count):
    return CORRUPT if count else OK


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
class IntegrityService:
    """Validate everything first, then: read_only on, scan (+ export), quarantine, reconcile, read_only off."""

    def __init__(self, params, check_mode=False):
        p = dict(DEFAULTS)
        p.update(dict((k, v) for k, v in (params or {}).items() if v is not None))
        self.params = p
        self.check_mode = bool(check_mode)
        self.connection = dict((k, p.get(k)) for k in _postgres.postgres_connection_spec())
        self.secrets = [s for s in [p.get("login_password")] if s]
        self.schema = Schema(p.get("schema"))
        self.checks = _choices(p["checks"], "checks", BUILTIN_CHECKS)
        self.sample_size = _number(p["sample_size"], "sample_size", minimum=0, maximum=MAX_SAMPLE, integer=True)
        self.clock_skew = _number(p["clock_skew_seconds"], "clock_skew_seconds", minimum=0)
        self.long_query_seconds = _number(p["long_query_seconds"], "long_query_seconds", minimum=0)
        self.max_connection_ratio = _number(p["max_connection_ratio"], "max_connection_ratio", above=0, maximum=1)
        # finite seconds, from 0.05 to a day (_deadline's bounds for every timeout): 0 stays refused, since
        # PostgreSQL reads 0 as "no timeout", which a scan must never have
        self.statement_timeout = check_timeout(p["statement_timeout"], "statement_timeout")
        self.lock_timeout = check_timeout(p["lock_timeout"], "lock_timeout")
        self.read_only = p.get("read_only")
        if self.read_only is not None and not isinstance(self.read_only, bool):
            raise ValidationError("read_only must be true or false, got %r" % (self.read_only,))
        if p["read_only_sessions"] not in SESSION_MODES:
            raise ValidationError("read_only_sessions must be one of %s, got %r" % (
                ", ".join(SESSION_MODES), p["read_only_sessions"]))
        self.session_mode = p["read_only_sessions"]
        self.wait_seconds = _number(p["read_only_wait_seconds"], "read_only_wait_seconds", minimum=0, maximum=86400)
        self.actions = _choices(p["actions"], "actions", ACTIONS)
        self.export_path = p.get("export_path")
        if "export" in self.actions:
            if not self.export_path:
                raise ValidationError("export_path is required when actions includes export")
            self.export_path = os.path.expanduser(self.export_path)
            if not os.path.isabs(self.export_path):
                # relative to what? the module runs in a temporary directory of the target host
                raise ValidationError("export_path must be an absolute path on the host running the module, got %r"
                                      % self.export_path)
            self.export_path = os.path.normpath(self.export_path)
            parent = os.path.dirname(self.export_path)
            if not os.path.isdir(parent):
                raise ValidationError("export_path: the directory %s does not exist on the host running the module; "
                                      "create it first" % parent)
        self.quarantine_schema = identifier(p["quarantine_schema"], "quarantine_schema")[0]
        if p.get("quarantine_checks") is None:
            self.quarantine_checks = list(QUARANTINABLE)
        else:
            self.quarantine_checks = _choices(p["quarantine_checks"], "quarantine_checks", QUARANTINABLE)
        self.incident_id = p.get("incident_id")
        if self.incident_id is not None and not isinstance(self.incident_id, str):
            self.incident_id = str(self.incident_id)
        self.custom = self._custom(p.get("custom") or [])
        for flag in ("allow_create_extension", "amcheck_heapallindexed", "fail_on_corruption"):
            if not isinstance(p[flag], bool):
                raise ValidationError("%s must be true or false, got %r" % (flag, p[flag]))
        self.allow_create_extension = p["allow_create_extension"]
        self.heapallindexed = p["amcheck_heapallindexed"]
        self.fail_on_corruption = p["fail_on_corruption"]
        _require_psycopg2()
        self.row_checks = build_row_checks(self.schema, self.clock_skew)
        self._writer = None
        self.our_pids = set()

    @staticmethod
    def _custom(specs):
        if not isinstance(specs, list):
            raise ValidationError("custom must be a list of {name, sql}")
        out, seen = [], set()
        for index, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise ValidationError("custom[%d] must be a dict with a name and an sql" % index)
            name = spec.get("name")
            if not isinstance(name, str) or not _CHECK_NAME.match(name):
                raise ValidationError("custom[%d].name must be a name of letters, digits, _, . and - (at most 63), "
                                      "got %r" % (index, name))
            where = "custom[%d] (%s)" % (index, name)
            if name in BUILTIN_CHECKS:
                raise ValidationError("%s: the name is a built-in check; choose another" % where)
            if name in seen:
                raise ValidationError("%s: duplicate name" % where)
            seen.add(name)
            unknown = sorted(set(spec) - {"name", "sql"})
            if unknown:
                raise ValidationError("%s: unknown option(s) %s" % (where, ", ".join(unknown)))
            text = spec.get("sql")
            if not isinstance(text, str) or not custom_text(text):
                raise ValidationError("custom[%d].sql (%s) is required: a query that returns the violating rows"
                                      % (index, name))
            if "\x00" in text:
                raise ValidationError("custom[%d].sql (%s) contains a NUL character, which PostgreSQL does not "
                                      "accept in a query" % (index, name))
            out.append({"name": name, "sql": text, "index": index, "where": "custom[%d].sql (%s)" % (index, name)})
        return out

    # -- connections ----------------------------------------------------------------------------
    def _options(self, read_only):
        # whole milliseconds, never 0 (which PostgreSQL reads as no timeout at all)
        return "-c default_transaction_read_only=%s -c statement_timeout=%d -c lock_timeout=%d" % (
            "on" if read_only else "off", _milliseconds(self.statement_timeout), _milliseconds(self.lock_timeout))

    def _connect(self, read_only, options=True):
        conn = _postgres.connect(self.connection, options=self._options(read_only) if options else None,
                                 application_name=APPLICATION_NAME)
        self.our_pids.add(conn.get_backend_pid())
        return conn

    def writer(self):
        """The autocommit session that changes things (its default is read-write even in a read-only db)."""
        if self._writer is None:
            self._writer = self._connect(read_only=False)
            self._writer.autocommit = True
        return self._writer

    def close(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # closing is best effort
                pass
            self._writer = None

    def _where(self):
        return "postgres %s" % _postgres.describe(self.connection)

    def _hint(self, err, custom=False):
        code = getattr(err, "pgcode", None)
        if code == LOCK_NOT_AVAILABLE:
            return ("another session holds a conflicting lock (see the blocking_locks check and pg_locks); retry, or "
                    "raise lock_timeout (now %s s)" % _fmt(self.lock_timeout))
        if code == QUERY_CANCELED:
            return "it ran longer than statement_timeout (%s s); raise statement_timeout" % _fmt(self.statement_timeout)
        if code == READ_ONLY_SQL_TRANSACTION:
            return ("the transaction is READ ONLY: a check may only read (make a custom check a query that returns "
                    "the violating rows); an action refused this way runs on a standby: run it on the primary")
        if code == UNDEFINED_TABLE and not custom:
            return "set the schema *_table options to the real table names"
        if code == UNDEFINED_COLUMN and not custom:
            return "set the schema *_column options to the real column names"
        if code == INSUFFICIENT_PRIVILEGE:
            return "grant the login role what the check needs (SELECT on the tables; pg_monitor for the server checks)"
        return None

    def _custom_error(self, err, spec):
        """Why a custom check failed, naming custom[N].sql and what to do."""
        if getattr(err, "pgcode", None) in CUSTOM_REFUSED:
            text = "%s was refused by PostgreSQL: %s. %s" % (
                spec["where"], _pg_message(err), CUSTOM_RULE % spec["where"])
            return redact(text, self.secrets)
        hint = self._hint(err, custom=True) or "fix %s and re-run" % spec["where"]
        return redact("%s: %s; %s" % (spec["where"], _pg_message(err), hint), self.secrets)

    def _db_error(self, err, what=None, custom=False):
        message = _pg_message(err)
        hint = self._hint(err, custom)
        text = "%s%s%s" % ((what + ": ") if what else "", message, ("; " + hint) if hint else "")
        return redact(text, self.secrets)

    # -- the run --------------------------------------------------------------------------------
    def run(self):
        started = time.monotonic()
        out = {"changed": False, "status": OK, "database": None, "checks": [], "passes": [], "actions": [],
               "corrupt": [], "warned": [], "skipped": [], "errors": [], "incident_id": self.incident_id}
        self.out = out
        try:
            try:
                if self.read_only is True:
                    self._action(self.set_read_only, True)
                if not out["errors"] and (self.checks or self.custom):
                    self._scan()
                if not out["errors"]:
                    for action in ("reindex", "quarantine", "reconcile"):
                        if action in self.actions:
                            self._action(getattr(self, action))
                if self.read_only is False:
                    if out["errors"]:
                        self._record({"action": "read_only", "status": SKIPPED, "changed": False,
                                      "message": "read_only=false skipped: an earlier step failed"})
                    elif self.fail_on_corruption and out["corrupt"]:
                        self._record({"action": "read_only", "status": SKIPPED, "changed": False,
                                      "message": "read_only=false skipped: corruption was found and "
                                                 "fail_on_corruption is true"})
                    else:
                        self._action(self.set_read_only, False)
            except psycopg2.Error as err:  # a safety net: every step turns its own errors into results
                if not out["changed"]:
                    raise BackendError("%s: %s" % (self._where(), self._db_error(err)))
                out["errors"].append(self._db_error(err))
            except TradeopsError as err:
                if not out["changed"]:
                    raise
                out["errors"].append(redact(str(err), self.secrets))  # something changed: report it all
        finally:
            self.close()
        out["status"] = self._overall()
        out["elapsed_ms"] = _elapsed_ms(started)
        out["msg"] = self.summary(out)
        return redact(out, self.secrets)

    def _overall(self):
        out = self.out
        if out["errors"]:
            return ERROR
        worst = max([SEVERITY[c["status"]] for c in out["checks"]] + [0])
        return {0: OK, 1: WARN, 2: CORRUPT, 3: ERROR}[worst]

    def _record(self, action):
        self.out["actions"].append(action)
        if action.get("changed"):
            self.out["changed"] = True
        if action.get("status") == ERROR:
            self.out["errors"].append("%s: %s" % (action["action"], action.get("message")))

    def _action(self, func, *args):
        try:
            action = func(*args)
        except psycopg2.Error as err:
            action = {"action": func.__name__.replace("set_", ""), "status": ERROR, "changed": False,
                      "message": self._db_error(err)}
        self._record(redact(action, self.secrets))

    # -- scan -----------------------------------------------------------------------------------
    def _scan(self):
        try:
            amcheck = self._ensure_amcheck() if "amcheck" in self.checks else None
            conn = self._connect(read_only=True)
        except psycopg2.Error as err:
            raise BackendError("%s: %s" % (self._where(), self._db_error(err)))
        try:
            scanner = Scanner(self, conn, amcheck)
            scanner.run()
            conn.rollback()  # read only: nothing to commit
        except psycopg2.Error as err:
            raise BackendError("%s: the scan failed: %s" % (self._where(), self._db_error(err)))
        finally:
            conn.close()

    def _ensure_amcheck(self):
        """Returns None when amcheck is usable, else why the amcheck check is skipped (or an error)."""
        cur = self.writer().cursor()
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'")
        if cur.fetchone():
            return None
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'")
        if not cur.fetchone():
            return (SKIPPED, "the amcheck extension is not available on this server; install the PostgreSQL "
                             "contrib package (it ships amcheck)")
        if not self.allow_create_extension:
            return (SKIPPED, "amcheck extension not installed; set allow_create_extension: true to create it "
                             "(CREATE EXTENSION amcheck)")
        if self.check_mode:
            self._record({"action": "create_extension", "status": OK, "changed": True,
                          "message": "would CREATE EXTENSION amcheck (check mode)"})
            return (SKIPPED, "amcheck extension not installed; it would be created (check mode)")
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg2.Error as err:
            message = self._db_error(err, "CREATE EXTENSION amcheck")
            self._record({"action": "create_extension", "status": ERROR, "changed": False, "message": message})
            return (ERROR, message)
        self._record({"action": "create_extension", "status": OK, "changed": True,
                      "message": "created the amcheck extension"})
        return None

    # -- read_only ------------------------------------------------------------------------------
    def _db_read_only(self, cur):
        """The database-level default_transaction_read_only (ALTER DATABASE ... SET); off when unset."""
        cur.execute(
            "SELECT split_part(c, '=', 2) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, "
            "unnest(s.setconfig) AS c WHERE d.datname = current_database() AND s.setrole = 0 "
            "AND split_part(c, '=', 1) = 'default_transaction_read_only'")
        row = cur.fetchone()
        return bool(row) and row[0].strip().lower() in ("on", "true", "yes", "1", "t", "y", "tr", "tru", "ye")

    def _sessions(self, cur, before=None):
        """Client sessions of this database other than ours (opened before ``before`` when given)."""
        cur.execute(
            "SELECT a.pid, a.usename, a.application_name, a.state, coalesce(r.rolsuper, false), "
            "to_char(a.backend_start, 'YYYY-MM-DD\"T\"HH24:MI:SS.USOF') "
            "FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid "
            "WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
            "AND a.pid <> pg_backend_pid() AND NOT (a.pid = ANY(%s)) AND (%s::timestamptz IS NULL "
            "OR a.backend_start < %s::timestamptz) ORDER BY a.pid",
            (sorted(self.our_pids), before, before))
        return [{"pid": r[0], "user": r[1], "application_name": r[2], "state": r[3], "superuser": r[4],
                 "backend_start": r[5]} for r in cur.fetchall()]

    def set_read_only(self, desired):
        conn = self.writer()
        cur = conn.cursor()
        cur.execute("SELECT current_database()")
        database = cur.fetchone()[0]
        self.out["database"] = database
        before = self._db_read_only(cur)
        word = "on" if desired else "off"
        action = {"action": "read_only", "database": database, "before": "on" if before else "off", "after": word,
                  "changed": before != desired, "status": OK, "verified": False, "sessions_mode": self.session_mode,
                  "stale_sessions": [], "terminated": []}
        self.out["diff"] = {"before": {"default_transaction_read_only": action["before"]},
                            "after": {"default_transaction_read_only": word}}
        if before == desired:
            action["verified"], shown = self._verify_read_only(word)
            if not action["verified"]:
                action["status"] = ERROR
                action["message"] = ("the database setting is already %s, but a new session sees "
                                     "default_transaction_read_only=%s: a role-level setting overrides it "
                                     "(ALTER ROLE ... RESET default_transaction_read_only)" % (word, shown))
            else:
                action["message"] = "default_transaction_read_only is already %s for %s" % (word, database)
            return action
        if self.check_mode:
            action["stale_sessions"] = self._sessions(cur)
            action["message"] = ("would ALTER DATABASE %s SET default_transaction_read_only = %s and %s the %d "
                                 "session(s) open now (check mode)" % (
                                     database, word, "wait for" if self.session_mode == "wait" else "terminate",
                                     len(action["stale_sessions"])))
            return action
        cur.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
            sql.Identifier(database), sql.SQL(word)))
        self.out["changed"] = True
        cur.execute("SELECT clock_timestamp()")
        since = cur.fetchone()[0]
        # sessions opened before the ALTER keep the old default: wait for them, or end them
        deadline = time.monotonic() + self.wait_seconds
        stale = self._sessions(cur, since)
        action["stale_sessions"] = stale
        if self.session_mode == "terminate":
            for session in stale:
                try:
                    cur.execute("SELECT pg_terminate_backend(%s)", (session["pid"],))
                    if cur.fetchone()[0]:
                        action["terminated"].append(session["pid"])
                except psycopg2.Error as err:
                    session["error"] = self._db_error(err, "pg_terminate_backend(%d)" % session["pid"])
        while stale and time.monotonic() < deadline:
            time.sleep(0.1)
            stale = self._sessions(cur, since)
        if stale:
            action["status"] = ERROR
            action["remaining"] = stale
            action["message"] = (
                "default_transaction_read_only is %s for new sessions of %s, but %d session(s) opened before the "
                "change are still open after %s s and keep the old default: %s. %s" % (
                    word, database, len(stale), _fmt(self.wait_seconds),
                    ", ".join("pid %d (%s, %s)" % (s["pid"], s["user"], s["application_name"] or "-") for s in stale),
                    "End them (or set read_only_sessions: terminate), or raise read_only_wait_seconds, and re-run."
                    if self.session_mode == "wait" else
                    "They could not be terminated (%s); end them as a superuser and re-run." % "; ".join(
                        s.get("error", "still exiting") for s in stale)))
            return action
        action["verified"], shown = self._verify_read_only(word)
        if not action["verified"]:
            action["status"] = ERROR
            action["message"] = ("ALTER DATABASE %s SET default_transaction_read_only = %s ran, but a new session "
                                 "sees %s: a role-level setting overrides it (ALTER ROLE ... RESET "
                                 "default_transaction_read_only)" % (database, word, shown))
            return action
        action["message"] = "default_transaction_read_only is now %s for %s (verified in a new session)%s" % (
            word, database, "; terminated %d session(s)" % len(action["terminated"]) if action["terminated"] else
            ("; waited for %d session(s)" % len(action["stale_sessions"]) if action["stale_sessions"] else ""))
        return action

    def _verify_read_only(self, word):
        conn = self._connect(read_only=False, options=False)
        try:
            cur = conn.cursor()
            cur.execute("SHOW default_transaction_read_only")
            shown = cur.fetchone()[0]
        finally:
            conn.close()
        return shown == word, shown

    # -- quarantine -----------------------------------------------------------------------------
    def _corrupt_results(self, names):
        return [r for r in self.out["checks"] if r["name"] in names and r["status"] == CORRUPT]

    def _targets(self):
        by_label = dict((self.schema.label(role), role) for role in TABLE_ROLES)
        found = dict(((r["name"], by_label.get(r["table"])), r["count"]) for r in self._corrupt_results(QUARANTINABLE))
        return [(name, role, found[(name, role)]) for name in QUARANTINABLE for role in ("positions", "trades")
                if name in self.quarantine_checks and (name, role) in found]

    def _columns(self, cur, table):
        cur.execute("SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
                    "AND NOT a.attisdropped ORDER BY a.attnum", (table.as_string(cur),))
        return [r[0] for r in cur.fetchall()]

    def _qtable(self, role, suffix=""):
        parts = self.schema.tables[role]
        name = "__".join(parts) + suffix
        if len(name) > 63:
            raise ValidationError("the quarantine table name %r would be longer than 63 characters; use a shorter "
                                  "table name" % name)
        return sql.Identifier(self.quarantine_schema, name), "%s.%s" % (self.quarantine_schema, name)

    def _ensure_table(self, cur, role, extra, bookkeeping, suffix=""):
        """Create the quarantine table of a source table when missing: the same columns (LIKE, no
        constraints, defaults or indexes) plus the bookkeeping columns. Returns (table, label, columns)."""
        source = self.schema.table(role)
        columns = self._columns(cur, source)
        clash = sorted(set(columns) & set(bookkeeping))
        if clash:
            raise BackendError("%s has column(s) named %s, which the quarantine table needs for its bookkeeping; "
                               "quarantine is not possible for it" % (self.schema.label(role), ", ".join(clash)))
        table, label = self._qtable(role, suffix)
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {}, {})").format(table, source, sql.SQL(extra)))
        have = set(self._columns(cur, table))
        missing = [c for c in list(columns) + list(bookkeeping) if c not in have]
        if missing:
            raise BackendError("the quarantine table %s exists but lacks the column(s) %s (the source table changed "
                               "since it was created); rename it or set quarantine_schema, and re-run" % (
                                   label, ", ".join(missing)))
        return table, label, columns

    def _lock(self, cur, roles, mode):
        for role in roles:
            cur.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(self.schema.table(role), sql.SQL(mode)))

    def quarantine(self):
        targets = self._targets()
        action = {"action": "quarantine", "schema": self.quarantine_schema, "changed": False, "status": OK,
                  "moved": [], "tables": []}
        if not targets:
            action["message"] = "nothing to quarantine"
            return action
        if self.check_mode:
            action["changed"] = True
            action["moved"] = [{"check": n, "table": self.schema.label(r), "found": c, "moved": 0}
                               for n, r, c in targets]
            action["message"] = "would move %d row(s) to %s (check mode): %s" % (
                sum(t[2] for t in targets), self.quarantine_schema,
                ", ".join("%s on %s: %d" % (n, self.schema.label(r), c) for n, r, c in targets))
            return action
        conn = self.writer()
        conn.autocommit = False
        batch = uuid.uuid4().hex
        try:
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
            roles = sorted(set(t[1] for t in targets))
            self._lock(cur, roles, "SHARE ROW EXCLUSIVE")  # readers go on; writers wait until COMMIT
            if any(t[0] == "orphan_trades" for t in targets):
                self._lock(cur, ["accounts"], "SHARE")
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.quarantine_schema)))
            extra = ("quarantined_at timestamptz NOT NULL DEFAULT now(), source_table text NOT NULL, "
                     "check_name text NOT NULL, reason text, incident_id text, batch_id text NOT NULL, source_ctid tid")
            tables = {}
            for role in roles:
                tables[role] = self._ensure_table(cur, role, extra, QUARANTINE_COLUMNS)
            total = dict((role, 0) for role in roles)
            for name, role, scanned in targets:
                check = self.row_checks[(name, role)]
                source, qtable = self.schema.table(role), tables[role][0]
                cur.execute(sql.SQL("SELECT count(*) FROM {} AS s WHERE {}").format(source, check.predicate))
                found = cur.fetchone()[0]
                entry = {"check": name, "table": self.schema.label(role), "quarantine_table": tables[role][1],
                         "found_in_scan": scanned, "found": found, "moved": 0}
                action["moved"].append(entry)
                if not found:
                    continue
                cols = tables[role][2]
                cur.execute(sql.SQL(
                    "INSERT INTO {q} ({cols}, quarantined_at, source_table, check_name, reason, incident_id, batch_id, "
                    "source_ctid) SELECT {scols}, now(), {src}, {name}, {reason}, {incident}, {batch}, s.ctid "
                    "FROM {source} AS s WHERE {p}").format(
                    q=qtable, cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                    scols=sql.SQL(", ").join(sql.Identifier("s", c) for c in cols),
                    src=sql.Literal(self.schema.label(role)), name=sql.Literal(name),
                    reason=sql.Literal(check.reason), incident=sql.Literal(self.incident_id),
                    batch=sql.Literal(batch), source=source, p=check.predicate))
                copied = cur.rowcount
                # delete only what is now in the quarantine table, row for row (same key, same ctid)
                cur.execute(sql.SQL(
                    "DELETE FROM {source} AS s USING {q} AS q WHERE q.batch_id = {batch} AND q.check_name = {name} "
                    "AND q.source_table = {src} AND s.ctid = q.source_ctid AND s.{key} IS NOT DISTINCT FROM q.{key}"
                ).format(source=source, key=self.schema.key(role, None), q=qtable, batch=sql.Literal(batch),
                         name=sql.Literal(name), src=sql.Literal(self.schema.label(role))))
                deleted = cur.rowcount
                if not found == copied == deleted:
                    raise _Rollback("%s on %s: found %d row(s), copied %d to %s, deleted %d from the source" % (
                        name, self.schema.label(role), found, copied, tables[role][1], deleted))
                entry["moved"] = copied
                total[role] += copied
            for role in roles:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE batch_id = %s").format(tables[role][0]), (batch,))
                stored = cur.fetchone()[0]
                if stored != total[role]:
                    raise _Rollback("%s holds %d row(s) of this batch, expected %d" % (
                        tables[role][1], stored, total[role]))
                action["tables"].append({"table": self.schema.label(role), "quarantine_table": tables[role][1],
                                         "moved": total[role]})
            moved = sum(total.values())
            if moved:
                conn.commit()
            else:
                conn.rollback()  # the rows went away since the scan: leave no trace, not even the schema
            action["changed"] = bool(moved)
        except _Rollback as err:
            conn.rollback()
            action.update(status=ERROR, changed=False, moved=[], tables=[],
                          message="quarantine rolled back, nothing was moved: the counts did not match (%s); re-run "
                                  "the scan, and set read_only: true first if the tables are being written" % err)
            return action
        except (psycopg2.Error, TradeopsError) as err:
            conn.rollback()
            message = self._db_error(err) if isinstance(err, psycopg2.Error) else redact(str(err), self.secrets)
            action.update(status=ERROR, changed=False, moved=[], tables=[],
                          message="quarantine rolled back, nothing was moved: %s" % message)
            return action
        finally:
            conn.autocommit = True
        action["batch_id"] = batch
        action["message"] = "moved %d row(s) to %s in one transaction (batch %s): %s" % (
            sum(t["moved"] for t in action["tables"]), self.quarantine_schema, batch,
            ", ".join("%s on %s: %d" % (m["check"], m["table"], m["moved"]) for m in action["moved"]))
        return action

    # -- reindex --------------------------------------------------------------------------------
    def reindex(self):
        """REINDEX INDEX each index the amcheck pass found corrupt (its sample, up to sample_size), then
        bt_index_check it again, all in ONE read-write transaction: committed only when every rebuilt index
        checks clean, else rolled back. An index holds no data of its own (it is rebuilt from its table), so
        no row is touched. REINDEX blocks the table's writers (SHARE lock) until COMMIT; readers go on."""
        action = {"action": "reindex", "changed": False, "status": OK, "indexes": []}
        names = []
        for result in self._corrupt_results(("amcheck",)):
            for entry in result.get("sample") or []:
                if isinstance(entry, dict) and entry.get("index") and entry["index"] not in names:
                    names.append(entry["index"])
        if not names:
            action["message"] = "no corrupt index to rebuild"
            return action
        if self.check_mode:
            action.update(changed=True, indexes=names,
                          message="would REINDEX %s and check it again (check mode)" % ", ".join(names))
            return action
        conn = self.writer()
        conn.autocommit = False
        try:
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
            cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                        "WHERE e.extname = 'amcheck'")
            row = cur.fetchone()
            if row is None:
                raise _Rollback("the amcheck extension is gone: the rebuilt indexes could not be checked")
            check = sql.SQL("SELECT {}(%s::regclass)").format(sql.Identifier(row[0], "bt_index_check"))
            for name in names:
                cur.execute("SELECT c.oid, n.nspname, c.relname FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass "
                            "AND c.relkind = 'i'", (name,))
                found = cur.fetchone()
                if found is None:
                    raise _Rollback("%s is not an index" % name)
                oid, schema, relname = found
                cur.execute(sql.SQL("REINDEX INDEX {}").format(sql.Identifier(schema, relname)))
                cur.execute(check, (oid,))  # raises if the rebuilt index is still corrupt: all rolled back
                action["indexes"].append(name)
            conn.commit()
            action["changed"] = True
        except _Rollback as err:
            conn.rollback()
            action.update(status=ERROR, changed=False, indexes=[],
                          message="reindex rolled back, nothing was rebuilt: %s" % err)
            return action
        except psycopg2.Error as err:
            conn.rollback()
            action.update(status=ERROR, changed=False, indexes=[],
                          message="reindex rolled back, nothing was rebuilt: %s" % self._db_error(err))
            return action
        finally:
            conn.autocommit = True
        action["message"] = "rebuilt %d index(es) in one transaction, each checked clean by bt_index_check: %s" % (
            len(action["indexes"]), ", ".join(action["indexes"]))
        return action

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self):
        action = {"action": "reconcile", "changed": False, "status": OK, "reconciled": 0, "unreconciled": 0}
        scanned = self._corrupt_results(("position_mismatch",))
        if not scanned:
            action["message"] = "no position mismatch to reconcile"
            return action
        if self.check_mode:
            action["changed"] = True
            action["message"] = ("would rewrite the quantity of up to %d position(s) from their filled trades, "
                                 "recording the old rows in %s (check mode)" % (scanned[0]["count"],
                                                                                self.quarantine_schema))
            return action
        conn = self.writer()
        conn.autocommit = False
        batch = uuid.uuid4().hex
        s = self.schema
        try:
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
            self._lock(cur, ["positions", "trades"], "SHARE ROW EXCLUSIVE")
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE position_rows = 1 AND account_id IS NOT NULL "
                "AND symbol IS NOT NULL) FROM m"))
            mismatched, fixable = cur.fetchone()
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "SELECT count(*) FROM m WHERE position_rows = 0 AND account_id IS NOT NULL AND symbol IS NOT NULL "
                "AND trades_quantity <> 0"))
            missing = cur.fetchone()[0]
            no_key = ""
            if missing and not self._key_has_default(cur):
                # a new position needs a key that fills itself: left to a human, saying why
                no_key = ("; %d account/symbol(s) have filled trades but no position, and %s.%s has no default or "
                          "identity, so reconcile cannot create their positions (give the key column a default or "
                          "make it an identity column, or create the rows by hand)" % (
                              missing, s.label("positions"), s.keys["positions"]))
                action["missing_without_key"] = missing
                missing = 0
            action["unreconciled"] = mismatched - fixable - missing
            if not fixable and not missing:
                conn.rollback()
                action["message"] = ("nothing reconcilable: %d mismatch(es) need a human (no position row, several "
                                     "rows, or a NULL account/symbol)%s" % (mismatched, no_key))
                return action
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.quarantine_schema)))
            extra = ("reconciled_at timestamptz NOT NULL DEFAULT now(), source_table text NOT NULL, old_quantity "
                     "numeric, new_quantity numeric, incident_id text, batch_id text NOT NULL, source_ctid tid")
            table, label, cols = self._ensure_table(cur, "positions", extra, RECONCILE_COLUMNS, "__reconciled")
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "INSERT INTO {q} ({cols}, reconciled_at, source_table, old_quantity, new_quantity, incident_id, "
                "batch_id, source_ctid) SELECT {scols}, now(), {src}, {qty}, m.trades_quantity, {incident}, {batch}, "
                "s.ctid FROM {positions} AS s JOIN m ON m.account_id = {acc} AND m.symbol = {sym} "
                "WHERE m.position_rows = 1").format(
                q=table, cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                scols=sql.SQL(", ").join(sql.Identifier("s", c) for c in cols), src=sql.Literal(s.label("positions")),
                qty=s.col("quantity"), incident=sql.Literal(self.incident_id), batch=sql.Literal(batch),
                positions=s.table("positions"), acc=s.col("account_id"), sym=s.col("symbol")))
            recorded = cur.rowcount
            cur.execute(sql.SQL(
                "UPDATE {positions} AS s SET {qty} = r.new_quantity FROM {q} AS r WHERE r.batch_id = {batch} "
                "AND s.ctid = r.source_ctid AND s.{key} IS NOT DISTINCT FROM r.{key}").format(
                positions=s.table("positions"), qty=sql.Identifier(s.columns["quantity"]), q=table,
                batch=sql.Literal(batch), key=s.key("positions", None)))
            updated = cur.rowcount
            if not fixable == recorded == updated:
                raise _Rollback("found %d reconcilable position(s), recorded %d in %s, updated %d" % (
                    fixable, recorded, label, updated))
            created = self._create_missing_positions(cur, table, cols, batch) if missing else 0
            if created != missing:
                raise _Rollback("found %d account/symbol(s) with filled trades but no position, created %d" % (
                    missing, created))
            conn.commit()
        except _Rollback as err:
            conn.rollback()
            action.update(status=ERROR, message="reconcile rolled back, nothing was changed: the counts did not "
                                                "match (%s); set read_only: true first and re-run" % err)
            return action
        except (psycopg2.Error, TradeopsError) as err:
            conn.rollback()
            message = self._db_error(err) if isinstance(err, psycopg2.Error) else redact(str(err), self.secrets)
            action.update(status=ERROR, message="reconcile rolled back, nothing was changed: %s" % message)
            return action
        finally:
            conn.autocommit = True
        action.update(changed=True, reconciled=updated, created=created, table=label, batch_id=batch,
                      message="rewrote the quantity of %d position(s) and created %d missing position(s) from their "
                              "filled trades in one transaction; the old and new rows are recorded in %s (batch %s)%s%s"
                              % (updated, created, label, batch,
                                  "; %d mismatch(es) need a human (no position row, several rows, or a NULL "
                                  "account/symbol)" % action["unreconciled"] if action["unreconciled"] else "",
                                  no_key))
        return action

    def _key_has_default(self, cur):
        """Whether the positions key column fills itself (a default, an identity or a generated column).

        The table is looked up by its QUOTED name (``"Book"."Holdings"``): to_regclass() folds an unquoted
        name to lower case, which would find nothing, or another table (``book.holdings``)."""
        cur.execute("SELECT a.atthasdef OR a.attidentity <> '' FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
                    (self.schema.table("positions").as_string(cur), self.schema.keys["positions"]))
        row = cur.fetchone()
        return bool(row and row[0])

    def _create_missing_positions(self, cur, table, cols, batch):
        """Create the position of every (account, symbol) that has filled trades but no position row
        (for example because its corrupt row was quarantined): quantity from the trades, entry price
        their quantity-weighted average, current price the latest. Each is recorded in the reconcile
        table with an empty old quantity. Returns how many were created."""
        s = self.schema
        target = [s.columns["account_id"], s.columns["symbol"], s.columns["quantity"], s.columns["entry_price"],
                  s.columns["current_price"]]
        values = [sql.SQL("m.account_id"), sql.SQL("m.symbol"), sql.SQL("m.trades_quantity"),
                  sql.SQL("tp.avg_price"), sql.SQL("tp.last_price")]
        if s.open_position_status:  # '' leaves the status to the column's default
            target.append(s.columns["status"])
            values.append(sql.Literal(s.open_position_status))
        if s.has("positions_timestamp"):
            target.append(s.columns["positions_timestamp"])
            values.append(sql.SQL("now()"))
        order = s.col("trades_timestamp") if s.has("trades_timestamp") else s.key("trades")
        price = sql.Identifier("s", s.columns["trade_price"])
        cur.execute(self._create_sql(s, target, values, order, price, cols, table, batch))
        return cur.rowcount

    def _create_sql(self, s, target, values, order, price, cols, table, batch):
        return _mismatch_cte(s) + sql.SQL(
            ", tp AS (SELECT {tacc} AS account_id, {tsym} AS symbol, "
            "sum({qty_s} * {price}) / nullif(sum({qty_s}), 0) AS avg_price, "
            "(array_agg({price} ORDER BY {order} DESC))[1] AS last_price "
            "FROM {trades} AS s WHERE {tst}::text = ANY({filled}) GROUP BY 1, 2), "
            "ins AS (INSERT INTO {positions} ({target}) SELECT {values} FROM m JOIN tp "
            "ON tp.account_id = m.account_id AND tp.symbol = m.symbol WHERE m.position_rows = 0 "
            "AND m.account_id IS NOT NULL AND m.symbol IS NOT NULL AND m.trades_quantity <> 0 RETURNING *, ctid) "
            "INSERT INTO {rtable} ({cols}, reconciled_at, source_table, old_quantity, new_quantity, incident_id, "
            "batch_id, source_ctid) SELECT {icols}, now(), {src}, NULL, ins.{qty}, {incident}, {batch}, ins.ctid "
            "FROM ins").format(
            tacc=s.col("account_id"), tsym=s.col("symbol"), qty_s=s.col("quantity"), price=price, order=order,
            trades=s.table("trades"), tst=s.col("status"), filled=s.literal_list("filled_statuses"),
            positions=s.table("positions"), target=sql.SQL(", ").join(sql.Identifier(c) for c in target),
            values=sql.SQL(", ").join(values), rtable=table,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            icols=sql.SQL(", ").join(sql.Identifier("ins", c) for c in cols), src=sql.Literal(s.label("positions")),
            qty=sql.Identifier(s.columns["quantity"]), incident=sql.Literal(self.incident_id),
            batch=sql.Literal(batch))

    # -- messages -------------------------------------------------------------------------------
    @staticmethod
    def _label(check):
        return "%s (%s)" % (check["name"], check["table"]) if check.get("table") else check["name"]

    @classmethod
    def summary(cls, out):
        checks = out["checks"]
        ran = [c for c in checks if c["status"] != SKIPPED]
        parts = ["%s: %d check(s) ran" % (out["status"], len(ran))]
        for status in (ERROR, CORRUPT, WARN):
            found = [c for c in checks if c["status"] == status]
            if found:
                parts.append("%s: %s" % (status, ", ".join(
                    "%s %s" % (cls._label(c), c["count"]) if status != ERROR else cls._label(c) for c in found)))
        skipped = [c for c in checks if c["status"] == SKIPPED]
        if skipped:
            parts.append("skipped: %s" % ", ".join(cls._label(c) for c in skipped))
        for action in out["actions"]:
            if action.get("message"):
                parts.append("%s: %s" % (action["action"], action["message"]))
        other = [e for e in out["errors"] if not any(e.startswith(a["action"] + ":") for a in out["actions"])]
        other = [e for e in other if not any(e.startswith(cls._label(c) + ":") for c in checks)]
        if other:
            parts.append("; ".join(other))
        return "; ".join(parts)

    @classmethod
    def failure_message(cls, out, fail_on_corruption):
        """What failed and what to do next, or None when the module should not fail."""
        if out["errors"]:
            return ("%d error(s): %s. Nothing after a failed step was done; fix the cause and re-run (a scan only "
                    "reads, and every action is idempotent)" % (len(out["errors"]), "; ".join(out["errors"])))
        if fail_on_corruption and out["status"] == CORRUPT:
            corrupt = [c for c in out["checks"] if c["status"] == CORRUPT]
            return ("corruption found by %d check(s): %s. Quarantine or export the rows (actions: [quarantine, "
                    "export]), reconcile the positions, or repair them by hand, then re-run; or set "
                    "fail_on_corruption: false to only assess" % (len(corrupt), "; ".join(
                        "%s: %s" % (cls._label(c), c["message"]) for c in corrupt)))
        return None


class _Rollback(Exception):
    """Counts did not match inside an action's transaction: roll it back."""


# --------------------------------------------------------------------------------------------
# The scan: one READ ONLY transaction
# --------------------------------------------------------------------------------------------
class Scanner:
    SAVEPOINT = "tradeops_pg_integrity"

    def __init__(self, service, conn, amcheck):
        self.svc = service
        self.conn = conn
        self.cur = conn.cursor()
        self.amcheck = amcheck  # None, or (status, message) when amcheck cannot run
        self.schema = service.schema
        self.unavailable = {}  # table role -> why it cannot be read
        self.oids = {}

    def add(self, result):
        out = self.svc.out
        result = redact(result, self.svc.secrets)
        out["checks"].append(result)
        label = IntegrityService._label(result)
        if result["status"] == CORRUPT and result["name"] not in out["corrupt"]:
            out["corrupt"].append(result["name"])
        elif result["status"] == WARN and result["name"] not in out["warned"]:
            out["warned"].append(result["name"])
        elif result["status"] == SKIPPED and result["name"] not in out["skipped"]:
            out["skipped"].append(result["name"])
        elif result["status"] == ERROR:
            out["errors"].append("%s: %s" % (label, result["message"]))

    def savepoint(self, func, rollback=False):
        """Run func() in a savepoint. Returns (value, psycopg2 error or None)."""
        self.cur.execute("SAVEPOINT " + self.SAVEPOINT)
        try:
            value = func()
        except psycopg2.Error as err:
            self.cur.execute("ROLLBACK TO SAVEPOINT " + self.SAVEPOINT)
            self.cur.execute("RELEASE SAVEPOINT " + self.SAVEPOINT)
            return None, err
        self.cur.execute(("ROLLBACK TO SAVEPOINT " if rollback else "RELEASE SAVEPOINT ") + self.SAVEPOINT)
        if rollback:
            self.cur.execute("RELEASE SAVEPOINT " + self.SAVEPOINT)
        return value, None

    def timed_pass(self, name, table, check_names, func):
        started = time.monotonic()
        status, message = OK, None
        try:
            func()
        finally:
            entry = {"name": name, "table": table, "checks": check_names, "duration_ms": _elapsed_ms(started)}
            results = [c for c in self.svc.out["checks"] if c["pass"] == name]
            if any(c["status"] == ERROR for c in results):
                status = ERROR
                message = next(c["message"] for c in results if c["status"] == ERROR)
            entry["status"] = status
            if message:
                entry["message"] = message
            self.svc.out["passes"].append(entry)

    def run(self):
        cur = self.cur
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT current_database(), current_setting('transaction_read_only')")
        database, read_only = cur.fetchone()
        if read_only != "on":  # cannot happen; the guarantee is worth one round trip
            raise BackendError("the scan transaction is not READ ONLY (transaction_read_only=%s); nothing was run"
                               % read_only)
        self.svc.out["database"] = database
        checks = self.svc.checks
        server = [c for c in SERVER_CHECKS if c in checks and c != "amcheck"]
        if server:
            self.timed_pass("server", None, server, lambda: self.server_pass(server))
        self.lock_tables()
        # the built-in passes read the heap, never an index: an index may be what is corrupt
        cur.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; "
                    "SET LOCAL enable_bitmapscan = off")
        for role in ("positions", "trades"):
            wanted = [n for n in FILTER_PASS[role] if n in checks and (n, role) in self.svc.row_checks]
            if wanted:
                self.timed_pass(role, self.schema.label(role), wanted, lambda r=role, w=wanted: self.filter_pass(r, w))
        if "duplicate_ids" in checks:
            for role in ("positions", "trades"):
                self.timed_pass("%s:duplicate_ids" % role, self.schema.label(role), ["duplicate_ids"],
                                lambda r=role: self.duplicates_pass(r))
        if "orphan_trades" in checks:
            self.timed_pass("trades:orphan_trades", self.schema.label("trades"), ["orphan_trades"], self.orphans_pass)
        if "position_mismatch" in checks:
            self.timed_pass("position_mismatch", self.schema.label("positions"), ["position_mismatch"],
                            self.mismatch_pass)
        if "amcheck" in checks:
            self.timed_pass("amcheck", None, ["amcheck"], self.amcheck_pass)
        for spec in self.svc.custom:
            name = "custom:" + spec["name"]
            self.timed_pass(name, None, [spec["name"]], lambda s=spec, n=name: self.custom_pass(s, n))
        if "export" in self.svc.actions:
            if self.svc.out["errors"]:
                self.svc._record({"action": "export", "status": SKIPPED, "changed": False,
                                  "message": "export skipped: a check failed, so the rows found are incomplete"})
            else:
                self.svc._record(Exporter(self).run())

    # -- tables ----------------------------------------------------------------------------------
    def needed_tables(self):
        checks = self.svc.checks
        need = set()
        if any(c in checks for c in ("null_prices", "position_mismatch", "duplicate_ids", "non_positive_quantity",
                                     "amcheck")) or ("future_timestamps" in checks and self.schema.has(
                                         "positions_timestamp")):
            need.add("positions")
        if any(c in checks for c in ("invalid_status", "position_mismatch", "orphan_trades", "duplicate_ids",
                                     "non_positive_quantity", "amcheck")) or (
                "future_timestamps" in checks and self.schema.has("trades_timestamp")):
            need.add("trades")
        if "orphan_trades" in checks or "amcheck" in checks:
            need.add("accounts")
        return [r for r in TABLE_ROLES if r in need]

    def lock_tables(self):
        """ACCESS SHARE (what a SELECT takes) on every checked table, once, up front: a table held by
        another session costs one lock_timeout, and every pass on it then reports why."""
        for role in self.needed_tables():
            table = self.schema.table(role)
            self.cur.execute("SELECT to_regclass(%s)::oid", (table.as_string(self.cur),))
            oid = self.cur.fetchone()[0]
            label = self.schema.label(role)
            if oid is None:
                self.unavailable[role] = "table %s not found; set schema.%s_table to the real table" % (label, role)
                continue
            self.oids[role] = oid
            dummy, err = self.savepoint(lambda t=table: self.cur.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(t)))
            if err is not None:
                self.unavailable[role] = self.svc._db_error(err, "could not lock %s within lock_timeout (%s s)" % (
                    label, _fmt(self.svc.lock_timeout)) if err.pgcode == LOCK_NOT_AVAILABLE else "reading %s" % label)

    def _blocked(self, roles, name, table, pass_name):
        for role in roles:
            if role in self.unavailable:
                self.add(_result(name, table, pass_name, ERROR, message=self.unavailable[role]))
                return True
        return False

    # -- row passes ------------------------------------------------------------------------------
    def filter_pass(self, role, names):
        label = self.schema.label(role)
        if role in self.unavailable:
            for name in names:
                self.add(_result(name, label, role, ERROR, message=self.unavailable[role]))
            return
        checks = [self.svc.row_checks[(n, role)] for n in names]
        query = filter_pass_sql(self.schema, role, checks, self.svc.sample_size)

        def run():
            self.cur.execute(query)
            return self.cur.fetchone()

        row, err = self.savepoint(run)
        for index, check in enumerate(checks):
            if err is not None:
                self.add(_result(check.name, label, role, ERROR, message=self.svc._db_error(err, "pass over " + label)))
                continue
            count, sample = row[2 * index], row[1 + 2 * index] or []
            self.add(_result(check.name, label, role, _count_status(count), count, sample, (
                "%d row(s) of %s: %s" % (count, label, check.reason)) if count else
                "no row of %s: %s" % (label, check.reason)))

    def duplicates_pass(self, role):
        label = self.schema.label(role)
        pass_name = "%s:duplicate_ids" % role
        if self._blocked([role], "duplicate_ids", label, pass_name):
            return

        def run():
            self.cur.execute(duplicates_sql(self.schema, role, self.svc.sample_size))
            return self.cur.fetchone()

        row, err = self.savepoint(run)
        if err is not None:
            self.add(_result("duplicate_ids", label, pass_name, ERROR, message=self.svc._db_error(err, label)))
            return
        surplus, keys, sample = row
        key = self.schema.keys[role]
        self.add(_result("duplicate_ids", label, pass_name, _count_status(surplus), surplus, sample or [], (
            "%d surplus row(s) of %s over %d %s value(s) that appear more than once" % (surplus, label, keys, key))
            if surplus else "every %s of %s appears once" % (key, label)))

    def orphans_pass(self):
        label = self.schema.label("trades")
        pass_name = "trades:orphan_trades"
        if self._blocked(["trades", "accounts"], "orphan_trades", label, pass_name):
            return
        check = self.svc.row_checks[("orphan_trades", "trades")]

        def run():
            self.cur.execute(orphans_sql(self.schema, check, self.svc.sample_size))
            return self.cur.fetchone()

        row, err = self.savepoint(run)
        if err is not None:
            self.add(_result("orphan_trades", label, pass_name, ERROR, message=self.svc._db_error(err, label)))
            return
        count, sample = row
        self.add(_result("orphan_trades", label, pass_name, _count_status(count), count, sample or [], (
            "%d trade(s) whose %s" % (count, check.reason)) if count else "every trade has an account"))

    def mismatch_pass(self):
        label = self.schema.label("positions")
        if self._blocked(["positions", "trades"], "position_mismatch", label, "position_mismatch"):
            return

        def run():
            self.cur.execute(mismatch_sql(self.schema, self.svc.sample_size))
            return self.cur.fetchone()

        row, err = self.savepoint(run)
        if err is not None:
            self.add(_result("position_mismatch", label, "position_mismatch", ERROR,
                             message=self.svc._db_error(err, "positions against trades")))
            return
        count, sample = row
        filled = ", ".join(self.schema.lists["filled_statuses"])
        self.add(_result("position_mismatch", label, "position_mismatch", _count_status(count), count, sample or [], (
            "%d (account, symbol) group(s) whose position quantity differs from the %s of its %s trades" % (
                count, "signed sum" if self.schema.has("side") else "sum", filled)) if count else
            "every position quantity matches its %s trades" % filled))

    # -- amcheck ---------------------------------------------------------------------------------
    def amcheck_pass(self):
        if self.amcheck is not None:
            self.add(_result("amcheck", None, "amcheck", self.amcheck[0], message=self.amcheck[1]))
            return
        cur = self.cur
        cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                    "WHERE e.extname = 'amcheck'")
        row = cur.fetchone()
        if row is None:
            self.add(_result("amcheck", None, "amcheck", SKIPPED, message="amcheck extension not installed; set "
                             "allow_create_extension: true to create it"))
            return
        function = sql.Identifier(row[0], "bt_index_check")
        roles = [r for r in self.needed_tables() if r in self.oids and r not in self.unavailable]
        blocked = [self.unavailable[r] for r in self.needed_tables() if r in self.unavailable]
        cur.execute("SELECT c.oid, c.oid::regclass::text, i.indrelid::regclass::text FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
                    "WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't' "
                    "AND i.indrelid = ANY(%s::oid[]) ORDER BY 2", ([self.oids[r] for r in roles],))
        indexes = cur.fetchall()
        corrupt, errors = [], []
        for oid, name, table in indexes:
            if self.svc.heapallindexed:
                query = sql.SQL("SELECT {}(%s::regclass, true)").format(function)
            else:
                query = sql.SQL("SELECT {}(%s::regclass)").format(function)
            dummy, err = self.savepoint(lambda q=query, o=oid: cur.execute(q, (o,)))
            if err is None:
                continue
            entry = {"index": name, "table": table, "message": redact(_pg_message(err), self.svc.secrets)}
            if err.pgcode in (INDEX_CORRUPTED, DATA_CORRUPTED):
                corrupt.append(entry)
            else:
                entry["message"] = self.svc._db_error(err)
                errors.append(entry)
        tables = ", ".join(self.schema.label(r) for r in roles)
        n = self.svc.sample_size
        if errors or blocked:
            self.add(_result("amcheck", None, "amcheck", ERROR, len(corrupt), (corrupt + errors)[:n], "; ".join(
                blocked + ["bt_index_check(%s): %s" % (e["index"], e["message"]) for e in errors])))
        elif corrupt:
            self.add(_result("amcheck", None, "amcheck", CORRUPT, len(corrupt), corrupt[:n],
                             "%d of %d btree index(es) of %s are corrupt: %s. REINDEX them (after saving evidence)" % (
                                 len(corrupt), len(indexes), tables,
                                 "; ".join("%s: %s" % (e["index"], e["message"]) for e in corrupt))))
        else:
            self.add(_result("amcheck", None, "amcheck", OK, 0, [], "bt_index_check%s passed on %d btree index(es) "
                             "of %s" % (" (heapallindexed)" if self.svc.heapallindexed else "", len(indexes),
                                        tables or "no table")))

    # -- server ----------------------------------------------------------------------------------
    def server_pass(self, names):
        for name in names:
            value, err = self.savepoint(getattr(self, name))
            if err is not None:
                self.add(_result(name, None, "server", ERROR, message=self.svc._db_error(err)))
            else:
                self.add(value)

    def checksum_failures(self):
        self.cur.execute("SELECT current_setting('data_checksums'), coalesce(sum(checksum_failures), 0)::bigint, "
                         "max(checksum_last_failure)::text FROM pg_stat_database "
                         "WHERE datname = current_database() OR datname IS NULL")
        enabled, failures, last = self.cur.fetchone()
        if enabled != "on":
            return _result("checksum_failures", None, "server", SKIPPED, message=(
                "data checksums are off on this cluster, so PostgreSQL cannot count checksum failures "
                "(enable them with initdb --data-checksums or pg_checksums --enable)"))
        return _result("checksum_failures", None, "server", _count_status(failures), failures,
                       [last] if failures else [], ("%d checksum failure(s) in this database, the last at %s: a "
                                                    "storage problem; save evidence and restore the pages" % (
                                                        failures, last)) if failures else "no checksum failures")

    def long_queries(self):
        self.cur.execute(
            "SELECT a.pid, a.usename, a.application_name, a.state, "
            "round(extract(epoch FROM clock_timestamp() - a.query_start)::numeric, 1)::float8, a.query "
            "FROM pg_stat_activity a WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
            "AND a.state = 'active' AND NOT (a.pid = ANY(%s)) AND a.pid <> pg_backend_pid() "
            "AND a.query_start < clock_timestamp() - %s * interval '1 second' ORDER BY a.query_start",
            (sorted(self.svc.our_pids), self.svc.long_query_seconds))
        rows = self.cur.fetchall()
        sample = [{"pid": r[0], "user": r[1], "application_name": r[2], "state": r[3], "seconds": r[4],
                   "query": _query_text(r[5])} for r in rows[:self.svc.sample_size]]
        limit = _fmt(self.svc.long_query_seconds)
        return _result("long_queries", None, "server", WARN if rows else OK, len(rows), sample, (
            "%d query(ies) running longer than %s s: %s" % (len(rows), limit, ", ".join(
                "pid %d (%s s)" % (s["pid"], s["seconds"]) for s in sample))) if rows else
            "no query running longer than %s s" % limit)

    def blocking_locks(self):
        self.cur.execute(
            "SELECT w.pid, w.locktype, w.mode, w.relation::regclass::text, b.pid, b.usename, b.state, b.query "
            "FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid "
            "CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid) "
            "JOIN pg_stat_activity b ON b.pid = bp.pid "
            "WHERE NOT w.granted AND a.datname = current_database() AND NOT (w.pid = ANY(%s)) "
            "ORDER BY w.pid, b.pid", (sorted(self.svc.our_pids),))
        blocked = {}
        for pid, locktype, mode, relation, bpid, buser, bstate, bquery in self.cur.fetchall():
            entry = blocked.setdefault(pid, {"pid": pid, "locktype": locktype, "mode": mode, "relation": relation,
                                             "blocked_by": []})
            if not any(b["pid"] == bpid for b in entry["blocked_by"]):
                entry["blocked_by"].append({"pid": bpid, "user": buser, "state": bstate, "query": _query_text(bquery)})
        waits = [blocked[pid] for pid in sorted(blocked)]
        return _result("blocking_locks", None, "server", WARN if waits else OK, len(waits),
                       waits[:self.svc.sample_size], (
                           "%d session(s) wait for a lock: %s" % (len(waits), "; ".join(
                               "pid %d (%s on %s) blocked by %s" % (
                                   w["pid"], w["mode"], w["relation"] or w["locktype"],
                                   ", ".join("pid %d" % b["pid"] for b in w["blocked_by"]))
                               for w in waits[:self.svc.sample_size]))) if waits else "no session waits for a lock")

    def connection_saturation(self):
        self.cur.execute("SELECT (SELECT coalesce(sum(numbackends), 0) FROM pg_stat_database)::bigint, "
                         "current_setting('max_connections')::int")
        backends, maximum = self.cur.fetchone()
        ratio = round(float(backends) / maximum, 4) if maximum else 0.0
        limit = self.svc.max_connection_ratio
        over = ratio > limit
        return _result("connection_saturation", None, "server", WARN if over else OK, backends,
                       [{"numbackends": backends, "max_connections": maximum, "ratio": ratio}],
                       "%d of max_connections %d in use (%.0f%%), %s max_connection_ratio %s" % (
                           backends, maximum, ratio * 100, "above" if over else "within", _fmt(limit)))

    # -- custom ----------------------------------------------------------------------------------
    def custom_pass(self, spec, pass_name):
        """One custom check, through query_to_xml (see custom_check_sql): PostgreSQL, not this module,
        decides that its text is one read-only query; anything else is refused and reported naming
        custom[N].sql."""
        cur = self.cur
        query, params = custom_check_sql(spec["sql"], self.svc.sample_size)

        def run():
            # the user's query may use indexes; the savepoint is rolled back, and this with it
            cur.execute("SET LOCAL enable_indexscan = on; SET LOCAL enable_indexonlyscan = on; "
                        "SET LOCAL enable_bitmapscan = on")
            cur.execute(query, params)
            return cur.fetchone()

        try:
            row, err = self.savepoint(run, rollback=True)
        except psycopg2.Error as err:  # cannot happen through SPI; kept as a net
            raise BackendError("%s ended the scan's transaction (%s); nothing after it was checked. %s" % (
                spec["where"], _pg_message(err), CUSTOM_RULE % spec["where"]))
        if err is not None:
            self.add(_result(spec["name"], None, pass_name, ERROR, message=self.svc._custom_error(err, spec)))
        elif row is None or row[0] is None:
            self.add(_result(spec["name"], None, pass_name, ERROR, message=(
                "%s was refused by PostgreSQL: it returned no row count (a second statement?). %s" % (
                    spec["where"], CUSTOM_RULE % spec["where"]))))
        else:
            count = row[0]
            sample = [plain(v) for v in json.loads(row[1], parse_float=decimal.Decimal)] if row[1] else []
            self.add(_result(spec["name"], None, pass_name, _count_status(count), count, sample,
                             "%d violating row(s)" % count if count else "no violating rows"))


# --------------------------------------------------------------------------------------------
# export: the offending rows, as JSON, from the scan's own snapshot
# --------------------------------------------------------------------------------------------
class Exporter:
    """Writes ``{"database", "incident_id", "checks": [{name, table, status, count, rows: [...]}]}``.

    Row checks export their full rows (``row_to_json``, streamed through a server-side cursor, ordered
    by key); position_mismatch its groups; custom checks their rows; the others their sample. The file
    is written next to ``export_path`` and renamed into place, mode 0600. Nothing in it depends on the
    time, so exporting the same rows twice leaves the file unchanged (changed=false).
    """

    def __init__(self, scanner):
        self.scanner = scanner
        self.svc = scanner.svc

    def _queries(self, result):
        s = self.svc.schema
        if result["pass"].startswith("custom:"):
            spec = next(c for c in self.svc.custom if c["name"] == result["name"])
            return custom_export_sql(spec["sql"])  # (query, params): the text is a parameter, never SQL
        if result["name"] == "position_mismatch":
            return _mismatch_cte(s) + sql.SQL("SELECT {}::text FROM m ORDER BY account_id, symbol").format(
                _MISMATCH_ROW)
        role = next((r for r in ("positions", "trades") if s.label(r) == result["table"]), None)
        check = self.svc.row_checks.get((result["name"], role))
        if check is None:
            return None
        return sql.SQL("SELECT row_to_json(s)::text FROM {} AS s WHERE {} ORDER BY s.{}, s.ctid").format(
            s.table(role), check.predicate, s.key(role, None))

    def run(self):
        path = self.svc.export_path
        results = [r for r in self.svc.out["checks"] if r["status"] in (CORRUPT, WARN)]
        action = {"action": "export", "path": path, "changed": False, "status": OK,
                  "checks": [{"name": r["name"], "table": r["table"], "rows": r["count"]} for r in results]}
        total = sum(r["count"] for r in results)
        if self.svc.check_mode:
            action["changed"] = True
            action["message"] = "would write %d row(s) of %d check(s) to %s (check mode)" % (total, len(results), path)
            return action
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(prefix=".pg_integrity-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write('{"database": %s, "incident_id": %s, "checks": [' % (
                    json.dumps(self.svc.out["database"]), json.dumps(self.svc.incident_id)))
                for i, result in enumerate(results):
                    fh.write("%s\n  {\"name\": %s, \"table\": %s, \"status\": %s, \"count\": %d, \"rows\": [" % (
                        "," if i else "", json.dumps(result["name"]), json.dumps(result["table"]),
                        json.dumps(result["status"]), result["count"]))
                    self._rows(fh, result)
                    fh.write("]}")
                fh.write("\n]}\n")
                fh.flush()
                os.fsync(fh.fileno())
            if os.path.exists(path) and _same_file(tmp, path) and (os.stat(path).st_mode & 0o777) == 0o600:
                os.unlink(tmp)
                action["message"] = "%s already holds these %d row(s)" % (path, total)
                return action
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
        except (OSError, IOError) as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            action.update(status=ERROR, message="cannot write %s: %s" % (path, err))
            return action
        except psycopg2.Error:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        action["changed"] = True
        action["message"] = "wrote %d row(s) of %d check(s) to %s (mode 0600)" % (total, len(results), path)
        return action

    def _rows(self, fh, result):
        query = self._queries(result)
        first = True
        if query is None:
            for item in result["sample"]:
                fh.write("%s\n    %s" % ("" if first else ",", json.dumps(item, sort_keys=True)))
                first = False
            return
        params = None
        if isinstance(query, tuple):
            query, params = query
        cursor = self.scanner.conn.cursor(name="tradeops_pg_integrity_export")
        try:
            cursor.itersize = 2000
            cursor.execute(query, params)
            for (text,) in cursor:
                fh.write("%s\n    %s" % ("" if first else ",", text))
                first = False
        finally:
            cursor.close()


def _same_file(a, b, chunk=1 << 16):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True
