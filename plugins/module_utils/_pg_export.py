# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_integrity``'s export action: the offending rows streamed to 0600 files inside the scan's
snapshot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile

from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    _mismatch_cte,
    _MISMATCH_ROW,
    CORRUPT,
    custom_export_sql,
    ERROR,
    OK,
    psycopg2,
    sql,
    WARN,
)


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
