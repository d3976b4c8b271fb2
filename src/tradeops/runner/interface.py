"""Run incident playbooks through ansible-runner: the tradeops runner API.

Modelled on ``ansible_runner.interface``: keyword-argument functions that return a result object
(:func:`run_incident` -> :class:`~tradeops.runner.result.IncidentResult`), an async variant that returns
``(thread, handle)`` (:func:`run_incident_async`), one exception family (:mod:`tradeops.runner.exceptions`),
and a logger with a NullHandler.

Each run gets its own private data dir ``<runs_dir>/<run_id>/`` (``runs_dir``: the argument, else
``$TRADEOPS_RUNS_DIR``, else ``<checkout>/runs``)::

    <run_id>/env/extravars              the non-secret extra vars (0600)
    <run_id>/artifacts/<run_id>/        ansible-runner's artifacts: job_events/ (redacted), stdout (written
                                        from the redacted events), command (allow-listed environment), rc, status
    incidents/<incident id>.json, .md   the incident record and its post-mortem draft (shared by the runs of
                                        one incident: its resume run feeds the same record)
    <run_id>/evidence/                  the evidence archives
    <run_id>/result.json                the IncidentResult (``tradeops report <run_id>`` reads it)
    <run_id>/.tradeops-run              the marker of a run directory this tool created

``rotate_artifacts`` keeps the newest N run directories this tool created (default 50; 0 keeps all). See
:mod:`tradeops.runner.secrets` for what keeps secrets out of all of it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets as _secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .catalog import Incident, find_project_dir, get_incident
from .exceptions import (
    IncidentInputError,
    RunnerConfigurationError,
    RunnerError,
    RunnerExecutionError,
    RunNotFoundError,
)
from .record import model as record_model
from .result import IncidentResult, collect, now_iso, phase_of, result_of, summarize
from .result import _bad_input as bad_input_of
from .secrets import MASK, Redactor, SecretFiles, child_env, looks_secret, split_extravars, unwrap, yaml_unsafe

logger = logging.getLogger("tradeops.runner")
logger.addHandler(logging.NullHandler())

ENV_RUNS_DIR = "TRADEOPS_RUNS_DIR"
DEFAULT_ROTATE = 50
RESULT_FILE = "result.json"
# Written when this tool creates a run directory: rotation deletes only directories that hold it.
RUN_MARKER = ".tradeops-run"
# <runs_dir>/incidents/<incident id>.json (+ .md): the incident records, shared by the runs of one incident
INCIDENTS_DIR = "incidents"
MAX_TIMEOUT = 7 * 24 * 3600
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EventHandler = Callable[[dict[str, Any]], Any]
StatusHandler = Callable[[str], Any]
# What a worker ("execution node") needs of the checkout to run the collection's playbooks.
PROJECT_CONTENT = ("ansible.cfg", "galaxy.yml", "meta", "playbooks", "roles", "plugins", "inventories", "collections")


def default_runs_dir(project_dir: str | os.PathLike[str] | None = None) -> Path:
    env = os.environ.get(ENV_RUNS_DIR)
    if env:
        return Path(env).expanduser().resolve()
    return find_project_dir(project_dir) / "runs"


def new_run_id(incident: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{incident}-{stamp}-{_secrets.token_hex(3)}"


class RunHandle:
    """A run in progress (from :func:`run_incident_async`): cancel it, wait for it, read its result."""

    def __init__(self, run_id: str, run_dir: Path, incident: Incident) -> None:
        self.run_id = run_id
        self.run_dir = run_dir
        self.incident = incident
        self.status = "unstarted"
        self.result: IncidentResult | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def canceled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the run: ansible-playbook is killed (its process group); the result says ``canceled``."""
        logger.info("run %s: cancel requested", self.run_id)
        self._cancel.set()
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    def wait(self, timeout: float | None = None) -> IncidentResult | None:
        """Block until the run ends (or ``timeout``); returns its result (raises what the run raised)."""
        if not self._done.wait(timeout):
            return None
        if self.error is not None:
            raise self.error
        return self.result

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.status}>"


