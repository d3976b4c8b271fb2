# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_integrity``'s scan: every pass in ONE ``REPEATABLE READ, READ ONLY`` transaction, each in a
savepoint (see the module docstring of ``_pg_integrity``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import decimal
import json
import time

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    _count_status,
    _elapsed_ms,
    _fmt,
    _pg_message,
    _query_text,
    _result,
    check_label,
    CORRUPT,
    custom_check_sql,
    CUSTOM_RULE,
    DATA_CORRUPTED,
    duplicates_sql,
    ERROR,
    FILTER_PASS,
    filter_pass_sql,
    INDEX_CORRUPTED,
    LOCK_NOT_AVAILABLE,
    mismatch_sql,
    OK,
    orphans_sql,
    plain,
    psycopg2,
    SERVER_CHECKS,
    SKIPPED,
    sql,
    TABLE_ROLES,
    WARN,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_export import Exporter
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact


# --------------------------------------------------------------------------------------------
# The server checks: catalog views only, no checked table
# --------------------------------------------------------------------------------------------
class ServerChecks:
    """Mixed into :class:`Scanner` (its cursor, service, savepoint and add): the ``server`` pass, run first
    so that the statistics snapshot is taken before our own work."""

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


# --------------------------------------------------------------------------------------------
# The scan: one READ ONLY transaction
# --------------------------------------------------------------------------------------------
class Scanner(ServerChecks):
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
        label = check_label(result)
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
