# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_integrity``'s repair actions on the write session: reindex (rebuild the btree indexes amcheck
found corrupt, then check them again) and quarantine (move the offending rows to a quarantine
table), each in one transaction whose counts are verified before COMMIT.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import uuid

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    TradeopsError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    CORRUPT,
    ERROR,
    OK,
    psycopg2,
    QUARANTINABLE,
    QUARANTINE_COLUMNS,
    sql,
    TABLE_ROLES,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact


class Rollback(Exception):
    """Counts did not match inside an action's transaction: roll it back."""


class Repairs:
    """Mixed into :class:`IntegrityService`: uses its connections, options and records."""

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
                    raise Rollback("%s on %s: found %d row(s), copied %d to %s, deleted %d from the source" % (
                        name, self.schema.label(role), found, copied, tables[role][1], deleted))
                entry["moved"] = copied
                total[role] += copied
            for role in roles:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE batch_id = %s").format(tables[role][0]), (batch,))
                stored = cur.fetchone()[0]
                if stored != total[role]:
                    raise Rollback("%s holds %d row(s) of this batch, expected %d" % (
                        tables[role][1], stored, total[role]))
                action["tables"].append({"table": self.schema.label(role), "quarantine_table": tables[role][1],
                                         "moved": total[role]})
            moved = sum(total.values())
            if moved:
                conn.commit()
            else:
                conn.rollback()  # the rows went away since the scan: leave no trace, not even the schema
            action["changed"] = bool(moved)
        except Rollback as err:
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
                raise Rollback("the amcheck extension is gone: the rebuilt indexes could not be checked")
            check = sql.SQL("SELECT {}(%s::regclass)").format(sql.Identifier(row[0], "bt_index_check"))
            for name in names:
                cur.execute("SELECT c.oid, n.nspname, c.relname FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass "
                            "AND c.relkind = 'i'", (name,))
                found = cur.fetchone()
                if found is None:
                    raise Rollback("%s is not an index" % name)
                oid, schema, relname = found
                cur.execute(sql.SQL("REINDEX INDEX {}").format(sql.Identifier(schema, relname)))
                cur.execute(check, (oid,))  # raises if the rebuilt index is still corrupt: all rolled back
                action["indexes"].append(name)
            conn.commit()
            action["changed"] = True
        except Rollback as err:
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
