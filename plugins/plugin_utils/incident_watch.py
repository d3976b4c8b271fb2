# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status watcher of an open incident: status updates on the seeds' cadence, escalation on no progress.

Started in the background by ``incident_notify`` after the initial alert, it lives as long as the
incident is open, across the end of the playbook (the approval wait is part of the incident):

- every ``status_every`` seconds it sends a status update, rendered from the record as it is then;
- when the record shows no progress for ``escalate_after`` seconds (seed 003: 15 min on a P0, 30 min on a
  P1) it escalates to the next level of the matrix, and again after each further such period;
- it stops when the incident is resolved (the record is closed), on SIGTERM (the resolution notice is
  about to go out: it finishes the send in progress first), or after ``max_seconds``.

Its configuration, channel secrets included, arrives on stdin and stays in its memory: nothing of it is
written to disk. Its pid is in ``<record>.watch.pid`` while it runs.

Run as ``python incident_watch.py`` (by :func:`start`); it imports the collection from the collections
directory it lives in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def pid_path(record_path):
    return record_path[:-len(".json")] + ".watch.pid"


def _alive(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return b"incident_watch" in fh.read()
    except OSError:
        return False


def running(record_path):
    """The pid of this record's watcher, if one runs."""
    try:
        with open(pid_path(record_path), encoding="utf-8") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def start(config):
    """Start the watcher for ``config['record_path']`` unless one runs; returns its pid."""
    pid = running(config["record_path"])
    if pid:
        return pid
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    proc.stdin.write(json.dumps(config).encode("utf-8"))
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not running(config["record_path"]) and proc.poll() is None:
        time.sleep(0.02)
    return proc.pid


def stop(record_path, wait=30.0):
    """Stop this record's watcher and wait for it: a send in progress finishes first. True if none is left."""
    pid = running(record_path)
    if not pid:
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return not _alive(pid)


def due_level(record, now, escalate_after):
    """The escalation level the time without progress calls for (0: none)."""
    if not escalate_after:
        return 0
    from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident
    quiet = incident.seconds_between(record.get("progress_at"), incident.iso(now)) or 0
    return int(quiet // escalate_after)


def escalate_if_due(record_path, config, send, now=None):
    """Escalate one level if the record shows no progress for long enough; returns the level sent, or None."""
    from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident
    levels = config.get("escalation") or []
    record = incident.load(record_path)
    level = record["escalation"]["level"]
    if record.get("closed_at") or level >= len(levels):
        return None
    if due_level(record, now or incident.utcnow(), config.get("escalate_after")) <= level:
        return None
    target = levels[level]

    def bump(rec):
        incident.escalate(rec, level + 1, target.get("name") or "level %d" % (level + 1),
                          [c.get("name") for c in target.get("channels") or []])
    record = incident.update(record_path, bump)[1]
    message = incident.message(record, "escalation", config.get("report_link"))
    result = send(message, target.get("channels") or [], concurrency=config.get("concurrency", 8))
    record_sent(record_path, "escalation", result)
    return level + 1


def record_sent(record_path, kind, result):
    from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident
    notifications = result.get("notifications") or []
    incident.update(record_path, lambda rec: incident.add_notifications(rec, kind, notifications))


def _last_sent(record):
    times = [n["at"] for n in record.get("notifications") or [] if n.get("kind") in ("initial", "status")]
    return max(times) if times else record.get("started_at")


def watch(config, send, stopping=lambda: False, clock=time.monotonic):
    from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident
    path = config["record_path"]
    every = config.get("status_every") or 0
    ends = clock() + float(config.get("max_seconds") or 86400)
    tick = max(0.05, min([x for x in (every, config.get("escalate_after")) if x] + [1.0]) / 4.0)
    attempted = None  # a status attempted with nothing recorded (no channel answered) still counts
    while not stopping() and clock() < ends:
        try:
            record = incident.load(path)
        except incident.RecordError:
            return "record gone"
        if record.get("closed_at"):
            return "resolved"
        now = incident.utcnow()
        last = max(x for x in (_last_sent(record), attempted) if x)
        if every and (incident.seconds_between(last, incident.iso(now)) or 0) >= every:
            attempted = incident.iso(now)
            message = incident.message(record, "status", config.get("report_link"))
            result = send(message, config.get("channels") or [], concurrency=config.get("concurrency", 8))
            record_sent(path, "status", result)
            continue
        if escalate_if_due(path, config, send, now) is not None:
            continue
        time.sleep(tick)
    return "stopped"


def main():
    config = json.loads(sys.stdin.read() or "{}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from ansible_collections.tradeops.remediation.plugins.module_utils import _notify

    path = config["record_path"]
    stop_flag = []
    signal.signal(signal.SIGTERM, lambda *_: stop_flag.append(True))
    fd = os.open(pid_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        watch(config, _notify.send, stopping=lambda: bool(stop_flag))
    finally:
        try:
            os.unlink(pid_path(path))
        except OSError:
            pass


if __name__ == "__main__":
    main()