@dataclass
class _Job:
    incident: Incident
    project_dir: Path
    run_id: str
    run_dir: Path
    runs_dir: Path
    inventory: list[str] | None
    plain_vars: dict[str, Any]
    secret_vars: dict[str, Any]
    secret_env: dict[str, str]
    env: dict[str, str]
    limit: str | None
    check: bool
    tags: str | None
    skip_tags: str | None
    verbosity: int | None
    forks: int | None
    timeout: int | None
    rotate: int
    via_worker: bool
    redactor: Redactor
    event_handler: EventHandler | None
    status_handler: StatusHandler | None
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    started_at: str = ""


def _check_extravars(extravars: Mapping[str, Any] | None) -> dict[str, Any]:
    if extravars is None:
        return {}
    if not isinstance(extravars, Mapping):
        raise IncidentInputError(f"extravars must be a mapping, not {type(extravars).__name__}")
    for key in extravars:
        if not isinstance(key, str) or not key.isidentifier():
            raise IncidentInputError(f"extra var name {key!r} is not a valid variable name")
    try:
        json.dumps(unwrap(dict(extravars)))
    except (TypeError, ValueError) as exc:
        raise IncidentInputError(f"extra vars must be JSON-serialisable: {exc}") from None
    return dict(extravars)


def _check_timeout(timeout: Any) -> float | None:
    """``timeout``: None, or a finite number of seconds in (0, 7 days]."""
    if timeout is None:
        return None
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise IncidentInputError(f"timeout must be a number of seconds, not {timeout!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise IncidentInputError(f"timeout must be a finite number of seconds > 0 and <= {MAX_TIMEOUT} (7 days), "
                                 f"not {timeout!r}; leave it out for no timeout")
    return value


def _check_inventory(inventory: str | os.PathLike[str] | Sequence[str] | None) -> list[str] | None:
    if inventory is None:
        return None
    items = [inventory] if isinstance(inventory, (str, os.PathLike)) else list(inventory)
    out = []
    for item in items:
        path = Path(os.fspath(item)).expanduser()
        if not path.exists():
            raise IncidentInputError(f"inventory {os.fspath(item)!r} does not exist")
        out.append(str(path.resolve()))
    return out or None


