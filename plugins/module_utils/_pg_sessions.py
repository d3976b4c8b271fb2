# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_sessions``: PostgreSQL's sessions as seed 003 and seed 004 read them, and the only terminations they allow.

Read (always): the connections by state and against ``max_connections`` (seed 003), the active queries older than
``long_query_seconds`` (seed 003), and every lock wait as a chain from its root blocker (seed 004's
``pg_locks WHERE NOT granted``, resolved with ``pg_blocking_pids``).

Terminate (only what ``terminate`` names, only past a threshold): ``long_queries`` ends the active queries older than
``long_query_seconds``; ``root_blockers`` ends the session at the root of a chain whose longest wait is at least
``lock_wait_seconds``, never a session in the middle of a chain. Never terminated: our own session, the collection's
sessions (``application_name`` starting ``tradeops.``), any session that is not a client backend (replication
walsenders, autovacuum, background workers), and the applications and roles in ``protect_applications`` and
``protect_users``. Before the first ``pg_terminate_backend`` the whole snapshot, query text and waiting chains
included, is written to ``evidence_path`` (mode 0600, fsynced); then each terminated pid must be gone within
``verify_timeout``, and a second read says what remains.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _postgres
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._evidence_file import write_private_json
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import _query_text

APPLICATION_NAME = "tradeops.pg_sessions"
OWN_PREFIX = "tradeops."
TERMINATE_CHOICES = ("long_queries", "root_blockers")

SESSIONS_SQL = (
    "SELECT a.pid, a.usename, a.application_name, a.backend_type, a.state, a.wait_event_type, a.datname, "
    "extract(epoch FROM clock_timestamp() - a.query_start)::float8, "
    "extract(epoch FROM clock_timestamp() - a.xact_start)::float8, "
    "extract(epoch FROM clock_timestamp() - a.state_change)::float8, a.query, "
    "pg_blocking_pids(a.pid) "
    "FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid()")
LOCKS_SQL = ("SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text FROM pg_locks l WHERE NOT l.granted")
CAPACITY_SQL = "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"


def _round(value):
    return None if value is None else round(float(value), 1)


