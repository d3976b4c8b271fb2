# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""db_connectivity's plan: what is wrong with each datastore, what to restart, what to terminate or evict, and
which engines must stop trading meanwhile. One pass over the fleet, in Python.

Each datastore host (its ``tradeops_datastore.kind``: postgres, pgbouncer - a connection pooler in front of
PostgreSQL - or redis) gets a state: ``down`` (its probe cannot
connect), ``sessions`` (PostgreSQL up with long queries, lock waits past the threshold or too many connections,
from pg_sessions), ``oom`` (Redis answers but refuses writes or is past its memory ratio, from redis_evict),
``degraded`` (its probe is NO-GO for another reason: not repaired automatically), ``behind`` (a pooler NO-GO
while its PostgreSQL is down: not restarted, it must serve a write once PostgreSQL is back), else ``ok``.

``contain``: the engines that must not trade meanwhile: every engine when PostgreSQL or its pooler is down (they
cannot record their orders), and the engines whose kill switch holds a halt in Redis when Redis is down (a Redis restarted empty
would let them trade before the gated resume).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

KINDS = ("postgres", "pgbouncer", "redis")
# the engines record their orders through these: one of them down and no engine may trade
ORDER_PATH = ("postgres", "pgbouncer")


def _kind(hostvars, host):
    store = (hostvars[host].get("tradeops_datastore") if hasattr(hostvars[host], "get") else None) or {}
    kind = store.get("kind")
    if kind not in KINDS:
        raise AnsibleFilterError("datastore_plan: host %s has no tradeops_datastore.kind (%s)" % (host, ", ".join(KINDS)))
    return kind


def _probe_state(results, host):
    mine = [p for p in (results or {}).get("probes") or [] if p.get("component") == host]
    if not mine:
        return "unknown", "no probe of %s ran" % host
    bad = [p for p in mine if p.get("status") == "NO-GO"]
    if not bad:
        return "ok", "; ".join(p.get("message") or "" for p in mine)
    message = "; ".join(p.get("message") or "" for p in bad)
    lowered = message.lower()
    if any(word in lowered for word in ("refused", "could not connect", "connection to server", "error 111",
                                        "timed out", "no connection", "connecting to", "name or service")):
        return "down", message
    if "maxmemory" in lowered or "oom" in lowered:
        return "oom", message
    return "degraded", message


def _redis_engines(engines, hostvars, halt_var):
    found = []
    for name in engines or []:
        target = (hostvars[name].get(halt_var) if hasattr(hostvars[name], "get") else None) or {}
        if any((m or {}).get("type") == "redis" for m in target.get("methods") or []):
            found.append(name)
    return found


def datastore_plan(hosts, hostvars, probe, sessions=None, redis=None, engines=None, halt_var="halt_trading_target"):
    stores = {}
    for host in hosts or []:
        kind = _kind(hostvars, host)
        state, detail = _probe_state(probe, host)
        if kind == "postgres" and state == "ok" and sessions and sessions.get("status") == "NO-GO":
            state, detail = "sessions", "; ".join(sessions.get("problems") or [])
        if kind == "redis" and state in ("ok", "degraded") and redis and redis.get("status") == "NO-GO":
            state, detail = "oom", "; ".join(redis.get("problems") or [])
        stores[host] = {"host": host, "kind": kind, "state": state, "detail": detail}
    postgres_down = any(s["kind"] == "postgres" and s["state"] == "down" for s in stores.values())
    for store in stores.values():
        # a pooler cannot serve while its PostgreSQL is down: it follows PostgreSQL's restart, proven afterwards
        if postgres_down and store["kind"] == "pgbouncer" and store["state"] in ("degraded", "unknown"):
            store["state"] = "behind"
    down = [h for h, s in stores.items() if s["state"] == "down"]
    contain = []
    if any(stores[h]["kind"] in ORDER_PATH for h in down):
        contain = list(engines or [])
    elif any(stores[h]["kind"] == "redis" for h in down):
        contain = _redis_engines(engines, hostvars, halt_var)
    return {
        "datastores": [stores[h] for h in hosts or []],
        "restart": down,
        "contain": contain,
        "terminate_sessions": [h for h, s in stores.items() if s["state"] == "sessions"],
        "evict": [h for h, s in stores.items() if s["state"] == "oom"],
        "degraded": [h for h, s in stores.items() if s["state"] in ("degraded", "unknown")],
        "behind": [h for h, s in stores.items() if s["state"] == "behind"],
        "postgres_down": postgres_down,
        "healthy": all(s["state"] == "ok" for s in stores.values()),
    }


_ACTIONS = {
    "down": "restart it with its runtime, then prove a write",
    "sessions": "capture the sessions, then terminate the long queries and root blockers past their thresholds",
    "oom": "evict the cache keys the inventory names (never FLUSHALL, never the halt keys), then prove a write",
    "degraded": "NOT repaired automatically: a person diagnoses it",
    "unknown": "NOT repaired automatically: it could not be probed",
    "behind": "its PostgreSQL is down: it must serve a write again once PostgreSQL is restarted",
    "ok": "healthy, left alone",
}


def datastore_lines(plan):
    """One line per datastore and one for the engines contained, for the on-call engineer."""
    lines = ["%s (%s): %s - %s. %s" % (s["host"], s["kind"], s["state"].upper(), s["detail"] or "-",
                                       _ACTIONS[s["state"]]) for s in (plan or {}).get("datastores") or []]
    contain = (plan or {}).get("contain") or []
    lines.append("engines halted meanwhile: %s" % (", ".join(contain) if contain else "none"))
    return lines


class FilterModule(object):
    def filters(self):
        return {"datastore_plan": datastore_plan, "datastore_lines": datastore_lines}
