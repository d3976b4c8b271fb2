"""Live progress of a run, by phase and by host: rich on a terminal, plain lines otherwise.

Both renderers are ansible-runner event handlers (they take the redacted events that
:func:`tradeops.runner.run_incident` hands out) and never let an exception escape into the run.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import IO, Any

from .result import HALT_ACTION, HEALTH_ACTION, NOISE_ACTIONS, IncidentResult, phase_of


def _clock(event: Mapping[str, Any]) -> str:
    created = str(event.get("created") or "")
    if "T" in created:
        return created.split("T", 1)[1][:8]
    return time.strftime("%H:%M:%S")


def halt_line(res: Mapping[str, Any]) -> str:
    done = "resumed" if res.get("state") == "resumed" else "halted"
    parts = [f"{done} {len(res.get(done) or [])}", f"already {len(res.get('already_' + done) or [])}"]
    for key, label in (("failed_targets", "failed"), ("unverified", "unverified")):
        names = res.get(key) or []
        parts.append(f"{label} {len(names)}" + (f" ({', '.join(names)})" if names else ""))
    elapsed = res.get("elapsed_ms")
    return "kill switch: " + ", ".join(parts) + (f" in {elapsed} ms" if elapsed is not None else "")


def health_line(res: Mapping[str, Any]) -> str:
    status = res.get("status")
    nogo = res.get("nogo") or []
    return f"health: {status}" + (f", NO-GO: {', '.join(nogo)}" if nogo else "") + \
        (f" (after {res.get('elapsed_ms')} ms)" if res.get("elapsed_ms") is not None else "")


def notes(event: Mapping[str, Any]) -> list[str]:
    """The one-line facts worth showing for a result event: kill-switch and health summaries, failures."""
    data = event.get("event_data") or {}
    res = data.get("res") or {}
    action = str(data.get("resolved_action") or data.get("task_action") or "")
    out = []
    if action == HALT_ACTION and isinstance(res.get("targets"), list):
        out.append(halt_line(res))
    if action == HEALTH_ACTION and "status" in res:
        out.append(health_line(res))
    if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
        msg = " ".join(str(res.get("msg") or res.get("stderr") or "").split())
        out.append("FAILED: " + (msg[:400] + ("..." if len(msg) > 400 else "")))
    return out


class PlainProgress:
    """One line per phase and per task result (skipped and argument-validation results left out)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.phase: str | None = None

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: dict[str, Any]) -> bool:
        try:
            self._handle(event)
        except Exception:  # pragma: no cover - progress must never break the run
            pass
        return True

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        tag = event.get("tradeops") or {}
        if kind == "playbook_on_play_start":
            phase = phase_of(data.get("play") or data.get("name"))
            if phase == self.phase:  # the next serial batch of the same play
                return
            self.phase = phase
            self._say(f"[{_clock(event)}] phase {phase}: {data.get('play') or data.get('name')}")
            return
        result = tag.get("result")
        if not result or result == "skipped" or tag.get("action") in NOISE_ACTIONS:
            return
        host = data.get("host") or "-"
        self._say(f"[{_clock(event)}]   {tag.get('phase') or self.phase or '-':<9} {host:<16} {result:<11} "
                  f"{data.get('task') or ''}")
        for note in notes(event):
            self._say(f"{'':13}{note}")

    def close(self) -> None:
        pass


