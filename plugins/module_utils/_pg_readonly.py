# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_integrity``'s read-only mode: ``default_transaction_read_only`` on the database, the sessions
opened before it waited for or terminated, and the verification from a new session.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import _fmt, ERROR, OK, psycopg2, sql


class ReadOnlyMode:
    """Mixed into :class:`IntegrityService`: uses its connections, options and records."""

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