def _prepare(
    incident: str | os.PathLike[str],
    *,
    inventory: Any,
    extravars: Mapping[str, Any] | None,
    limit: str | None,
    check: bool,
    event_handler: EventHandler | None,
    runs_dir: str | os.PathLike[str] | None,
    tags: str | Sequence[str] | None,
    skip_tags: str | Sequence[str] | None,
    envvars: Mapping[str, str] | None,
    secret_env: Iterable[str],
    project_dir: str | os.PathLike[str] | None,
    rotate_artifacts: int,
    via_worker: bool,
    timeout: float | None,
    verbosity: int | None,
    forks: int | None,
    run_id: str | None,
    status_handler: StatusHandler | None,
) -> _Job:
    root = find_project_dir(project_dir)
    found = get_incident(incident, root)
    user_vars = _check_extravars(extravars)
    inventories = _check_inventory(inventory)
    if limit is not None and (not isinstance(limit, str) or not limit.strip()):
        raise IncidentInputError("limit must be a non-empty host pattern")
    if rotate_artifacts < 0:
        raise IncidentInputError("rotate_artifacts must be >= 0")
    names = [secret_env] if isinstance(secret_env, str) else list(secret_env)
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise IncidentInputError(f"secret_env: not set in the environment: {', '.join(missing)}")
    bad = [n for n in names if not _ENV_NAME_RE.fullmatch(n)]
    if bad:
        raise IncidentInputError(f"secret_env: not an environment variable name: {', '.join(map(repr, bad))}")
    timeout = _check_timeout(timeout)
    if event_handler is not None and not callable(event_handler):
        raise IncidentInputError("event_handler must be callable")

    runs = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir(root)
    rid = run_id or new_run_id(found.name)
    if not rid.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise IncidentInputError(f"run_id {rid!r}: letters, digits, '-', '_' and '.' only")
    run_dir = runs / rid

    plain, secret = split_extravars(user_vars)
    # incidents outlive runs: the resume run of an incident feeds the record its first run opened
    plain.setdefault("incident_report_dir", str(runs / INCIDENTS_DIR))
    plain.setdefault("evidence_dest", str(run_dir / "evidence"))
    plain.setdefault(f"{found.name}_incident_id", rid)

    explicit = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", os.defpath),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    explicit.update({str(k): str(v) for k, v in (envvars or {}).items()})
    env, auto_secret_env, dropped = child_env(os.environ, explicit)
    # secret-looking ANSIBLE_* / TRADEOPS_* variables reach the playbook as --secret-env does, never recorded
    secret_env_values = {n: v for n, v in auto_secret_env.items() if _ENV_NAME_RE.fullmatch(n)}
    dropped += [v for n, v in auto_secret_env.items() if n not in secret_env_values]
    secret_env_values.update({n: os.environ[n] for n in names})
    # envvars whose names look secret are passed the same way
    secret_env_values.update({str(k): str(v) for k, v in (envvars or {}).items() if looks_secret(str(k))})
    for name in secret_env_values:
        env.pop(name, None)
    redactor = Redactor()
    redactor.add([secret], secret=False)
    redactor.add(secret_env_values.values())
    redactor.add(dropped)
    leaking = [k for k, v in env.items() if redactor.found_in(v)]
    for key in leaking:
        if key in (envvars or {}):
            raise IncidentInputError(f"envvars[{key!r}] holds a secret value; use secret_env or a Secret extra var")
        env.pop(key)

    try:
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_dir.mkdir(mode=0o700)
        _write_private(run_dir / RUN_MARKER, json.dumps({"run_id": rid, "incident": found.name}) + "\n")
    except FileExistsError:
        raise IncidentInputError(f"run {rid} already exists in {runs}") from None
    except OSError as exc:
        raise RunnerConfigurationError(f"cannot create the run directory {run_dir}: {exc}") from exc

    def tag_text(value: str | Sequence[str] | None) -> str | None:
        if value is None:
            return None
        return value if isinstance(value, str) else ",".join(value)

    return _Job(
        incident=found, project_dir=root, run_id=rid, run_dir=run_dir, runs_dir=runs, inventory=inventories,
        plain_vars=plain, secret_vars=secret, secret_env=secret_env_values, env=env, limit=limit, check=check,
        tags=tag_text(tags), skip_tags=tag_text(skip_tags), verbosity=verbosity, forks=forks,
        timeout=math.ceil(timeout) if timeout else None, rotate=rotate_artifacts, via_worker=via_worker,
        redactor=redactor, event_handler=event_handler, status_handler=status_handler,
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _event_callback(job: _Job) -> Callable[[dict[str, Any]], bool]:
    def on_event(event: dict[str, Any]) -> bool:
        job.redactor.event(event)
        data = event.get("event_data") or {}
        event["tradeops"] = {
            "phase": phase_of(data.get("play")) if data.get("play") else None,
            "task": data.get("task"),
            "host": data.get("host"),
            "result": result_of(event),
            "action": data.get("resolved_action") or data.get("task_action"),
        }
        job.events.append(event)
        keep = True
        if job.event_handler is not None:
            try:
                keep = job.event_handler(event) is not False
            except Exception:  # a broken progress display must not break the remediation
                logger.exception("run %s: event handler failed", job.run_id)
        return keep

    return on_event


def _cmdline(job: _Job, secret_file: str | None) -> str | None:
    parts = []
    if secret_file:
        parts += ["-e", "@" + secret_file]
    if job.check:
        parts.append("--check")
    return " ".join(shlex.quote(p) for p in parts) or None


def _status_callback(job: _Job, handle: RunHandle) -> Callable[..., None]:
    def on_status(status_data: Mapping[str, Any], runner_config: Any = None) -> None:
        status = str(status_data.get("status"))
        handle.status = status
        logger.debug("run %s: %s", job.run_id, status)
        if job.status_handler is not None:
            try:
                job.status_handler(status)
            except Exception:
                logger.exception("run %s: status handler failed", job.run_id)

    return on_status


def _run_direct(job: _Job, handle: RunHandle, vault: SecretFiles) -> tuple[str, int | None, Path]:
    import ansible_runner
    from ansible_runner.exceptions import AnsibleRunnerException

    secret_file = str(vault.write_extravars(job.secret_vars)) if job.secret_vars else None
    _write_private(job.run_dir / "env" / "extravars", json.dumps(job.plain_vars, indent=1))
    kwargs: dict[str, Any] = dict(
        private_data_dir=str(job.run_dir),
        project_dir=str(job.project_dir),
        playbook=str(job.incident.playbook),
        ident=job.run_id,
        envvars=job.env,
        suppress_env_files=True,
        settings={"suppress_output_file": True, "pexpect_timeout": 1},
        quiet=True,
        rotate_artifacts=0,
        event_handler=_event_callback(job),
        status_handler=_status_callback(job, handle),
        cancel_callback=lambda: handle.canceled,
    )
    if job.inventory:
        kwargs["inventory"] = job.inventory if len(job.inventory) > 1 else job.inventory[0]
    for key, value in (("limit", job.limit), ("tags", job.tags), ("skip_tags", job.skip_tags),
                       ("verbosity", job.verbosity), ("forks", job.forks), ("timeout", job.timeout),
                       ("cmdline", _cmdline(job, secret_file))):
        if value is not None:
            kwargs[key] = value
    try:
        runner = ansible_runner.interface.init_runner(**kwargs)
    except (AnsibleRunnerException, ValueError) as exc:
        raise RunnerConfigurationError(f"ansible-runner refused the run: {exc}") from exc
    # ansible-runner seeds the child's environment with ours, records it in artifacts/<id>/command, and starts
    # the child with it: give it only the allow-listed environment plus what ansible-runner itself set.
    env = dict(job.env)
    for key, value in runner.config.env.items():
        if key not in os.environ or os.environ[key] != value:
            env[key] = value
    runner.config.env = {k: v for k, v in env.items() if not job.redactor.found_in(v)}
    if job.secret_env:
        env_file = vault.write_env(job.secret_env)
        launcher = Path(__file__).with_name("_launch.py")
        runner.config.command = [sys.executable, str(launcher), str(env_file), "--", *runner.config.command]
    try:
        runner.run()
    except AnsibleRunnerException as exc:
        raise RunnerExecutionError(f"ansible-runner failed: {exc}") from exc
    return runner.status, runner.rc, Path(runner.config.artifact_dir)


def _copy_project(root: Path, dest: Path, playbook: Path) -> str:
    """Lay the checkout out as a worker's project dir; returns the playbook's path relative to it."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in PROJECT_CONTENT:
        src = root / name
        if src.is_symlink() or src.is_file():
            shutil.copy2(src, dest / name, follow_symlinks=False)
        elif src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
    try:
        relative = playbook.resolve().relative_to(root)
    except ValueError:
        relative = None
    if relative is not None and relative.parts[0] in PROJECT_CONTENT:
        return str(relative)
    # a playbook outside the copied content (elsewhere, or under tests/ of the checkout) goes next to them
    shutil.copy2(playbook, dest / playbook.name)
    return playbook.name


WORKER_LAUNCHER = "tradeops-launch.sh"
WORKER_LAUNCHER_SCRIPT = """#!/bin/sh
# tradeops run --via-worker: export this job's secret environment from the 0600 file next to this script,
# delete the file, then exec ansible-playbook. ansible-runner records only this script's path.
set -e
env_file="$(dirname -- "$0")/secret_env.sh"
if [ -f "$env_file" ]; then
    . "$env_file"
    rm -f -- "$env_file"
fi
exec ansible-playbook "$@"
"""


def _run_via_worker(job: _Job, handle: RunHandle, vault: SecretFiles) -> tuple[str, int | None, Path]:
    """ansible-runner transmit | ansible-runner worker (real processes, as on an AWX execution node), with the
    process step in this process (so events are redacted before they are written and shown)."""
    import ansible_runner

    staging = vault.dir / "transmit"
    playbook = _copy_project(job.project_dir, staging / "project", job.incident.playbook)
    env_dir = staging / "env"
    _write_private(env_dir / "extravars", json.dumps(job.plain_vars))
    _write_private(job.run_dir / "env" / "extravars", json.dumps(job.plain_vars, indent=1))
    worker_envvars = {k: v for k, v in job.env.items() if k.startswith(("ANSIBLE_", "TRADEOPS_"))}
    worker_envvars.pop("ANSIBLE_CONFIG", None)  # the worker uses the project's own ansible.cfg (its cwd)
    worker_envvars.setdefault("TRADEOPS_LAB_DIR", str(job.project_dir / ".lab"))
    _write_private(env_dir / "envvars", json.dumps(worker_envvars))
    settings: dict[str, Any] = {"suppress_output_file": True, "pexpect_timeout": 1}
    if job.timeout:
        settings["job_timeout"] = job.timeout
    _write_private(env_dir / "settings", json.dumps(settings))
    secret_file = None
    if job.secret_vars:
        # travels inside the transmit stream; on the worker it lives in its private data dir, deleted after the job
        _write_private(env_dir / "secret_extravars.yml", yaml_unsafe(job.secret_vars, secret=False) + "\n")
        secret_file = "../env/secret_extravars.yml"  # relative to the worker's cwd, its project dir
    worker_dir = vault.dir / "worker"
    binary = None
    if job.secret_env:
        # The worker records the environment it starts ansible-playbook with (artifacts/<id>/command, streamed
        # back into the run directory): secret environment variables travel in a 0600 file of the job instead,
        # which a launcher sent with it exports and deletes before it execs ansible-playbook.
        _write_private(env_dir / "secret_env.sh",
                       "".join(f"export {k}={shlex.quote(v)}\n" for k, v in job.secret_env.items()))
        _write_private(env_dir / WORKER_LAUNCHER, WORKER_LAUNCHER_SCRIPT)
        os.chmod(env_dir / WORKER_LAUNCHER, 0o700)
        binary = str(worker_dir / "env" / WORKER_LAUNCHER)

    bindir = Path(sys.executable).parent
    runner_bin = str(bindir / "ansible-runner") if (bindir / "ansible-runner").exists() else "ansible-runner"
    transmit = [runner_bin, "transmit", str(staging), "-p", playbook, "--ident", job.run_id]
    if binary:
        transmit += ["--binary", binary]
    for inv in job.inventory or []:
        try:
            inv = "project/" + str(Path(inv).relative_to(job.project_dir))
        except ValueError:
            pass
        transmit += ["--inventory", inv]
    if job.limit:
        transmit += ["--limit", job.limit]
    if job.forks:
        transmit += ["--forks", str(job.forks)]
    if job.verbosity:
        transmit += ["-" + "v" * job.verbosity]
    cmdline = _cmdline(job, secret_file)
    extra = []
    if job.tags:
        extra += ["--tags", job.tags]
    if job.skip_tags:
        extra += ["--skip-tags", job.skip_tags]
    if binary:
        extra.append(playbook)  # ansible-runner appends the playbook only when it runs ansible-playbook itself
    cmdline = " ".join(filter(None, [cmdline, " ".join(shlex.quote(p) for p in extra)])) or None
    if cmdline:
        transmit += ["--cmdline", cmdline]
    worker = [runner_bin, "worker", "--private-data-dir", str(worker_dir), "--delete"]
    proc_env = {k: v for k, v in job.env.items() if k != "ANSIBLE_CONFIG"}
    logger.info("run %s via worker: %s | %s", job.run_id, shlex.join(transmit), shlex.join(worker))
    tx = subprocess.Popen(transmit, stdout=subprocess.PIPE, env=proc_env, cwd=str(staging))
    wk = subprocess.Popen(worker, stdin=tx.stdout, stdout=subprocess.PIPE, env=proc_env, cwd=str(vault.dir))
    assert tx.stdout is not None and wk.stdout is not None
    tx.stdout.close()  # the worker holds the read end
    handle._procs = [tx, wk]
    try:
        processor = ansible_runner.interface.run(
            streamer="process",
            _input=wk.stdout,
            private_data_dir=str(job.run_dir),
            ident=job.run_id,
            quiet=True,
            event_handler=_event_callback(job),
            status_handler=_status_callback(job, handle),
        )
        status = processor.status
    finally:
        for proc in (tx, wk):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wk.stdout.close()
    artifact_dir = job.run_dir / "artifacts" / job.run_id
    rc_text = (artifact_dir / "rc").read_text().strip() if (artifact_dir / "rc").exists() else ""
    rc = int(rc_text) if rc_text.lstrip("-").isdigit() else None
    if handle.canceled:
        status = "canceled"
    elif status in (None, "unstarted", "error") and rc is None:
        raise RunnerExecutionError(f"the transmit | worker | process pipeline produced no result "
                                   f"(transmit rc {tx.returncode}, worker rc {wk.returncode})")
    return status, rc, artifact_dir


def _find_record(job: _Job) -> Path | None:
    """The incident record this run fed: ``<incident_report_dir>/<incident id>.json``, if the run wrote it."""
    report_dir = Path(str(job.plain_vars.get("incident_report_dir", job.runs_dir / INCIDENTS_DIR)))
    incident_id = str(job.plain_vars.get(f"{job.incident.name}_incident_id") or "")
    path = report_dir / f"{incident_id}.json"
    try:
        return path if incident_id and path.stat().st_mtime >= job.started - 1 else None
    except OSError:
        return None


def _finish_record(job: _Job, path: Path | None, status: str, rc: int | None) -> dict[str, Any] | None:
    """Close the run in its record with what the runner saw (canceled, timed out, failed): the same ``finish``
    the report phase calls, so the record, the exit code and the summary agree."""
    if path is None or job.check:
        return None
    incident = record_model(job.project_dir)
    bad_input = bad_input_of(collect(job.events), rc) if rc in (4, 5) else None
    try:
        _, record = incident.update(str(path), lambda r: incident.finish(r, status=status, rc=rc, check=job.check,
                                                                         bad_input=bad_input))
    except incident.RecordError as exc:
        logger.warning("run %s: the incident record %s cannot be read: %s", job.run_id, path, exc)
        return None
    return record


def _write_stdout(artifact_dir: Path, events: list[dict[str, Any]]) -> None:
    text = "".join(str(e.get("stdout") or "") + ("\n" if e.get("stdout") else "")
                   for e in sorted(events, key=lambda e: e.get("counter", 0)))
    _write_private(artifact_dir / "stdout", text)


def _is_our_run(path: Path) -> bool:
    marker = path / RUN_MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("run_id") == path.name
    except (OSError, ValueError, AttributeError):
        return False


def rotate_runs(runs_dir: Path, keep: int, current: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` run directories of this tool (0: keep all); returns what was deleted.

    Only directories this tool created count: they hold :data:`RUN_MARKER` naming them, written at creation
    (other tools' ansible-runner directories in the same place are never touched)."""
    if keep <= 0 or not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink() and _is_our_run(p)]
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in runs[keep:]:
        if old.name == current:
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def _execute(job: _Job, handle: RunHandle) -> IncidentResult:
    job.started = time.time()
    job.started_at = now_iso()
    handle.status = "starting"
    logger.info("run %s: %s (%s) in %s", job.run_id, job.incident.name, job.incident.playbook, job.run_dir)
    vault = SecretFiles()
    try:
        if job.via_worker:
            status, rc, artifact_dir = _run_via_worker(job, handle, vault)
        else:
            status, rc, artifact_dir = _run_direct(job, handle, vault)
    finally:
        vault.cleanup()
    if handle.canceled:
        status = "canceled"
    _write_stdout(artifact_dir, job.events)
    report_path = _find_record(job)
    report = _finish_record(job, report_path, status, rc)
    if report is None:
        report_path = None
    fields = summarize(job.events, status=status, rc=rc, check=job.check, record=report,
                       project_dir=str(job.project_dir))
    evidence_dir = Path(str(job.plain_vars.get("evidence_dest", job.run_dir / "evidence")))
    evidence = sorted(str(p) for p in evidence_dir.glob("*.tar.gz")) if evidence_dir.is_dir() else []
    md = report_path.with_suffix(".md") if report_path else None
    result = IncidentResult(
        run_id=job.run_id,
        incident=job.incident.name,
        playbook=str(job.incident.playbook),
        status=status,
        rc=rc,
        check=job.check,
        via_worker=job.via_worker,
        limit=job.limit,
        started_at=job.started_at,
        finished_at=now_iso(),
        elapsed_s=round(time.time() - job.started, 2),
        report_path=str(report_path) if report_path else None,
        report_markdown_path=str(md) if md and md.exists() else None,
        report=report,
        evidence=evidence,
        run_dir=str(job.run_dir),
        artifacts_path=str(artifact_dir),
        **fields,
    )
    result.redacted_files = [str(Path(p).relative_to(job.run_dir)) for p in job.redactor.sweep(job.run_dir)]
    if result.redacted_files:
        result.warnings.append(f"{MASK}: secret values were found and redacted in {len(result.redacted_files)} "
                               f"file(s) of the run directory")
        logger.warning("run %s: redacted secrets in %s", job.run_id, ", ".join(result.redacted_files))
    _write_private(job.run_dir / RESULT_FILE, json.dumps(job.redactor.data(result.as_dict()), indent=1) + "\n")
    removed = rotate_runs(job.runs_dir, job.rotate, current=job.run_id)
    if removed:
        logger.info("run %s: rotated out %d old run(s)", job.run_id, len(removed))
    logger.info("run %s: %s rc=%s outcome=%s", job.run_id, status, rc, result.outcome)
    return result


