# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model of ``pg_integrity``'s checks: option constants and helpers, the schema, the row checks and
the SQL each pass sends. No connection is opened here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import decimal
import math
import re
import time

from ansible_collections.tradeops.remediation.plugins.module_utils._redact import REDACTED
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    MissingLibraryError,
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
    """The psycopg2 module (the other _pg_* files import it from here), or MissingLibraryError."""
    if not HAS_PSYCOPG2:
        raise MissingLibraryError("psycopg2", "the PostgreSQL integrity checks")
    return psycopg2


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


def check_label(check):
    """A check's name in messages: ``name (table)``."""
    return "%s (%s)" % (check["name"], check["table"]) if check.get("table") else check["name"]
