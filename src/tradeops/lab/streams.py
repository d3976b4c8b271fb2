"""The lab's Redis streams (seed 004 "Stream Processing Issues"): a notification manager and the orchestrator's
command queue, consumed through consumer groups, with a dead-letter queue.

- ``notify.events`` (group ``notify``): the engines' events, one every ``interval`` seconds. Failed messages are
  retried from the consumer's own pending list; after ``MAX_DELIVERIES`` failures a message is dead-lettered to
  ``notify.events.dlq`` (its fields, plus ``original_id``, ``original_stream``, ``error``, ``deliveries``) and
  acknowledged.
- ``orchestrator.commands`` (group ``orchestrator``): the orchestrator's commands, one every 2 s.

A consumer reads its own pending list first (what it was given and did not acknowledge, including what was claimed
for it), then new messages. Consumers are named ``<group>-<n>``; a replaced consumer is stopped and a new one with
a new name takes its place, as a new pod or container would: what the old one held stays pending under its name
until someone claims it.

The ledger: every message carries a ``msg_id``; the lab counts what it produced and how many times each was
processed, so "no message lost or processed twice" is checked from outside (``GET /lab/streams``).

Faults (``POST /lab/streams``): ``stream-consumer-stuck`` - a consumer keeps reading and never acknowledges (its
pending list grows, nothing of it is processed); ``stream-poison`` - one message no consumer can ever process and
``transient`` messages that fail until they are requeued once (a downstream outage).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from .errors import LabInputError

log = logging.getLogger("tradeops.lab.streams")

NOTIFY_STREAM = "notify.events"
NOTIFY_GROUP = "notify"
NOTIFY_DLQ = "notify.events.dlq"
COMMANDS_STREAM = "orchestrator.commands"
COMMANDS_GROUP = "orchestrator"
STREAMS: dict[str, dict[str, Any]] = {
    NOTIFY_STREAM: {"group": NOTIFY_GROUP, "dlq": NOTIFY_DLQ, "interval": 0.5},
    COMMANDS_STREAM: {"group": COMMANDS_GROUP, "dlq": None, "interval": 2.0},
}
MAX_DELIVERIES = 3  # failures before a message is dead-lettered
RETRY_AFTER = 0.3  # seconds between retries of a failed message
FAULT_STUCK = "stream-consumer-stuck"
FAULT_POISON = "stream-poison"
STREAM_FAULTS = (FAULT_STUCK, FAULT_POISON)
BOOKKEEPING = ("original_id", "original_stream", "error", "deliveries", "dead_lettered_at")


class Consumer:
    """One consumer of a group: a task reading its pending list, then new messages."""

    def __init__(self, app: StreamsApp, stream: str, group: str, name: str) -> None:
        self.app, self.stream, self.group, self.name = app, stream, group, name
        self.stuck = False
        self.stopping = False
        self.failures: collections.Counter[str] = collections.Counter()
        self.retry_at: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"consumer {self.name}")

    async def stop(self) -> None:
        """Stop as a process does on SIGTERM: finish the read under way (what it delivered stays pending under
        this consumer's name), then exit; cancelled if it takes longer than 3 s."""
        self.stopping = True
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 3.0)
            except TimeoutError:
                self.task.cancel()
            except Exception:  # noqa: BLE001 - stopping; its error was logged
                pass
            self.task = None

    async def _run(self) -> None:
        redis = self.app.redis
        while not self.stopping:
            try:
                if self.stuck:  # reads and never acknowledges: its pending list grows
                    await redis.xreadgroup(self.group, self.name, {self.stream: ">"}, count=10, block=500)
                    continue
                own = await redis.xreadgroup(self.group, self.name, {self.stream: "0"}, count=50)
                now = time.monotonic()
                due = [(i, f) for _s, entries in own for i, f in entries if self.retry_at.get(i, 0.0) <= now]
                for msg_id, fields in due:
                    await self._handle(msg_id, fields)
                fresh = await redis.xreadgroup(self.group, self.name, {self.stream: ">"}, count=50,
                                               block=200 if not due else None)
                for _s, entries in fresh:
                    for msg_id, fields in entries:
                        await self._handle(msg_id, fields)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty (the lab keeps it in memory): the group again
                    await self.app.ensure_group(self.stream)
                else:
                    log.warning("consumer %s: %s", self.name, exc)
                    await asyncio.sleep(0.5)
            except Exception:
                log.exception("consumer %s failed", self.name)
                await asyncio.sleep(0.5)

    async def _handle(self, msg_id: str, fields: Mapping[str, str] | None) -> None:
        redis = self.app.redis
        if not fields:  # deleted while pending: nothing to process
            await redis.xack(self.stream, self.group, msg_id)
            return
        error = self.app.failure(fields)
        if error is None:
            self.app.processed[fields.get("msg_id", msg_id)] += 1
            await redis.xack(self.stream, self.group, msg_id)
            self.failures.pop(msg_id, None)
            self.retry_at.pop(msg_id, None)
            return
        self.failures[msg_id] += 1
        self.retry_at[msg_id] = time.monotonic() + RETRY_AFTER
        dlq = STREAMS[self.stream]["dlq"]
        if self.failures[msg_id] < MAX_DELIVERIES or not dlq:
            return
        entry = {k: v for k, v in fields.items() if k not in BOOKKEEPING}
        entry.update(original_id=msg_id, original_stream=self.stream, error=error,
                     deliveries=str(self.failures[msg_id]), dead_lettered_at=f"{time.time():.3f}")
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(dlq, entry)
        pipe.xack(self.stream, self.group, msg_id)
        await pipe.execute()
        self.failures.pop(msg_id, None)
        self.retry_at.pop(msg_id, None)
        log.warning("consumer %s: %s dead-lettered to %s after %d failures: %s", self.name, msg_id, dlq,
                    MAX_DELIVERIES, error)