def _worker(job: _Job, handle: RunHandle) -> None:
    try:
        handle.result = _execute(job, handle)
        handle.status = handle.result.status
    except BaseException as exc:  # noqa: BLE001 - handed to the waiter
        handle.error = exc if isinstance(exc, RunnerError) else RunnerExecutionError(f"{type(exc).__name__}: {exc}")
        handle.error.__cause__ = exc
        handle.status = "error"
        logger.exception("run %s failed", job.run_id)
    finally:
        handle._done.set()


def run_incident_async(
    incident: str | os.PathLike[str],
    inventory: str | os.PathLike[str] | Sequence[str] | None = None,
    extravars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    event_handler: EventHandler | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> tuple[threading.Thread, RunHandle]:
    """Start :func:`run_incident` in a thread; returns ``(thread, handle)``. ``handle.cancel()`` stops the run,
    ``handle.wait()`` returns its :class:`IncidentResult`. Bad input raises here, before any thread starts."""
    job = _prepare(incident, inventory=inventory, extravars=extravars, limit=limit, check=check,
                   event_handler=event_handler, runs_dir=runs_dir, **_options(options))
    handle = RunHandle(job.run_id, job.run_dir, job.incident)
    thread = threading.Thread(target=_worker, args=(job, handle), name=f"tradeops-run-{job.run_id}", daemon=True)
    thread.start()
    return thread, handle


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = dict(
        tags=None, skip_tags=None, envvars=None, secret_env=(), project_dir=None, rotate_artifacts=DEFAULT_ROTATE,
        via_worker=False, timeout=None, verbosity=None, forks=None, run_id=None, status_handler=None,
    )
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    defaults.update(options)
    return defaults


def run_incident(
    incident: str | os.PathLike[str],
    inventory: str | os.PathLike[str] | Sequence[str] | None = None,
    extravars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    event_handler: EventHandler | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> IncidentResult:
    """Run an incident playbook through ansible-runner and return what it did.

    :param incident: an incident name (``p0_outage``; ``tradeops incidents`` lists them) or a playbook path.
    :param inventory: inventory path(s); default: ansible.cfg's (``inventories/lab``).
    :param extravars: extra vars. A :class:`~tradeops.runner.secrets.Secret` value, a name that looks secret
        (``*password``, ``*_pw``, ``*token``, ``api_key``, ``*_secret_id``, ...), or a var holding such a key at any
        depth (``{"my_db": {"login_password": ...}}``) is passed through a 0600 file removed after the run, never
        through ``env/extravars`` or the command line.
    :param limit: Ansible ``--limit`` pattern.
    :param check: run in check mode (``--check``).
    :param event_handler: called with every job event, already redacted, with a ``tradeops`` key
        (phase, task, host, result, action). Return ``False`` to keep an event off disk.
    :param runs_dir: where run directories go (default ``$TRADEOPS_RUNS_DIR``, else ``<checkout>/runs``).

    Keyword-only options: ``tags``, ``skip_tags``, ``envvars`` (non-secret environment for Ansible),
    ``secret_env`` (names of environment variables the playbook needs; passed through a 0600 file, also with
    ``via_worker``; ``ANSIBLE_*`` / ``TRADEOPS_*`` variables whose names look secret are passed so anyway),
    ``project_dir``, ``rotate_artifacts`` (keep the newest N runs, default 50, 0 keeps all), ``via_worker``
    (run through ``ansible-runner transmit | worker | process``), ``timeout`` (seconds), ``verbosity``,
    ``forks``, ``run_id``, ``status_handler`` (called with each status: starting, running, successful, ...).

    :raises IncidentInputError: bad input (nothing ran). Other :class:`RunnerError` if the runner broke down.
    :returns: the :class:`IncidentResult`; a failed remediation is a result, not an exception.
    """
    job = _prepare(incident, inventory=inventory, extravars=extravars, limit=limit, check=check,
                   event_handler=event_handler, runs_dir=runs_dir, **_options(options))
    handle = RunHandle(job.run_id, job.run_dir, job.incident)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C / SIGTERM cancel the run (ansible-playbook runs in its own session and would not see them);
        # the partial result still says which engines are halted.
        def on_signal(signum: int, frame: Any) -> None:
            handle.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        return _execute(job, handle)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def list_runs(runs_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Past run directories with a result, newest first."""
    runs = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir()
    if not runs.is_dir():
        return []
    found = [p for p in runs.iterdir() if (p / RESULT_FILE).is_file()]
    return sorted(found, key=lambda p: (p / RESULT_FILE).stat().st_mtime, reverse=True)


def load_result(run_id: str, runs_dir: str | os.PathLike[str] | None = None) -> IncidentResult:
    """A past run's :class:`IncidentResult` by id (a unique prefix will do; ``latest`` is the newest run)."""
    runs = list_runs(runs_dir)
    if run_id in ("latest", "last"):
        if not runs:
            raise RunNotFoundError("no run yet")
        return IncidentResult.load(runs[0] / RESULT_FILE)
    exact = [p for p in runs if p.name == run_id]
    matches = exact or [p for p in runs if p.name.startswith(run_id)]
    if not matches:
        raise RunNotFoundError(f"no run {run_id!r} in {Path(runs_dir) if runs_dir else default_runs_dir()}")
    if len(matches) > 1:
        raise RunNotFoundError(f"run id {run_id!r} is ambiguous: {', '.join(p.name for p in matches[:5])}")
    return IncidentResult.load(matches[0] / RESULT_FILE)
