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

One file per job: ``_pg_checks`` (options, the schema, the row checks and their SQL), ``_pg_readonly``
(step 1 and 4), ``_pg_scan`` (step 2), ``_pg_export`` (the export action), ``_pg_repair`` (reindex,
quarantine) and ``_pg_reconcile`` (reconcile). This file validates the options and runs the steps.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _postgres
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    TradeopsError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    _CHECK_NAME,
    _choices,
    _elapsed_ms,
    _fmt,
    _milliseconds,
    _pg_message,
    _require_psycopg2,
    ACTIONS,
    APPLICATION_NAME,
    build_row_checks,
    check_label,
    BUILTIN_CHECKS,
    CORRUPT,
    CUSTOM_REFUSED,
    CUSTOM_RULE,
    custom_text,
    DEFAULTS,
    ERROR,
    identifier,
    INSUFFICIENT_PRIVILEGE,
    LOCK_NOT_AVAILABLE,
    MAX_SAMPLE,
    OK,
    psycopg2,
    QUARANTINABLE,
    QUERY_CANCELED,
    READ_ONLY_SQL_TRANSACTION,
    Schema,
    SESSION_MODES,
    SEVERITY,
    SKIPPED,
    UNDEFINED_COLUMN,
    UNDEFINED_TABLE,
    WARN,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_readonly import ReadOnlyMode
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_reconcile import Reconciler
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_repair import Repairs
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_scan import Scanner
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import number


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
class IntegrityService(ReadOnlyMode, Repairs, Reconciler):
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
        self.sample_size = number(p["sample_size"], "sample_size", minimum=0, maximum=MAX_SAMPLE, integer=True)
        self.clock_skew = number(p["clock_skew_seconds"], "clock_skew_seconds", minimum=0)
        self.long_query_seconds = number(p["long_query_seconds"], "long_query_seconds", minimum=0)
        self.max_connection_ratio = number(p["max_connection_ratio"], "max_connection_ratio", above=0, maximum=1)
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
        self.wait_seconds = number(p["read_only_wait_seconds"], "read_only_wait_seconds", minimum=0, maximum=86400)
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

    # -- messages -------------------------------------------------------------------------------
    _label = staticmethod(check_label)

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