class StreamsApp:
    """The producers, the consumers of each group, the ledger and the stream faults."""

    def __init__(self, rc: Mapping[str, Any], consumers: int = 1, timeout: float = 5.0) -> None:
        self.redis = aioredis.Redis(host=rc["host"], port=int(rc["port"]), db=int(rc.get("db", 0)),
                                    password=rc["password"], decode_responses=True, socket_timeout=timeout,
                                    socket_connect_timeout=timeout)
        self.paused = False
        self.initial = consumers
        self.consumers: dict[str, list[Consumer]] = {s: [] for s in STREAMS}
        self.serial: collections.Counter[str] = collections.Counter()
        self.produced: dict[str, str] = {}  # msg_id -> stream
        self.processed: collections.Counter[str] = collections.Counter()
        self.poison: set[str] = set()
        self._producers: list[asyncio.Task[None]] = []
        self._seq = 0

    async def ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, STREAMS[stream]["group"], id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def start(self) -> None:
        for stream, spec in STREAMS.items():
            await self.ensure_group(stream)
            await self.scale(stream, self.initial)
            self._producers.append(asyncio.create_task(self._produce(stream, spec["interval"]),
                                                       name=f"producer {stream}"))

    async def close(self) -> None:
        for task in self._producers:
            task.cancel()
        for stream in STREAMS:
            for consumer in self.consumers[stream]:
                await consumer.stop()
        try:
            await getattr(self.redis, "aclose", self.redis.close)()
        except (RedisError, OSError):
            pass

    # -- producing -----------------------------------------------------------------------------------------

    async def publish(self, stream: str, fields: dict[str, str]) -> str:
        self._seq += 1
        msg_id = f"{stream}:{self._seq}:{uuid.uuid4().hex[:8]}"
        await self.redis.xadd(stream, {"msg_id": msg_id, **fields})
        self.produced[msg_id] = stream
        return msg_id

    async def _produce(self, stream: str, interval: float) -> None:
        kind = "order_summary" if stream == NOTIFY_STREAM else "rebalance"
        while True:
            try:
                if not self.paused:
                    await self.publish(stream, {"kind": kind, "at": f"{time.time():.3f}"})
            except (RedisError, OSError) as exc:
                log.warning("producer %s: %s", stream, exc)
            await asyncio.sleep(interval)

    @staticmethod
    def failure(fields: Mapping[str, str]) -> str | None:
        """Why processing ``fields`` fails, or None: a poison message always fails; a transient one fails until
        it has been requeued once."""
        if fields.get("poison") == "1":
            return "cannot render the notification: template field 'account' is missing"
        if fields.get("transient") == "1" and int(fields.get("requeues") or 0) < 1:
            return "notification channel unavailable (HTTP 503)"
        return None

    # -- consumers -----------------------------------------------------------------------------------------

    def _stream(self, stream: Any) -> str:
        if stream not in STREAMS:
            raise LabInputError(f"unknown stream {stream!r} (the lab's streams: {', '.join(STREAMS)})")
        return str(stream)

    async def scale(self, stream: str, count: int, replace: list[str] | None = None) -> dict[str, Any]:
        """Stop the consumers named in ``replace`` (what they hold stays pending under their name) and run
        ``count`` consumers, new ones under new names (``<group>-<n>``)."""
        stream = self._stream(stream)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 16:
            raise LabInputError(f"count must be between 1 and 16, got {count!r}")
        group = STREAMS[stream]["group"]
        running = self.consumers[stream]
        unknown = [n for n in replace or [] if n not in {c.name for c in running}]
        if unknown:
            raise LabInputError(f"no running consumer {', '.join(unknown)} of {stream}")
        stopped = [c for c in running if c.name in (replace or [])]
        for consumer in stopped:
            await consumer.stop()
        running = [c for c in running if c not in stopped]
        while len(running) > count:
            await running.pop().stop()
        while len(running) < count:
            self.serial[stream] += 1
            consumer = Consumer(self, stream, group, f"{group}-{self.serial[stream]}")
            consumer.start()
            running.append(consumer)
        self.consumers[stream] = running
        return {"stream": stream, "group": group, "consumers": [c.name for c in running],
                "stopped": [c.name for c in stopped]}

    # -- faults and the ledger -----------------------------------------------------------------------------

    def pause(self, paused: Any) -> dict[str, Any]:
        """Stop (or restart) the producers: a count in = count out needs an end."""
        if not isinstance(paused, bool):
            raise LabInputError("'paused' must be true or false")
        self.paused = paused
        return {"paused": self.paused}

    async def fault(self, body: Mapping[str, Any]) -> dict[str, Any]:
        fault, clear = body.get("fault"), body.get("clear", False)
        if fault not in STREAM_FAULTS or not isinstance(clear, bool):
            raise LabInputError(f"unknown stream fault {fault!r} (known: {', '.join(STREAM_FAULTS)})")
        if fault == FAULT_STUCK:
            running = self.consumers[NOTIFY_STREAM]
            name = body.get("consumer") or (running[0].name if running else None)
            [consumer] = [c for c in running if c.name == name] or [None]
            if consumer is None:
                raise LabInputError(f"no running consumer {name!r} of {NOTIFY_STREAM}")
            consumer.stuck = not clear
            return {"fault": fault, "consumer": consumer.name, "stuck": consumer.stuck}
        if clear:
            return {"fault": fault, "cleared": True}
        transient = body.get("transient", 3)
        if isinstance(transient, bool) or not isinstance(transient, int) or not 0 <= transient <= 100:
            raise LabInputError("transient must be between 0 and 100")
        poison = await self.publish(NOTIFY_STREAM, {"kind": "fill_notice", "poison": "1"})
        self.poison.add(poison)
        flaky = [await self.publish(NOTIFY_STREAM, {"kind": "fill_notice", "transient": "1"})
                 for _ in range(transient)]
        return {"fault": fault, "poison": [poison], "transient": flaky}

    # -- seed 004's admin API: GET /admin/streams/pending, GET /admin/streams/dlq, POST /admin/streams/dlq/requeue

    async def pending(self, stream: Any, group: Any) -> dict[str, Any]:
        stream = self._stream(stream)
        if group != STREAMS[stream]["group"]:
            raise LabInputError(f"{stream} is consumed by the group {STREAMS[stream]['group']!r}, not {group!r}")
        summary = await self.redis.xpending(stream, group)
        groups = {g["name"]: g for g in await self.redis.xinfo_groups(stream)}
        consumers = await self.redis.xinfo_consumers(stream, group)
        return {"stream": stream, "group": group, "pending": int(summary["pending"]),
                "lag": groups.get(group, {}).get("lag"),
                "oldest": summary.get("min"), "newest": summary.get("max"),
                "consumers": [{"name": c["name"], "pending": int(c["pending"]), "idleMs": int(c["idle"])}
                              for c in consumers]}

    async def dlq(self, dlq: Any, count: int = 100) -> dict[str, Any]:
        if dlq not in {s["dlq"] for s in STREAMS.values() if s["dlq"]}:
            raise LabInputError(f"unknown dead-letter stream {dlq!r}")
        entries = await self.redis.xrange(dlq, count=count)
        return {"stream": dlq, "count": int(await self.redis.xlen(dlq)),
                "entries": [{"id": i, "fields": f} for i, f in entries]}

    async def requeue(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"dlqStream", "id"}``: the entry back on its original stream (its ``requeues`` counted), and off the
        dead-letter stream, in one transaction."""
        dlq, entry_id = body.get("dlqStream"), body.get("id")
        if not isinstance(dlq, str) or not isinstance(entry_id, str):
            raise LabInputError("'dlqStream' and 'id' are required strings")
        found = await self.redis.xrange(dlq, min=entry_id, max=entry_id)
        if not found:
            raise LabInputError(f"no entry {entry_id} in {dlq}")
        fields = dict(found[0][1])
        original = self._stream(fields.get("original_stream"))
        message = {k: v for k, v in fields.items() if k not in BOOKKEEPING}
        message["requeues"] = str(int(message.get("requeues") or 0) + 1)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(original, message)
        pipe.xdel(dlq, entry_id)
        new_id, _deleted = await pipe.execute()
        return {"requeued": entry_id, "stream": original, "newId": new_id, "requeues": int(message["requeues"])}

    def ledger(self) -> dict[str, Any]:
        """What was produced and how many times each message was processed, per stream."""
        out: dict[str, Any] = {}
        for stream in STREAMS:
            ids = [m for m, s in self.produced.items() if s == stream]
            out[stream] = {
                "produced": len(ids),
                "processed": sum(1 for m in ids if self.processed[m]),
                "twice": sorted(m for m in ids if self.processed[m] > 1),
                "unprocessed": sorted(m for m in ids if not self.processed[m]),
                "poison": sorted(m for m in ids if m in self.poison),
                "consumers": [c.name for c in self.consumers[stream]],
                "stuck": [c.name for c in self.consumers[stream] if c.stuck],
            }
        return out