class SessionsService:
    """Reads the sessions, writes the evidence, terminates what the options allow, verifies."""

    def __init__(self, params, check_mode=False):
        self.params = params
        self.long_query_seconds = check_timeout(params.get("long_query_seconds", 300), "long_query_seconds",
                                                minimum=0)
        self.lock_wait_seconds = check_timeout(params.get("lock_wait_seconds", 30), "lock_wait_seconds", minimum=0)
        self.statement_timeout = check_timeout(params.get("statement_timeout", 10), "statement_timeout", minimum=1)
        self.verify_timeout = check_timeout(params.get("verify_timeout", 10), "verify_timeout", minimum=1)
        self.terminate = list(params.get("terminate") or [])
        unknown = [t for t in self.terminate if t not in TERMINATE_CHOICES]
        if unknown:
            raise ValidationError("terminate: unknown %s (choices: %s)" % (
                ", ".join(unknown), ", ".join(TERMINATE_CHOICES)))
        self.protect_applications = [str(a) for a in params.get("protect_applications") or []]
        self.protect_users = [str(u) for u in params.get("protect_users") or []]
        self.evidence_path = params.get("evidence_path")
        if self.terminate and not self.evidence_path:
            raise ValidationError("evidence_path is required with terminate: the sessions (query text and waiting "
                                  "chains) are written there before any of them is terminated")
        self.check_mode = bool(check_mode)
        if (self.evidence_path and not self.check_mode
                and not os.path.isdir(os.path.dirname(os.path.abspath(self.evidence_path)))):
            raise ValidationError("evidence_path: the directory of %s does not exist" % self.evidence_path)
        ratio = params.get("max_connection_ratio", 0.9)
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValidationError("max_connection_ratio must be above 0 and at most 1, got %r" % (ratio,))
        self.max_connection_ratio = float(ratio)
        sample = params.get("sample_size", 50)
        if not isinstance(sample, int) or sample < 1:
            raise ValidationError("sample_size must be a positive integer, got %r" % (sample,))
        self.sample_size = sample
        _postgres.connection_kwargs(params, where="pg_sessions")  # names a bad port, sslmode or timeout

    # -- reading ---------------------------------------------------------------------------------------------
    def _connect(self, deadline):
        return _postgres.connect(self.params, deadline, options="-c statement_timeout=%d" % int(
            self.statement_timeout * 1000), application_name=APPLICATION_NAME)

    def protected(self, session):
        """Why ``session`` must never be terminated, or None."""
        app = session.get("application_name") or ""
        if session.get("backend_type") != "client backend":
            return "a %s, not a client session" % (session.get("backend_type") or "background process")
        if app.startswith(OWN_PREFIX):
            return "the collection's own session (%s)" % app
        if any(app.startswith(p) for p in self.protect_applications):
            return "application %s is in protect_applications" % app
        if session.get("user") in self.protect_users:
            return "role %s is in protect_users" % session.get("user")
        return None

    def read(self, conn):
        """One snapshot: sessions, connections by state, long queries and the blocking chains."""
        import psycopg2
        try:
            with conn.cursor() as cur:
                cur.execute(CAPACITY_SQL)
                max_connections, reserved = cur.fetchone()
                cur.execute(LOCKS_SQL)
                locks = {}
                for pid, locktype, mode, relation in cur.fetchall():
                    locks.setdefault(pid, {"locktype": locktype, "mode": mode, "relation": relation})
                cur.execute(SESSIONS_SQL)
                rows = cur.fetchall()
            conn.rollback()
        except psycopg2.Error as err:
            raise BackendError("postgres %s: reading pg_stat_activity failed: %s" % (
                _postgres.describe(self.params), " ".join(str(err).split())))
        sessions = {}
        for (pid, user, app, backend_type, state, wait_type, datname, query_s, xact_s, state_s, query,
             blocked_by) in rows:
            sessions[pid] = {
                "pid": pid, "user": user, "application_name": app or "", "backend_type": backend_type,
                "state": state, "database": datname, "query_seconds": _round(query_s), "xact_seconds": _round(xact_s),
                "state_seconds": _round(state_s), "wait_event_type": wait_type, "query": _query_text(query),
                "blocked_by": sorted(blocked_by or []),
            }
        return self._shape(sessions, locks, max_connections, reserved)

    def _shape(self, sessions, locks, max_connections, reserved):
        clients = [s for s in sessions.values() if s["backend_type"] == "client backend"]
        by_state = {}
        for s in clients:
            by_state[s["state"] or "unknown"] = by_state.get(s["state"] or "unknown", 0) + 1
        total = len(clients) + 1  # and ours
        long_queries = sorted(
            (dict(s, protected=self.protected(s)) for s in clients
             # a session waiting for a lock is a victim, listed under its chain's root blocker
             if s["state"] == "active" and not s["blocked_by"] and (s["query_seconds"] or 0) >= self.long_query_seconds),
            key=lambda s: -(s["query_seconds"] or 0))
        return {
            "connections": {"total": total, "max_connections": max_connections, "reserved": reserved,
                            "ratio": round(float(total) / max_connections, 4) if max_connections else None,
                            "by_state": by_state},
            "long_queries": long_queries,
            "blocking": self._chains(sessions, locks),
        }

    def _chains(self, sessions, locks):
        """Every lock wait, grouped under the root blocker it ultimately waits for (a blocker that waits for
        nobody). ``max_wait_seconds``: the longest a session of the chain has been waiting."""
        waiting = {pid: s for pid, s in sessions.items() if s["blocked_by"]}
        roots = {}
        for pid, session in waiting.items():
            seen, frontier, found = set(), list(session["blocked_by"]), set()
            while frontier:
                blocker = frontier.pop()
                if blocker in seen:
                    continue
                seen.add(blocker)
                upstream = sessions.get(blocker, {}).get("blocked_by") or []
                if upstream:
                    frontier.extend(upstream)
                else:
                    found.add(blocker)
            for root in found or set(session["blocked_by"]):  # a cycle is a deadlock: PostgreSQL ends it
                roots.setdefault(root, []).append(pid)
        chains = []
        for root, waiters in sorted(roots.items()):
            blocker = sessions.get(root, {"pid": root, "application_name": "", "backend_type": None})
            waits = [dict(pid=w, user=sessions[w]["user"], application_name=sessions[w]["application_name"],
                          wait_seconds=sessions[w]["query_seconds"], query=sessions[w]["query"],
                          blocked_by=sessions[w]["blocked_by"], **locks.get(w, {}))
                     for w in sorted(waiters)]
            chains.append({
                "root": dict((k, blocker.get(k)) for k in ("pid", "user", "application_name", "backend_type", "state",
                                                           "xact_seconds", "state_seconds", "query")),
                "protected": self.protected(blocker),
                "waiting": waits[:self.sample_size],
                "waiting_count": len(waits),
                "max_wait_seconds": max([w["wait_seconds"] or 0 for w in waits] or [0]),
            })
        return sorted(chains, key=lambda c: -c["max_wait_seconds"])

    # -- deciding and acting ---------------------------------------------------------------------------------
    def plan(self, snapshot):
        """What ``terminate`` allows in ``snapshot``: ``(to_terminate, spared)``, each ``{pid, reason, ...}``."""
        kill, spared = {}, []
        if "root_blockers" in self.terminate:
            for chain in snapshot["blocking"]:
                root = chain["root"]
                why = chain["protected"]
                if why is None and chain["max_wait_seconds"] < self.lock_wait_seconds:
                    why = "its longest waiter waits %.1f s, below lock_wait_seconds %s" % (
                        chain["max_wait_seconds"], self.lock_wait_seconds)
                entry = dict(root, reason="root blocker of %d waiting session(s), the longest for %.1f s" % (
                    chain["waiting_count"], chain["max_wait_seconds"]))
                if why:
                    spared.append(dict(entry, spared_because=why))
                else:
                    kill.setdefault(root["pid"], entry)
        if "long_queries" in self.terminate:
            for q in snapshot["long_queries"]:
                entry = {k: q.get(k) for k in ("pid", "user", "application_name", "backend_type", "state",
                                               "query_seconds", "query")}
                entry["reason"] = "active for %.1f s, past long_query_seconds %s" % (
                    q["query_seconds"], self.long_query_seconds)
                if q["protected"]:
                    spared.append(dict(entry, spared_because=q["protected"]))
                else:
                    kill.setdefault(q["pid"], entry)
        return [kill[p] for p in sorted(kill)], spared

    def write_evidence(self, snapshot, planned):
        body = {"captured_at": time.time(), "server": _postgres.describe(self.params),
                "thresholds": {"long_query_seconds": self.long_query_seconds,
                               "lock_wait_seconds": self.lock_wait_seconds},
                "snapshot": snapshot, "to_terminate": planned}
        return write_private_json(self.evidence_path, body, "nothing was terminated")

    def _terminate(self, conn, planned):
        import psycopg2
        done = []
        for entry in planned:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (entry["pid"],))
                    ok = bool(cur.fetchone()[0])
                conn.rollback()
            except psycopg2.Error as err:
                conn.rollback()
                done.append(dict(entry, terminated=False, error=" ".join(str(err).split())))
                continue
            error = None if ok else "pg_terminate_backend returned false (the session had already ended)"
            done.append(dict(entry, terminated=ok, error=error))
        return done

    def _wait_gone(self, conn, pids):
        deadline = Deadline(self.verify_timeout)
        alive = list(pids)
        while alive:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (alive,))
                alive = sorted(r[0] for r in cur.fetchall())
            conn.rollback()
            if not alive or deadline.expired():
                break
            time.sleep(0.1)
        return alive

    def run(self):
        deadline = Deadline(self.statement_timeout + self.verify_timeout + 30)
        conn = self._connect(deadline)
        try:
            before = self.read(conn)
            planned, spared = self.plan(before)
            out = dict(before, terminated=[], spared=spared, would_terminate=[], evidence_path=None,
                       still_alive=[], changed=False)
            if planned and self.check_mode:
                out["would_terminate"] = planned
                out["changed"] = True  # check mode reports the change it would make
            elif planned:
                out["evidence_path"] = self.write_evidence(before, planned)
                out["terminated"] = self._terminate(conn, planned)
                out["changed"] = any(t["terminated"] for t in out["terminated"])
                out["still_alive"] = self._wait_gone(conn, [t["pid"] for t in out["terminated"]])
                after = self.read(conn)
                out["after"] = after
            elif self.evidence_path and not self.check_mode:
                out["evidence_path"] = self.write_evidence(before, [])
        finally:
            conn.close()
        final = out.get("after", before)
        problems = self.problems(final)
        out["status"] = "GO" if not problems and not out["still_alive"] else "NO-GO"
        out["problems"] = problems + ["pid %d did not end within verify_timeout %s s" % (p, self.verify_timeout)
                                      for p in out["still_alive"]]
        return out

    def problems(self, snapshot):
        """What a healthy server does not have: a query past the limit, a chain waiting past the limit."""
        found = ["pid %d active for %.1f s (%s)" % (q["pid"], q["query_seconds"], q["application_name"] or "-")
                 for q in snapshot["long_queries"]]
        conn = snapshot["connections"]
        if conn["ratio"] is not None and conn["ratio"] > self.max_connection_ratio:
            found.append("%d of max_connections %d in use, above max_connection_ratio %s" % (
                conn["total"], conn["max_connections"], self.max_connection_ratio))
        found += ["pid %d blocks %d session(s), the longest waiting %.1f s" % (
            c["root"]["pid"], c["waiting_count"], c["max_wait_seconds"])
            for c in snapshot["blocking"] if c["max_wait_seconds"] >= self.lock_wait_seconds]
        return found
