# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``stream_backlog``: seed 004's "Stream Processing Issues" on Redis streams with consumer groups.

Reads, per stream: its length, the group's pending count and lag, each consumer's pending entries and idle time,
and the dead-letter stream. A consumer is **stuck** when it holds a pending entry idle for ``claim_idle_seconds``
or more (it read the message and never acknowledged it: crashed, hung, or replaced by a new pod).

Repairs, each only when asked:

- ``claim``: the stuck consumers' pending entries go to the live consumers (``XCLAIM``, round robin), which read
  their own pending list and process them. A consumer named in ``forget`` (one its runtime replaced) is removed
  from the group (``XGROUP DELCONSUMER``) only once it holds nothing: deleting it sooner would lose its messages.
- ``requeue``: each dead-lettered entry goes back to its original stream at most ``max_requeues`` times; one that
  comes back again is **parked** (moved to the parking stream, with the reason) instead of looping. Each move is
  one ``MULTI``: added to the destination and deleted from the dead-letter stream, or neither. The requeue count is
  the larger of the entry's own ``requeues`` field and the collection's ledger (a hash under ``tradeops:streams:``,
  keyed by a digest of the message's own fields), so an application that drops the field cannot make a loop.
- ``drain_timeout``: the requeue passes repeat until every stream is drained (no stuck consumer, no pending entry
  older than 2 s, lag within ``max_lag``, the dead-letter stream empty) or the time is up.

What the dead-letter streams held is written to ``evidence_path`` (0600) before anything moves.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._evidence_file import write_private_json
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import number

LEDGER_PREFIX = "tradeops:streams:requeues:"
LEDGER_TTL = 7 * 24 * 3600
# what an application adds when it dead-letters a message: not part of the message itself
BOOKKEEPING = ("original_id", "original_stream", "error", "deliveries", "dead_lettered_at", "requeues",
               "parked_at", "parked_reason")
SETTLED_MS = 2000  # a pending entry younger than this is being processed, not stuck
PAGE = 100
SHOWN = 20  # dead-letter entries shown in the result (all of them go to the evidence)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fields(raw):
    return dict((_text(k), _text(v)) for k, v in (raw or {}).items())


def _id(stream_id):
    ms, _sep, seq = str(stream_id).partition("-")
    return int(ms), int(seq or 0)


def digest(fields):
    """The identity of a message across requeues: a digest of its own fields (not the bookkeeping)."""
    own = dict((k, v) for k, v in fields.items() if k not in BOOKKEEPING)
    return hashlib.sha256(json.dumps(own, sort_keys=True).encode("utf-8")).hexdigest()[:32]


class StreamSpec(object):
    __slots__ = ("name", "group", "dlq", "parked")

    def __init__(self, spec, index):
        where = "streams[%d]" % index
        if not isinstance(spec, dict):
            raise ValidationError("%s must be a dict with name and group, got %r" % (where, spec))
        unknown = sorted(set(spec) - set(self.__slots__))
        if unknown:
            raise ValidationError("%s: unknown option(s) %s (known: %s)" % (where, ", ".join(unknown),
                                                                            ", ".join(self.__slots__)))
        for key in ("name", "group"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise ValidationError("%s.%s is required (a stream and its consumer group)" % (where, key))
        self.name, self.group = spec["name"], spec["group"]
        self.dlq = spec.get("dlq") or None
        self.parked = spec.get("parked") or ("%s.parked" % self.dlq if self.dlq else None)
        if self.dlq and self.parked in (self.dlq, self.name):
            raise ValidationError("%s.parked must differ from the stream and its dead-letter stream" % where)


class StreamBacklogService(object):
    def __init__(self, params, check_mode=False):
        self.options = _redis.redis_options(params)
        streams = params.get("streams") or []
        if not streams:
            raise ValidationError("streams: name at least one stream and its group")
        self.streams = [StreamSpec(s, i) for i, s in enumerate(streams)]
        self.claim_idle_ms = int(1000 * number(params.get("claim_idle_seconds"), "claim_idle_seconds",
                                               minimum=0.5, default=30))
        self.claim = bool(params.get("claim"))
        self.forget = [str(c) for c in params.get("forget") or []]
        self.requeue = bool(params.get("requeue"))
        self.max_requeues = number(params.get("max_requeues"), "max_requeues", integer=True, minimum=0,
                                   maximum=100, default=1)
        self.max_lag = number(params.get("max_lag"), "max_lag", integer=True, minimum=0, default=1000)
        self.max_pending = number(params.get("max_pending"), "max_pending", integer=True, minimum=0, default=1000)
        self.drain_timeout = number(params.get("drain_timeout"), "drain_timeout", minimum=0, default=0)
        self.timeout = check_timeout(60 if params.get("timeout") is None else params["timeout"], "timeout", minimum=1)
        if self.drain_timeout >= self.timeout:
            raise ValidationError("drain_timeout (%s) must be shorter than timeout (%s)"
                                  % (self.drain_timeout, self.timeout))
        self.evidence_path = params.get("evidence_path")
        if self.evidence_path and not os.path.isdir(os.path.dirname(os.path.abspath(self.evidence_path))):
            raise ValidationError("evidence_path: the directory of %s does not exist" % self.evidence_path)
        self.check_mode = bool(check_mode)

    # -- reading -------------------------------------------------------------------------------------------

    def read(self, client, spec, entries=SHOWN):
        out = {"name": spec.name, "group": spec.group, "exists": bool(client.exists(spec.name)), "length": 0,
               "pending": 0, "lag": None, "consumers": [], "stuck": [], "live": [], "old_pending": 0,
               "dlq": None}
        if out["exists"]:
            out["length"] = int(client.xlen(spec.name))
            groups = dict((_text(g["name"]), g) for g in client.xinfo_groups(spec.name))
            group = groups.get(spec.group)
            out["group_exists"] = group is not None
            if group is not None:
                out["pending"] = int(group.get("pending") or 0)
                out["lag"] = None if group.get("lag") is None else int(group["lag"])
                for c in client.xinfo_consumers(spec.name, spec.group):
                    name = _text(c["name"])
                    row = {"name": name, "pending": int(c.get("pending") or 0), "idle_ms": int(c.get("idle") or 0),
                           "oldest_pending_idle_ms": None}
                    if row["pending"]:
                        oldest = client.xpending_range(spec.name, spec.group, "-", "+", 1, consumername=name)
                        row["oldest_pending_idle_ms"] = int(oldest[0]["time_since_delivered"]) if oldest else None
                    out["consumers"].append(row)
                old = client.xpending_range(spec.name, spec.group, "-", "+", PAGE, idle=SETTLED_MS)
                out["old_pending"] = len(old)
        stuck = [c for c in out["consumers"] if (c["oldest_pending_idle_ms"] or 0) >= self.claim_idle_ms]
        out["stuck"] = [c["name"] for c in stuck]
        out["live"] = [c["name"] for c in out["consumers"]
                       if c["name"] not in out["stuck"] and c["name"] not in self.forget
                       and c["idle_ms"] < self.claim_idle_ms]
        if spec.dlq:
            rows = client.xrange(spec.dlq, count=entries) if entries else []
            out["dlq"] = {"name": spec.dlq, "count": int(client.xlen(spec.dlq)),
                          "entries": [{"id": _text(i), "fields": _fields(f)} for i, f in rows]}
            out["parked"] = int(client.xlen(spec.parked))
        return out

    def problems(self, snap):
        found = []
        if not snap["exists"]:
            return ["%s does not exist" % snap["name"]]
        if not snap.get("group_exists"):
            return ["%s has no consumer group %s" % (snap["name"], snap["group"])]
        for name in snap["stuck"]:
            [c] = [c for c in snap["consumers"] if c["name"] == name]
            found.append("%s: consumer %s is stuck: %d pending, the oldest delivered %.0f s ago" % (
                snap["name"], name, c["pending"], c["oldest_pending_idle_ms"] / 1000.0))
        if not snap["live"]:
            found.append("%s: no live consumer in group %s" % (snap["name"], snap["group"]))
        if snap["pending"] > self.max_pending:
            found.append("%s: %d pending, above max_pending %d" % (snap["name"], snap["pending"], self.max_pending))
        if snap["lag"] is not None and snap["lag"] > self.max_lag:
            found.append("%s: lag %d, above max_lag %d" % (snap["name"], snap["lag"], self.max_lag))
        if snap["dlq"] and snap["dlq"]["count"]:
            found.append("%s: %d message(s) in %s" % (snap["name"], snap["dlq"]["count"], snap["dlq"]["name"]))
        return found

    def drained(self, snap):
        return (snap["exists"] and bool(snap.get("group_exists")) and not snap["stuck"] and not snap["old_pending"]
                and (snap["lag"] is None or snap["lag"] <= self.max_lag)
                and not (snap["dlq"] and snap["dlq"]["count"]))

    def settled(self, client, out):
        """Whether every message requeued so far was delivered and is pending nowhere (processed, or dead-lettered
        again: then the dead-letter stream is not empty and the next pass parks it)."""
        specs = dict((s.name, s) for s in self.streams)
        for row in out["requeued"]:
            spec = specs.get(row["to"])
            if row.get("settled") or spec is None:
                row["settled"] = True
                continue
            groups = dict((_text(g["name"]), g) for g in client.xinfo_groups(spec.name))
            last = _text((groups.get(spec.group) or {}).get("last-delivered-id")) or "0-0"
            delivered = _id(last) >= _id(row["new_id"])
            pending = client.xpending_range(spec.name, spec.group, row["new_id"], row["new_id"], 1)
            row["settled"] = delivered and not pending
        return all(r["settled"] for r in out["requeued"])

    # -- repairs -------------------------------------------------------------------------------------------

    def _claim(self, client, spec, snap, out):
        """The stuck consumers' entries idle past ``claim_idle_seconds``, and every entry of a consumer in ``forget``
        (its runtime replaced it: what it read last, however recently, will never be acknowledged)."""
        gone = [c["name"] for c in snap["consumers"] if c["name"] in self.forget and c["pending"]]
        sources = [(name, self.claim_idle_ms) for name in snap["stuck"] if name not in gone] + [(n, 0) for n in gone]
        if not sources:
            return
        if not snap["live"]:
            out["problems_before_claim"].append(
                "%s: nothing claimed - no live consumer to give the stuck consumers' messages to; start or scale "
                "the consumers first" % spec.name)
            return
        turn = 0
        for stuck, min_idle in sources:
            while True:
                rows = client.xpending_range(spec.name, spec.group, "-", "+", PAGE, consumername=stuck,
                                             idle=min_idle or None)
                if not rows:
                    break
                ids = [_text(r["message_id"]) for r in rows]
                if self.check_mode:
                    out["claimed"].append({"stream": spec.name, "from": stuck, "to": snap["live"][0],
                                           "count": len(ids), "would": True})
                    break
                to = snap["live"][turn % len(snap["live"])]
                turn += 1
                done = client.xclaim(spec.name, spec.group, to, min_idle, ids, justid=True)
                out["claimed"].append({"stream": spec.name, "from": stuck, "to": to, "count": len(done)})
                if not done:
                    break

    def _forget(self, client, spec, out):
        for name in self.forget:
            rows = [c for c in client.xinfo_consumers(spec.name, spec.group) if _text(c["name"]) == name]
            if not rows:
                continue
            if int(rows[0].get("pending") or 0):
                out["kept_consumers"].append({"stream": spec.name, "consumer": name,
                                              "pending": int(rows[0]["pending"]),
                                              "why": "it still holds messages; claim them first"})
                continue
            if not self.check_mode:
                client.xgroup_delconsumer(spec.name, spec.group, name)
            out["forgotten"].append({"stream": spec.name, "consumer": name})

    def _dlq_pass(self, client, spec, out):
        ledger = LEDGER_PREFIX + spec.dlq
        moved = 0
        for raw_id, raw in client.xrange(spec.dlq, count=PAGE):
            entry_id, fields = _text(raw_id), _fields(raw)
            key = digest(fields)
            seen = max(int(fields.get("requeues") or 0), int(_text(client.hget(ledger, key)) or 0))
            original = fields.get("original_stream") or spec.name
            message = dict((k, v) for k, v in fields.items() if k not in BOOKKEEPING)
            row = {"stream": spec.name, "dlq": spec.dlq, "id": entry_id, "requeues": seen,
                   "error": fields.get("error")}
            if seen < self.max_requeues:
                message["requeues"] = str(seen + 1)
                pipe = client.pipeline(transaction=True)
                pipe.xadd(original, message)
                pipe.xdel(spec.dlq, entry_id)
                pipe.hset(ledger, key, seen + 1)
                pipe.expire(ledger, LEDGER_TTL)
                new_id = pipe.execute()[0]
                out["requeued"].append(dict(row, to=original, new_id=_text(new_id)))
            else:
                parked = dict(fields, parked_at="%.3f" % time.time(),
                              parked_reason="dead-lettered again after %d requeue(s) (max_requeues %d)" % (
                                  seen, self.max_requeues))
                pipe = client.pipeline(transaction=True)
                pipe.xadd(spec.parked, parked)
                pipe.xdel(spec.dlq, entry_id)
                new_id = pipe.execute()[0]
                out["parked"].append(dict(row, to=spec.parked, new_id=_text(new_id)))
            moved += 1
        return moved

    def _would(self, client, spec, out):
        """Check mode: what one requeue pass would do."""
        ledger = LEDGER_PREFIX + spec.dlq
        for raw_id, raw in client.xrange(spec.dlq, count=PAGE):
            fields = _fields(raw)
            seen = max(int(fields.get("requeues") or 0), int(_text(client.hget(ledger, digest(fields))) or 0))
            kind = "requeued" if seen < self.max_requeues else "parked"
            out[kind].append({"stream": spec.name, "dlq": spec.dlq, "id": _text(raw_id), "requeues": seen,
                              "error": fields.get("error"), "would": True})

    # -- the call ------------------------------------------------------------------------------------------

    def run(self):
        deadline = Deadline(self.timeout)
        out = {"claimed": [], "requeued": [], "parked": [], "forgotten": [], "kept_consumers": [],
               "problems_before_claim": [], "evidence_path": None, "drained": None}

        def work(client):
            out["before"] = before = [self.read(client, s) for s in self.streams]
            acting = (self.claim or self.requeue or self.forget) and not self.check_mode
            if acting and self.evidence_path:
                dead = dict((s.dlq, [{"id": _text(i), "fields": _fields(f)} for i, f in client.xrange(s.dlq)])
                            for s in self.streams if s.dlq)
                out["evidence_path"] = write_private_json(
                    self.evidence_path, {"captured_at": time.time(), "server": self.options.describe(),
                                         "streams": before, "dead_letters": dead},
                    "nothing was claimed, requeued or parked")
            for spec, snap in [(s, before[i]) for i, s in enumerate(self.streams)]:
                if not (snap["exists"] and snap.get("group_exists")):
                    continue
                if self.claim:
                    self._claim(client, spec, snap, out)
                if self.check_mode and self.forget:
                    self._forget(client, spec, out)
                if self.check_mode and self.requeue and spec.dlq:
                    self._would(client, spec, out)
            if self.check_mode:
                return
            wait = deadline.sub(self.drain_timeout)
            while True:
                if self.requeue:
                    for spec in self.streams:
                        if spec.dlq:
                            self._dlq_pass(client, spec, out)
                # settled first, then the streams: a requeued message that fails again settles by moving to the
                # dead-letter stream, and the read after it must see it there (read before, it was seen nowhere)
                settled = self.settled(client, out)
                snaps = [self.read(client, s) for s in self.streams]
                out["drained"] = settled and all(self.drained(s) for s in snaps)
                if out["drained"] or wait.expired() or not self.drain_timeout:
                    break
                time.sleep(min(0.25, wait.remaining()))
            if self.forget:  # a claimed consumer holds nothing now
                for spec, snap in [(s, before[i]) for i, s in enumerate(self.streams)]:
                    if snap["exists"] and snap.get("group_exists"):
                        self._forget(client, spec, out)

        _redis.call(self.options, deadline, work, "stream_backlog")

        def final(client):
            return [self.read(client, s) for s in self.streams]

        out["streams"] = _redis.call(self.options, deadline.sub(10) if not deadline.expired() else Deadline(10),
                                     final, "stream_backlog")
        problems = []
        for snap in out["streams"]:
            problems.extend(self.problems(snap))
        out["problems"] = out["problems_before_claim"] + problems
        out["status"] = "NO-GO" if out["problems"] else "GO"
        out["changed"] = bool([c for c in out["claimed"] if c["count"]] or out["requeued"] or out["parked"]
                              or out["forgotten"])
        out["server"] = self.options.describe()
        return out
