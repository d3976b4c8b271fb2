# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``redis_evict``: seed 004's Redis checks (``PING``, ``INFO memory``, ``INFO clients``) and, instead of its
``FLUSHALL``, the eviction of only the keys the inventory names as cache.

Keys are found with ``SCAN ... MATCH`` (never ``KEYS``), deleted with ``UNLINK`` in batches (freed off the main
thread), and a key that matches a ``protect`` pattern (the halt keys) is never deleted, whatever ``patterns`` says.
A database in ``databases`` is emptied key by key the same way, never with ``FLUSHDB``, so that its protected keys
stay. Afterwards the server must take a write again (a probe key set and deleted) and be under
``max_memory_ratio`` of its ``maxmemory``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch

from ansible_collections.tradeops.remediation.plugins.module_utils import _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError

# seed 003's global halt key and its per-engine keys (emergency_halt:<engine>), and the collection's own keys
DEFAULT_PROTECT = ["emergency_halt", "emergency_halt:*", "tradeops:*"]
BATCH = 500


def _matches(key, patterns):
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


class EvictService:
    """Reads memory and clients, evicts the named cache keys (never a protected one), proves a write."""

    def __init__(self, params, check_mode=False):
        self.options = _redis.redis_options(params)
        self.patterns = [str(p) for p in params.get("patterns") or []]
        self.databases = params.get("databases") or []
        for db in self.databases:
            if not isinstance(db, int) or db < 0:
                raise ValidationError("databases: expected database numbers, got %r" % (db,))
        if any(not p or p in ("*", "**") for p in self.patterns):
            raise ValidationError("patterns: %r would match every key (that is FLUSHALL); name the cache's own "
                                  "prefix, for example cache:*" % [p for p in self.patterns if p in ("", "*", "**")])
        self.protect = list(DEFAULT_PROTECT) + [str(p) for p in params.get("protect") or []]
        max_keys = params.get("max_keys")
        self.max_keys = 1000000 if max_keys is None else int(max_keys)
        if self.max_keys < 1:
            raise ValidationError("max_keys must be at least 1, got %r" % self.max_keys)
        ratio = params.get("max_memory_ratio", 0.9)
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValidationError("max_memory_ratio must be above 0 and at most 1, got %r" % (ratio,))
        self.max_memory_ratio = float(ratio)
        self.timeout = check_timeout(30 if params.get("timeout") is None else params["timeout"], "timeout", minimum=1)
        self.check_mode = bool(check_mode)

    @staticmethod
    def memory(client):
        info = client.info("memory")
        clients = client.info("clients")
        used, cap = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        return {"used_memory": used, "used_memory_human": info.get("used_memory_human"), "maxmemory": cap,
                "maxmemory_policy": info.get("maxmemory_policy"),
                "ratio": round(float(used) / cap, 4) if cap else None,
                "connected_clients": int(clients.get("connected_clients", 0)),
                "blocked_clients": int(clients.get("blocked_clients", 0))}

    def _evict(self, client, match, what, out):
        """Delete the keys ``match`` finds (a SCAN pattern) in the client's db, but never a protected one."""
        found = deleted = protected = 0
        batch = []
        for raw in client.scan_iter(match=match, count=1000):
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if _matches(key, self.protect):
                protected += 1
                continue
            found += 1
            if found > self.max_keys:
                out["truncated"] = True
                break
            batch.append(raw)
            if len(batch) >= BATCH and not self.check_mode:
                deleted += client.unlink(*batch)
                batch = []
        if batch and not self.check_mode:
            deleted += client.unlink(*batch)
        out["evicted"].append({"what": what, "matched": min(found, self.max_keys), "deleted": deleted,
                               "protected_kept": protected})

    def run(self):
        deadline = Deadline(self.timeout)
        out = {"evicted": [], "truncated": False}

        def work(client):
            out["before"] = self.memory(client)
            out["write_ok_before"], out["write_error_before"] = _redis.write_check(client)
            for pattern in self.patterns:
                self._evict(client, pattern, "db %d keys %s" % (self.options.db, pattern), out)
            for db in self.databases:
                options = _redis.RedisOptions(**dict((k, getattr(self.options, k)) for k in self.options.__slots__))
                options.db = db
                other = _redis.client(options, deadline.call_timeout(), "redis_evict")
                try:
                    self._evict(other, "*", "db %d, every key but the protected" % db, out)
                finally:
                    other.close()
            out["after"] = self.memory(client)
            out["write_ok"], out["write_error"] = _redis.write_check(client) if not self.check_mode else (
                out["write_ok_before"], out["write_error_before"])

        _redis.call(self.options, deadline, work, "redis_evict")
        out["deleted"] = sum(e["deleted"] for e in out["evicted"])
        out["would_delete"] = sum(e["matched"] for e in out["evicted"]) if self.check_mode else 0
        out["changed"] = out["deleted"] > 0 or out["would_delete"] > 0
        ratio = out["after"]["ratio"]
        problems = []
        if not out["write_ok"]:
            problems.append("Redis refuses writes: %s" % out["write_error"])
        if ratio is not None and ratio > self.max_memory_ratio:
            problems.append("used memory is %.0f%% of maxmemory, above max_memory_ratio %s" % (
                ratio * 100, self.max_memory_ratio))
        out["problems"] = problems
        out["status"] = "NO-GO" if problems else "GO"
        out["server"] = self.options.describe()
        return out
