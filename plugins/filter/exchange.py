# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""exchange_failure's probes and plan, one pass over the fleet in Python.

``venue_probes``: seed 003's exchange ping (``curl -w "Time: %{time_total}s, Status: %{http_code}"``) as one
health_check http probe per venue of ``tradeops_venues`` (its component is the venue's label).

``exchange_plan``: from the venues' probes and every engine's configuration (``engine_config``'s read):
``failover`` - the engines on the primary while it is down and the backup answers; ``orphans`` - the engines on the
backup while the primary answers again (what they left resting at the primary is live again: cancelled, whether or
not they fail back); ``failback`` - the same engines, moved back only with approval; ``backoff_on`` - the engines
whose venue calls are rate limited (a share of at least ``rate_limited_ratio`` of their recent calls, at least
``min_calls`` calls) and not in back-off yet; ``backoff_off`` - with ``restore``, the engines in back-off;
``auth_failed`` - the engines whose key the exchange refuses (seed 002); ``feed_stale`` - the engines whose market
data from the WebSocket feed is older than ``max_market_data_age`` seconds (seed 003 P2 "WebSocket Connection
Issues").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def venue_probes(venues, timeout=3, max_latency_ms=2000):
    if not isinstance(venues, dict) or not venues:
        raise AnsibleFilterError("venue_probes: tradeops_venues must map each venue (primary, backup) to its ping_url")
    probes = []
    for label, venue in sorted(venues.items()):
        if not (venue or {}).get("ping_url"):
            raise AnsibleFilterError("venue_probes: venue %s has no ping_url" % label)
        probes.append({"name": "venue-%s" % label, "component": label, "type": "http", "url": venue["ping_url"],
                       "timeout": float(timeout), "max_latency_ms": int(max_latency_ms), "severity": "critical"})
    return probes


def _venue_state(probe, label):
    mine = [p for p in (probe or {}).get("probes") or [] if p.get("component") == label]
    if not mine:
        return {"label": label, "status": "UNKNOWN", "latency_ms": None, "message": "not probed"}
    p = mine[0]
    return {"label": label, "status": p.get("status"), "latency_ms": p.get("latency_ms"),
            "message": p.get("message")}


def exchange_plan(probe, configs, rate_limited_ratio=0.2, min_calls=2, restore=False, max_market_data_age=5):
    try:
        ratio, least, max_age = float(rate_limited_ratio), int(min_calls), float(max_market_data_age)
    except (TypeError, ValueError):
        raise AnsibleFilterError("exchange_plan: rate_limited_ratio, min_calls and max_market_data_age must be numbers")
    primary, backup = _venue_state(probe, "primary"), _venue_state(probe, "backup")
    engines = []
    for row in (configs or {}).get("engines") or []:
        conf = row.get("before") or {}
        calls = conf.get("venue_calls") or {}
        feed = conf.get("market_data") or {}
        engines.append({"name": row.get("name"), "venue": conf.get("venue"), "backoff": bool(conf.get("backoff")),
                        "calls": int(calls.get("calls") or 0), "rate_limited": calls.get("rate_limited"),
                        "auth_failed": calls.get("auth_failed"),
                        "unavailable": calls.get("unavailable"), "error": row.get("error"),
                        "market_data_age_s": feed.get("age_s"), "feed": bool(feed.get("url"))})
    primary_up, backup_up = primary["status"] == "GO", backup["status"] == "GO"
    on_primary = [e["name"] for e in engines if e["venue"] == "primary"]
    on_backup = [e["name"] for e in engines if e["venue"] == "backup"]
    limited = [e["name"] for e in engines if not e["backoff"] and e["calls"] >= least
               and (e["rate_limited"] or 0) >= ratio]
    refused = [e["name"] for e in engines if e["calls"] >= least and (e["auth_failed"] or 0) >= ratio]
    return {
        "venues": {"primary": primary, "backup": backup},
        "engines": engines,
        "unreadable": [e["name"] for e in engines if e["error"]],
        "failover": on_primary if (not primary_up and backup_up) else [],
        "stranded": on_primary if (not primary_up and not backup_up) else [],
        "orphans": on_backup if primary_up else [],
        "failback": on_backup if primary_up else [],
        "backoff_on": limited,
        # seed 002: the exchange refuses the engine's key (expired or revoked): a new key, rotated
        "auth_failed": refused,
        "backoff_off": [e["name"] for e in engines if e["backoff"]] if restore else [],
        # seed 003 P2: market data from the WebSocket feed older than max_market_data_age (or none yet)
        "feed_stale": [e["name"] for e in engines if e["feed"]
                       and (e["market_data_age_s"] is None or e["market_data_age_s"] > max_age)],
        "healthy": primary_up and not on_backup and not limited and not refused
        and not any(e["error"] for e in engines)
        and not any(e["feed"] and (e["market_data_age_s"] is None or e["market_data_age_s"] > max_age)
                    for e in engines),
    }


def exchange_lines(plan):
    """One line per venue (seed 003's "Time: ..s, Status: .."), then what happens to the engines."""
    lines = []
    for label in ("primary", "backup"):
        v = (plan or {}).get("venues", {}).get(label) or {}
        lines.append("%s exchange: %s in %s ms - %s" % (label, v.get("status"), v.get("latency_ms"), v.get("message")))
    for key, what in (("failover", "fail over to the backup"), ("stranded", "NO venue answers: left to a person"),
                      ("orphans", "cancel what they left resting at the primary"),
                      ("failback", "fail back to the primary (with approval)"),
                      ("backoff_on", "rate limited: back-off and cached market data"),
                      ("backoff_off", "restore from back-off"),
                      ("auth_failed", "the exchange refuses their key: rotate it"),
                      ("feed_stale", "market data stale: restart the WebSocket feed")):
        names = (plan or {}).get(key) or []
        if names:
            lines.append("%s: %s" % (what, ", ".join(names)))
    return lines


def venue_key_rotations(engines, hostvars, issued, revoke, var="tradeops_venue_credential"):
    """rotate_secret's ``secrets`` for a key rotation of each engine (seed 002): its store (host var ``var``:
    ``store`` and ``test`` - the engine's check of a key, which makes a signed read-only call with it), the new
    credential ``issued`` by the exchange, written directly (the engine has one slot), tested, and the previous
    key revoked at the exchange (``revoke``) once the engine uses the new one, which must then refuse the old."""
    if not isinstance(issued, dict):
        raise AnsibleFilterError("venue_key_rotations: issued must map each engine to its new credential")
    items = []
    for name in engines or []:
        spec = (hostvars[name].get(var) if hasattr(hostvars[name], "get") else None) or {}
        new = (issued.get(name) or {}).get("credential")
        if not spec.get("store") or not spec.get("test"):
            raise AnsibleFilterError("venue_key_rotations: %s has no %s with store and test" % (name, var))
        if not new:
            raise AnsibleFilterError("venue_key_rotations: the exchange issued no key for %s" % name)
        test = dict(spec["test"], old_must_fail=True)
        items.append({"name": name, "store": dict(spec["store"]), "value": new, "staging": "direct",
                      "test": test, "revoke_previous": True, "revoke": dict(revoke or {})})
    return items


class FilterModule(object):
    def filters(self):
        return {"venue_probes": venue_probes, "exchange_plan": exchange_plan, "exchange_lines": exchange_lines,
                "venue_key_rotations": venue_key_rotations}