class RichProgress:
    """A live view: the phases (state, tasks, time) and the hosts (ok / changed / failed, last task), with the
    kill-switch, health and failure lines printed above it as they happen."""

    def __init__(self, console: Any = None, title: str = "") -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.title = title
        self.phases: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.hosts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.current: str | None = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        phases = Table(title=self.title or None, box=None, pad_edge=False, show_edge=False)
        for col in ("phase", "state", "tasks", "failed", "time"):
            phases.add_column(col)
        now = time.monotonic()
        for name, p in self.phases.items():
            end = p["end"] or now
            state = p["state"]
            style = {"failed": "red", "done": "green", "running": "yellow"}.get(state)
            phases.add_row(name, state, str(p["tasks"]), str(p["failed"]), f"{end - p['start']:.1f}s", style=style)
        hosts = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("host", "ok", "changed", "failed", "last"):
            hosts.add_column(col)
        for name, h in list(self.hosts.items())[-30:]:
            hosts.add_row(name, str(h["ok"]), str(h["changed"]), str(h["failed"]), h["last"][:70],
                          style="red" if h["failed"] else None)
        return Group(phases, hosts)

    def __call__(self, event: dict[str, Any]) -> bool:
        try:
            self._handle(event)
        except Exception:  # pragma: no cover
            pass
        return True

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        tag = event.get("tradeops") or {}
        if kind == "playbook_on_play_start":
            phase = phase_of(data.get("play") or data.get("name"))
            if self.current and self.current != phase and self.phases[self.current]["state"] == "running":
                self.phases[self.current]["state"] = "done"
                self.phases[self.current]["end"] = time.monotonic()
            self.current = phase
            self.phases.setdefault(phase, {"state": "running", "tasks": 0, "failed": 0, "start": time.monotonic(),
                                           "end": None})
            self.live.console.print(f"[bold]phase {phase}[/bold]: {data.get('play') or ''}", highlight=False)
        result = tag.get("result")
        if result and result != "skipped" and tag.get("action") not in NOISE_ACTIONS:
            phase = tag.get("phase") or self.current or "-"
            p = self.phases.setdefault(phase, {"state": "running", "tasks": 0, "failed": 0,
                                               "start": time.monotonic(), "end": None})
            p["tasks"] += 1
            host = data.get("host") or "-"
            h = self.hosts.setdefault(host, {"ok": 0, "changed": 0, "failed": 0, "last": ""})
            if result in ("failed", "unreachable"):
                h["failed"] += 1
                p["failed"] += 1
                p["state"] = "failed"
            elif result == "changed":
                h["changed"] += 1
            else:
                h["ok"] += 1
            h["last"] = f"{result}: {data.get('task') or ''}"
            for note in notes(event):
                style = "red" if note.startswith("FAILED") or "NO-GO" in note else None
                self.live.console.print(f"  {phase:<9} {host:<16} {note}", style=style, highlight=False)
        self.live.update(self._render())

    def close(self) -> None:
        if self.current and self.phases[self.current]["state"] == "running":
            self.phases[self.current]["state"] = "done"
            self.phases[self.current]["end"] = time.monotonic()
        self.live.update(self._render())
        self.live.stop()


def summary_lines(result: IncidentResult) -> list[str]:
    """The closing summary of a run, for a terminal or a log."""

    def names(items: list[str]) -> str:
        return ", ".join(items) if items else "none"

    engines = sorted({*result.halted, *result.not_halted, *result.resumed})
    lines = [f"{result.incident} run {result.run_id}: {result.verdict}"]
    lines.append(f"  status {result.status}, ansible rc {result.rc}, {result.elapsed_s}s"
                 + (" (check mode)" if result.check else "") + (" via transmit|worker|process" if result.via_worker
                                                                else ""))
    if engines:
        lines.append(f"  halted (verified): {len(result.halted)}/{len(engines)}"
                     + (f"; NOT verified halted: {names(result.not_halted)}" if result.not_halted else ""))
        if result.contained and result.contained != result.halted:
            left = sorted(set(engines) - set(result.contained))
            lines.append(f"  contained by the first halt: {len(result.contained)}; left to repair: {names(left)}")
    by_hold: dict[str, list[str]] = {}
    for engine, hold in sorted(result.halt_holds.items()):
        by_hold.setdefault(hold, []).append(engine)
    for hold, held in sorted(by_hold.items()):
        lines.append(f"  halt held by {hold}: {names(held)}")
    if result.resumed:
        lines.append(f"  resumed (verified): {names(result.resumed)}")
    if result.restarted or result.still_nogo:
        lines.append(f"  repair: restarted {names(result.restarted)}; recovered {names(result.recovered)}; "
                     f"not recovered {names(result.not_recovered)}")
    lines.append(f"  still NO-GO: {names(result.still_nogo)}; health gate: {result.health_gate or 'not run'}"
                 + ("; trading halted, awaiting approval to resume" if result.awaiting_approval else ""))
    for f in result.failures[:10]:
        lines.append(f"  failed: [{f.phase}] {f.host}: {f.task}: {f.message[:300]}")
    for w in result.warnings[:5]:
        lines.append(f"  warning: {w[:300]}")
    if result.report_markdown_path or result.report_path:
        lines.append(f"  report: {result.report_markdown_path or result.report_path}")
    elif not result.check and result.outcome != "bad_input":
        lines.append("  report: none (the playbook's report phase did not run)")
    lines.append(f"  artifacts: {result.artifacts_path}")
    lines.append(f"  exit code {result.exit_code} ({result.outcome})")
    return lines
