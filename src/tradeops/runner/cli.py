"""The ``run``, ``incidents`` and ``report`` command groups of ``tradeops`` (registered in tradeops.cli)."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .exceptions import IncidentInputError, RunnerError
from .interface import MAX_TIMEOUT
from .result import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_HALTED_NOT_RECOVERED, EXIT_RESOLVED
from .secrets import Secret, looks_secret, secret_leaves

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_RESOLVED}  resolved: the playbook succeeded, every engine is verified halted (or verified resumed) and
     nothing is NO-GO. A P0 run without approval exits 0 once every engine is recovered and the health gate is
     GO: trading stays halted, awaiting approval (the summary says so).
  {EXIT_FAILED}  remediation failed: an engine could not be verified halted, the playbook failed before trading
     was contained, a check found NO-GO, or the run was canceled / timed out.
  {EXIT_HALTED_NOT_RECOVERED}  halted but not recovered: every engine is verified halted, but the repair or the health
     gate failed (still NO-GO). Fix it by hand, then run resume_trading.
  {EXIT_BAD_INPUT}  bad input: unknown incident, malformed -e, missing inventory, no host matched.
"""


_KV_START = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _where(exc: Exception) -> str:
    """Where a YAML/JSON error is, never what is there (the text may be a secret)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, UnicodeDecodeError):
        return f"byte {exc.start} (not UTF-8)"
    return "somewhere"


def _split_kv(text: str, label: str) -> dict[str, str]:
    """``k=v k2='v 2' k3={{ x }}`` split as ansible-playbook splits it (its own ``split_args``: quotes and Jinja
    blocks kept whole; one pair of quotes around a value removed), except that words without ``=`` after a value
    continue it: ``-e reason="INC-1 engines down"`` (the shell has taken the quotes off) is one value, where
    ansible-playbook would keep ``INC-1`` and put the rest in ``_raw_params``."""
    from ansible.errors import AnsibleError
    from ansible.parsing.quoting import unquote
    from ansible.parsing.splitter import split_args

    try:
        words = split_args(text)
    except AnsibleError:
        raise IncidentInputError(f"{label}: unbalanced quotes or Jinja braces; close them or quote the whole "
                                 f"value") from None
    parts: dict[str, list[str]] = {}
    key = None
    for word in words:
        m = _KV_START.match(word)
        if m:
            key = m.group()[:-1]
            parts[key] = [word[m.end():]]
        elif key is None:
            raise IncidentInputError(
                f"{label}: expected key=value (a name, '=', a value; quote a value with spaces), a JSON/YAML "
                f"mapping, or @file; its first word is not a name followed by '='")
        else:
            parts[key].append(word)
    return {k: unquote(" ".join(v).strip()) for k, v in parts.items()}


def parse_extra_vars(items: list[str]) -> dict[str, Any]:
    """``-e`` values as ansible-playbook takes them: ``k=v k2='v 2'``, a JSON/YAML mapping, or ``@file``.

    An error says where (the argument, the file, line and column), never what is there: it may be a secret."""
    out: dict[str, Any] = {}
    for number, item in enumerate(items, 1):
        text = item.strip()
        if not text:
            continue
        label = f"-e (argument {number})"
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            label = f"-e @{text[1:]}"
            try:
                data = yaml.safe_load(path.read_bytes().decode("utf-8"))
            except OSError as exc:
                raise IncidentInputError(f"{label}: cannot read the file: {exc.strerror or exc}") from None
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise IncidentInputError(f"{label}: not valid YAML/JSON at {_where(exc)}; fix the file "
                                         f"(the text there is not shown: it may be a secret)") from None
        elif text.startswith(("{", "[")):
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise IncidentInputError(f"{label}: not valid JSON/YAML at {_where(exc)}") from None
        else:
            data = _split_kv(text, label)
        if not isinstance(data, dict):
            raise IncidentInputError(f"{label}: extra vars must be a mapping (key: value), not a "
                                     f"{type(data).__name__}")
        out.update(data)
    return out


def _timeout_seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds > 0 (argparse names the option in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds > 0 and <= {MAX_TIMEOUT} "
                                         f"(7 days), or leave --timeout out for no timeout")
    return value


def _secret_vars(specs: list[str]) -> dict[str, Secret]:
    """``--secret-var NAME=ENVVAR`` (value from that environment variable) or ``NAME`` (prompted, or one line of
    stdin): the value never appears on a command line."""
    out: dict[str, Secret] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not name.isidentifier():
            raise IncidentInputError(f"--secret-var {spec!r}: {name!r} is not a variable name")
        if sep:
            if source not in os.environ:
                raise IncidentInputError(f"--secret-var {spec}: environment variable {source} is not set")
            out[name] = Secret(os.environ[source])
        elif sys.stdin.isatty():
            out[name] = Secret(getpass.getpass(f"{name}: "))
        else:
            out[name] = Secret(sys.stdin.readline().rstrip("\n"))
    return out


def add_run_commands(subparsers: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run an incident playbook through ansible-runner, with live progress and a summary",
        description="Run an incident playbook (`tradeops incidents` lists them) through ansible-runner, in its own "
        "run directory under the runs directory, with live progress by phase and host (rich on a terminal, plain "
        "lines otherwise), then a summary and the path of the incident report. Secrets never reach the run "
        "directory: see --secret-var and --secret-env.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("incident", metavar="INCIDENT", help="incident name (e.g. p0_outage) or playbook path")
    run.add_argument("-i", "--inventory", action="append", default=None, metavar="INVENTORY",
                     help="inventory path, repeatable (default: ansible.cfg's, the lab)")
    run.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                     help="extra vars: key=value ..., a JSON/YAML mapping, or @file; repeatable. Names that look "
                          "secret (*_password, *_token, ...) are handled as secrets, but prefer --secret-var")
    run.add_argument("--secret-var", action="append", default=[], metavar="NAME[=ENVVAR]",
                     help="a secret extra var, read from the environment variable ENVVAR, else prompted (or one "
                          "line of stdin); passed through a 0600 file removed after the run; repeatable")
    run.add_argument("--secret-env", action="append", default=[], metavar="ENVVAR",
                     help="an environment variable the playbook needs (e.g. VAULT_TOKEN), passed through a 0600 "
                          "file, never recorded; ANSIBLE_* and TRADEOPS_* variables whose names look secret are "
                          "passed so too, other secrets in the environment are left behind; repeatable")
    run.add_argument("--check", action="store_true", help="check mode: report what would change, change nothing")
    run.add_argument("-l", "--limit", default=None, metavar="PATTERN", help="limit to hosts matching PATTERN")
    run.add_argument("-t", "--tags", default=None, metavar="TAGS", help="only these phases (e.g. contain)")
    run.add_argument("--skip-tags", default=None, metavar="TAGS", help="skip these phases")
    run.add_argument("--automatic", action="store_true",
                     help="a run no person started (an alert): only containment and diagnosis phases (identify, "
                          "contain, assess, evidence, report, ...), never resume; no *_approved var is accepted; "
                          "the phases come from the playbook's tags (tradeops.runner.policy), not from --tags")
    run.add_argument("--allow-repair", action="store_true",
                     help="with --automatic: also the repair and verify phases (never resume)")
    run.add_argument("--json", action="store_true",
                     help="print the result as JSON on stdout (progress goes to stderr)")
    run.add_argument("--via-worker", action="store_true",
                     help="run as AWX does: ansible-runner transmit | ansible-runner worker | process")
    run.add_argument("--runs-dir", default=None, metavar="DIR",
                     help="where run directories go (default: $TRADEOPS_RUNS_DIR, else <checkout>/runs)")
    run.add_argument("--keep-runs", type=int, default=None, metavar="N",
                     help="keep only the newest N run directories (default 50; 0 keeps all)")
    run.add_argument("--progress", choices=("auto", "rich", "plain", "none"), default="auto",
                     help="live progress: rich on a terminal, plain lines otherwise (default auto)")
    run.add_argument("--timeout", type=_timeout_seconds, default=None, metavar="SECONDS",
                     help="cancel the run after this long (a finite number of seconds > 0)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="ansible-playbook verbosity")
    run.set_defaults(func=cmd_run)


def _progress(args: argparse.Namespace, title: str) -> Any:
    stream = sys.stderr if args.json else sys.stdout
    mode = args.progress
    if mode == "auto":
        mode = "rich" if stream.isatty() else "plain"
    if mode == "none":
        return None
    from .progress import PlainProgress, RichProgress

    if mode == "rich":
        from rich.console import Console

        return RichProgress(Console(file=stream), title=title)
    return PlainProgress(stream)


def cmd_run(args: argparse.Namespace) -> int:
    from .interface import run_incident
    from .progress import summary_lines

    try:
        extravars = parse_extra_vars(args.extra_vars)
        on_cli = [k for k, v in extravars.items() if looks_secret(k) or secret_leaves({k: v}, secret=False)]
        extravars.update(_secret_vars(args.secret_var))
        progress = None
        tags = {"tags": args.tags, "skip_tags": args.skip_tags}
        if args.allow_repair and not args.automatic:
            raise IncidentInputError("--allow-repair only applies to an --automatic run")
        if args.automatic:
            tags = _automatic_tags(args, extravars)
        options: dict[str, Any] = {**tags, "secret_env": args.secret_env,
                                   "via_worker": args.via_worker, "timeout": args.timeout,
                                   "verbosity": args.verbose or None}
        if args.keep_runs is not None:
            options["rotate_artifacts"] = args.keep_runs
        out = sys.stderr if args.json else sys.stdout
        for key in on_cli:
            print(f"tradeops: warning: {key} looks secret (or holds a secret-looking key) and was given with -e "
                  f"(visible in the process list); "
                  f"it is handled as a secret, but use --secret-var {key}=ENVVAR", file=sys.stderr)
        progress = _progress(args, f"tradeops run {args.incident}")
        try:
            result = run_incident(args.incident, inventory=args.inventory, extravars=extravars, limit=args.limit,
                                  check=args.check, event_handler=progress, runs_dir=args.runs_dir, **options)
        finally:
            if progress is not None:
                progress.close()
    except IncidentInputError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunnerError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(result.to_json(indent=1))
    for line in summary_lines(result):
        print(line, file=out)
    return result.exit_code


def _automatic_tags(args: argparse.Namespace, extravars: dict[str, Any]) -> dict[str, str]:
    from .catalog import get_incident
    from .policy import automatic_tags

    if args.tags or args.skip_tags:
        raise IncidentInputError("--automatic chooses the phases itself: leave out --tags and --skip-tags")
    tags = automatic_tags(get_incident(args.incident), extravars, allow_repair=args.allow_repair)
    print(f"tradeops: automatic run: phases {tags['tags']}; skipped {tags['skip_tags']}", file=sys.stderr)
    return tags


def add_incidents_commands(subparsers: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    inc = subparsers.add_parser(
        "incidents",
        help="list the incident playbooks, with severity and a one-line description",
        description="List the incident playbooks found in playbooks/*.yml. A playbook describes itself with a "
        "header comment block: '# tradeops-incident:' followed by '#   severity: P1', '#   description: ...', "
        "'#   title: ...', '#   kind: incident|action'.",
    )
    inc.add_argument("--all", action="store_true", help="also the tools (resume_trading, health_check, ...)")
    inc.add_argument("--json", action="store_true", help="machine-readable output")
    inc.set_defaults(func=cmd_incidents)


def cmd_incidents(args: argparse.Namespace) -> int:
    from .catalog import list_incidents

    try:
        found = list_incidents(include_actions=args.all)
    except RunnerError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([i.as_dict() for i in found], indent=1))
        return EXIT_RESOLVED
    rows = [(i.name, i.severity, i.kind, i.description) for i in found]
    headers = ("INCIDENT", "SEVERITY", "KIND", "DESCRIPTION")
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths[:3], strict=True)) + "  " + row[3])
    return EXIT_RESOLVED


def add_report_commands(subparsers: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    rep = subparsers.add_parser(
        "report",
        help="print a past run (`tradeops report latest`, or a run id or a unique prefix of one)",
        description="Print a past run of `tradeops run`: its summary, timeline and the path of its incident "
        "report. RUN_ID is a run id (a unique prefix will do) or 'latest'.",
    )
    rep.add_argument("run_id", nargs="?", default="latest", metavar="RUN_ID")
    rep.add_argument("--runs-dir", default=None, metavar="DIR", help="the runs directory")
    rep.add_argument("--json", action="store_true", help="the stored result as JSON")
    rep.add_argument("--markdown", action="store_true", help="also print the post-mortem draft (Markdown)")
    rep.add_argument("--format", choices=("md", "json"), default=None,
                     help="print the run's incident record instead: md the post-mortem draft (with its Mermaid "
                     "timeline), json the record itself (schemas/incident-record.schema.json)")
    rep.add_argument("--list", action="store_true", help="list the past runs instead")
    rep.set_defaults(func=cmd_report)


def _print_record(result: Any, fmt: str) -> int:
    """The incident record of a run, as it is now (a later resume run of the incident feeds the same record)."""
    from .record import model

    if not result.report_path or not Path(result.report_path).is_file():
        print(f"tradeops: error: run {result.run_id} has no incident record (check mode, or it stopped before "
              "its first task)", file=sys.stderr)
        return EXIT_FAILED
    incident = model()
    try:
        record = incident.load(result.report_path)
    except incident.RecordError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if fmt == "json":
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        print(incident.postmortem(record), end="")
    return EXIT_RESOLVED


def cmd_report(args: argparse.Namespace) -> int:
    from .interface import list_runs, load_result
    from .progress import summary_lines
    from .result import IncidentResult

    try:
        if args.list:
            for path in list_runs(args.runs_dir):
                r = IncidentResult.load(path / "result.json")
                print(f"{r.run_id}  exit {r.exit_code}  {r.verdict}")
            return EXIT_RESOLVED
        result = load_result(args.run_id, args.runs_dir)
    except IncidentInputError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RunnerError, OSError, ValueError) as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(result.to_json(indent=1))
        return EXIT_RESOLVED
    if args.format:
        return _print_record(result, args.format)
    print("\n".join(summary_lines(result)))
    print(f"  started {result.started_at}, finished {result.finished_at}")
    print("timeline:")
    for t in result.timeline:
        print(f"  {t.time[11:19] if len(t.time) > 19 else t.time}  {t.phase:<9} {t.host:<16} {t.result:<9} {t.task}")
    if args.markdown and result.report_markdown_path and Path(result.report_markdown_path).is_file():
        print()
        print(Path(result.report_markdown_path).read_text(encoding="utf-8"))
    return EXIT_RESOLVED
