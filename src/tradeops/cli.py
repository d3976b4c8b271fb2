"""The ``tradeops`` command line.

Each top-level command group registers itself into the shared ``subparsers`` through one
``_add_<group>_commands(subparsers)`` function listed in ``COMMAND_GROUPS``; every leaf subcommand sets
``func`` (called with the parsed args, returning an exit code). Exit codes: 0 ok, 1 failure, 3 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .lab import Lab, LabError, LabInputError
from .lab.dbfaults import CORRUPT_KINDS, DEFAULT_CORRUPT_COUNTS, LONG_QUERY_SECONDS
from .lab.exchange import FAULT_KEY_EXPIRED, FAULT_WS_DOWN
from .lab.exchange import FAULTS as EXCHANGE_FAULTS
from .lab.state import (
    ALL,
    BLOAT_TABLE,
    DB_FAULTS,
    ENV_LAB_DIR,
    FAULT_CORRUPT_ROWS,
    FAULT_INDEX_CORRUPTION,
    FAULT_LEAKED_SECRET,
    FAULT_LONG_QUERY,
    FAULT_TABLE_BLOAT,
    FAULTS,
    HALT_METHODS,
    SECURITY_FAULTS,
    SERVICE_FAULTS,
    SERVICES,
    SOURCE_HEADER,
    SOURCE_MANAGEMENT,
    parse_fault_specs,
)
from .lab.streams import FAULT_POISON, STREAM_FAULTS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 3


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit with EXIT_BAD_INPUT instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


# -- lab ---------------------------------------------------------------------------------------------------


def _lab_common() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--dir",
        metavar="DIR",
        default=None,
        help=f"lab directory (default: ${ENV_LAB_DIR}, else ./.lab)",
    )
    return common


def _add_lab_commands(subparsers: Any) -> None:
    lab = subparsers.add_parser("lab", help="the simulated trading stack (postgres, redis, engines)")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    common = _lab_common()

    up = lab_sub.add_parser("up", parents=[common], help="start a lab")
    up.add_argument("--engines", type=int, default=5, metavar="N", help="number of engines (default 5)")
    up.add_argument(
        "--mix",
        default=None,
        metavar="M1,M2,...",
        help=f"cycle of primary halt methods (default {','.join(HALT_METHODS)})",
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENGINE=FAULT",
        help=f"fault active from the start, repeatable; ENGINE may be '*'. Faults: {', '.join(FAULTS)}",
    )
    up.add_argument("--order-interval", type=float, default=0.2, metavar="SECONDS", help="seconds between orders")
    up.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="give up after this long")
    up.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for the first orders")
    up.add_argument("--no-exchange", dest="exchange", action="store_false",
                    help="do not start the lab exchange (the engines then rest no order at a venue)")
    up.add_argument("--monitoring", action="store_true",
                    help="also start Prometheus, Alertmanager and the PostgreSQL and Redis exporters (Debian's), "
                         "with the collection's alert rules; Alertmanager sends to the EDA source (`tradeops eda`)")
    up.add_argument("--lab-for", default="3s", metavar="DURATION",
                    help="with --monitoring: cut each alert rule's `for:` to at most this (default 3s; a lab "
                         "cannot wait the production 5 minutes); 'none' keeps the rules as shipped")
    up.set_defaults(func=_cmd_lab_up)

    status = lab_sub.add_parser("status", parents=[common], help="show the lab (exit 1 if it is unhealthy)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_lab_status)

    inject = lab_sub.add_parser(
        "inject",
        parents=[common],
        help="inject or clear a fault on engines, or a database fault",
        description="Engine faults apply to the engines named (or --all). Database faults apply to the whole "
        "lab and take no engine names; each records what it did in <lab dir>/faults/FAULT.json. "
        "corrupt-rows: bad rows of each kind ("
        + ", ".join(f"{k} {n}" for k, n in DEFAULT_CORRUPT_COUNTS.items())
        + "), no row of two kinds; not clearable (repair is the playbook's job). index-corruption: "
        "corrupts a leaf page of trades_id_idx (PostgreSQL is restarted), --clear reindexes it. long-query: "
        f"SELECT pg_sleep(--seconds, default {LONG_QUERY_SECONDS}). blocking-lock: ACCESS EXCLUSIVE lock on "
        "trades held open, a second session blocked behind it. pg-saturation: an ordinary role's runaway job "
        "holds every ordinary connection slot, each in SELECT pg_sleep (only the superuser slots are left). "
        "--clear ends the sessions. table-bloat: "
        f"{BLOAT_TABLE} with 60,000 dead rows and autovacuum off; --clear drops it. "
        "Security fault leaked-secret (engines optional, default all): a rogue client calls GET /pnl/status "
        "every 0.2 s with the admin token current at injection, recording its results in "
        "<lab dir>/faults/leaked-secret.json; --clear stops it. "
        "Service faults: pg-down and redis-down stop the lab's PostgreSQL or Redis (--clear starts it); "
        "redis-oom caps Redis's memory and fills it with cache:* keys until writes fail (--clear deletes them); "
        "pooler-stuck stops the engines' pgbouncer with SIGSTOP (--clear resumes it; `lab restart pgbouncer`). "
        "Exchange faults: exchange-down (5xx), exchange-slow (every answer --seconds late, default 2) for the "
        "whole exchange; exchange-rate-limit, exchange-auth (the keys revoked), cancel-lies (cancels answer "
        "success and cancel nothing) for the accounts of the engines named (default all). "
        "exchange-key-expired expires the engines' own API keys (default all; `lab venue-key` issues new ones). "
        "ws-down wedges the exchange's market-data WebSocket feed (`lab restart ws-feed` restarts it). "
        "Stream faults: stream-consumer-stuck (the first consumer of notify.events reads and never acknowledges: "
        "its pending list grows); stream-poison (one message no consumer can process, and --count N, default 3, "
        "that fail until they are requeued once: all land in notify.events.dlq).",
    )
    inject.add_argument(
        "fault",
        metavar="FAULT",
        help=f"engine fault: {', '.join(FAULTS)} ('*' with --clear: all); database fault: {', '.join(DB_FAULTS)}; "
        f"service fault: {', '.join(SERVICE_FAULTS)}; security fault: {', '.join(SECURITY_FAULTS)}; "
        f"exchange fault: {', '.join(EXCHANGE_FAULTS)}, {FAULT_KEY_EXPIRED}, {FAULT_WS_DOWN}; "
        f"stream fault: {', '.join(STREAM_FAULTS)}",
    )
    inject.add_argument("engines", metavar="ENGINE", nargs="*", help="engine names, e.g. engine-003")
    inject.add_argument("--all", action="store_true", help="every engine")
    inject.add_argument("--clear", action="store_true", help="clear the fault instead of injecting it")
    inject.add_argument("--json", action="store_true", help="machine-readable output")
    inject.add_argument(
        "--kinds",
        metavar="K1,K2",
        default=None,
        help=f"corrupt-rows: the kinds to inject (default all: {','.join(CORRUPT_KINDS)})",
    )
    inject.add_argument(
        "--count",
        action="append",
        default=None,
        metavar="N|KIND=N",
        help="corrupt-rows: rows per kind, for every kind (N) or one kind (KIND=N); repeatable",
    )
    inject.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"long-query: how long the query sleeps (default {LONG_QUERY_SECONDS}); exchange-slow: the delay",
    )
    inject.set_defaults(func=_cmd_lab_inject)

    restart = lab_sub.add_parser(
        "restart",
        parents=[common],
        help="restart engines like a process restart (fixes crash, hang, error-rate and latency; halt flags "
        "and other faults stay)",
        description="Restart engines: each stops trading, drops its connections and in-memory state (API "
        "halts), clears the faults whose cause is in the process (crash, hang, and the leak-like error-rate and "
        "latency), and listens again on the same port. Halts held in the EMERGENCY_STOP file or in redis still "
        "apply, so a flagged engine comes back halted; disk-pressure, unrecoverable and the dependency faults "
        "survive a restart. `restart postgres` or `restart redis` restarts the lab's database or Redis on its "
        "port (started if it is down; Redis comes back empty, as the lab keeps no Redis data on disk).",
    )
    restart.add_argument("engines", metavar="ENGINE", nargs="*",
                         help="engine names, e.g. engine-003; or one service: postgres, redis")
    restart.add_argument("--all", action="store_true", help="every engine")
    restart.add_argument("--json", action="store_true", help="machine-readable output")
    restart.set_defaults(func=_cmd_lab_restart)

    venue_key = lab_sub.add_parser(
        "venue-key",
        parents=[common],
        help="issue a new API key at the lab exchange for engines' accounts (prints JSON with the secrets)",
        description="As an exchange's key management page does: a new key for each engine's account, printed as "
        "JSON {engine: {key, secret, credential}} on stdout (secrets: capture it, do not log it). The old keys "
        "keep working until they are revoked (POST /lab/keys/revoke on the exchange's control API).",
    )
    venue_key.add_argument("engines", metavar="ENGINE", nargs="+", help="engine names, or '*' for all")
    venue_key.set_defaults(func=_cmd_lab_venue_key)

    consumers = lab_sub.add_parser(
        "consumers",
        parents=[common],
        help="run N consumers of a stream's group, replacing the ones named (the lab's runtime for streams)",
        description="The lab's stream consumers run in the engines process. --replace stops the consumers named "
        "(what they hold stays pending under their names, as with a replaced pod) and new ones with new names "
        "make up --count.",
    )
    consumers.add_argument("stream", metavar="STREAM", help="notify.events or orchestrator.commands")
    consumers.add_argument("--count", type=int, required=True, help="how many consumers to run (1-16)")
    consumers.add_argument("--replace", action="append", default=[], metavar="NAME",
                           help="a consumer to stop and replace; repeatable")
    consumers.add_argument("--json", action="store_true", help="machine-readable output")
    consumers.set_defaults(func=_cmd_lab_consumers)

    firewall = lab_sub.add_parser(
        "firewall",
        parents=[common],
        help="enable or disable the lab firewall of engines (allow-list of sources)",
        description=f"Simulated inbound filtering: every caller is on 127.0.0.1, so a request's source is its "
        f"{SOURCE_HEADER} header ('public' when absent). While enabled, sources outside the allow-list get 403 "
        f"and the connection is closed; '{SOURCE_MANAGEMENT}' is always allowed and the lab's control API is "
        "never filtered. Settings survive engine restarts.",
    )
    firewall.add_argument("engines", metavar="ENGINE", nargs="*", help="engine names, e.g. engine-003")
    firewall.add_argument("--all", action="store_true", help="every engine")
    onoff = firewall.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--enable", dest="enabled", action="store_true", default=None, help="enable the firewall")
    onoff.add_argument("--disable", dest="enabled", action="store_false", help="disable the firewall")
    firewall.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="NAME",
        help=f"allowed source, repeatable; replaces the allow-list ('{SOURCE_MANAGEMENT}' is always in it)",
    )
    firewall.add_argument("--json", action="store_true", help="machine-readable output")
    firewall.set_defaults(func=_cmd_lab_firewall)

    down = lab_sub.add_parser("down", parents=[common], help="stop the lab and delete its directory")
    down.add_argument("--keep", action="store_true", help="keep the lab directory (logs)")
    down.set_defaults(func=_cmd_lab_down)


def _cmd_lab_up(args: argparse.Namespace) -> int:
    lab = Lab(args.dir)
    started = time.monotonic()
    st = lab.up(
        engines=args.engines,
        mix=args.mix,
        faults=parse_fault_specs(args.fault),
        order_interval=args.order_interval,
        wait=args.wait,
        timeout=args.timeout,
        exchange=args.exchange,
        monitoring=args.monitoring,
        monitoring_for_max=None if str(args.lab_for).lower() == "none" else args.lab_for,
    )
    pg, rd, ctl = st["postgres"], st["redis"], st["control"]
    faulty = [f"{e['name']}={','.join(e['faults'])}" for e in st["engines"] if e["faults"]]
    print(f"lab up in {time.monotonic() - started:.1f}s: {len(st['engines'])} engines in {lab.lab_dir}")
    print(f"  postgres  {pg['host']}:{pg['port']}  db {pg['dbname']}, user {pg['user']}")
    print(f"  redis     {rd['host']}:{rd['port']}")
    if st.get("pgbouncer"):
        pb = st["pgbouncer"]
        print(f"  pgbouncer {pb['host']}:{pb['port']}  (the engines' orders go through it)")
    print(f"  control   {ctl['host']}:{ctl['port']}  (engines pid {st['engines_pid']})")
    if st.get("exchange"):
        ex = st["exchange"]
        print(f"  exchange  {ex['url']}  (Kraken's REST API; one account per engine)")
    if st.get("monitoring"):
        mon = st["monitoring"]
        print(f"  prometheus   {mon['prometheus']['url']}  (scrape every {mon['scrape_interval']})")
        print(f"  alertmanager {mon['alertmanager']['url']}  (webhook to {mon['webhook']['host']}:"
              f"{mon['webhook']['port']}{mon['webhook']['path']}: `tradeops eda start`)")
        for cut in mon["rules_shortened"]:
            print(f"  lab rule     {cut['alert']}: for {cut['original']} cut to {cut['now']} (lab only)")
    if faulty:
        print(f"  faults    {' '.join(faulty)}")
    print(f"  state     {lab.state_path} (holds the secrets; mode 0600)")
    return EXIT_OK


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _status_rows(status: dict[str, Any]) -> list[list[str]]:
    rows = []
    for e in status["engines"]:
        trading = {True: "yes", False: "NO", None: "?"}[e.get("trading_active")]
        if "crash" in (e.get("faults") or []):
            trading = "down"
        rows.append(
            [
                e["name"],
                str(e["port"]),
                ",".join(e["methods"]),
                ",".join(e.get("faults") or []) or "-",
                trading,
                e.get("halt_source") or "-",
                _fmt_time(e.get("halted_at")),
                str(e.get("orders_in_db", 0)),
                _fmt_time(e.get("last_order_at")),
                "?" if e.get("restarts") is None else str(e["restarts"]),
                _fmt_time(e.get("started_at")),
                _fmt_firewall(e.get("firewall")),
            ]
        )
    return rows


_STATUS_HEADERS = [
    "ENGINE",
    "PORT",
    "METHODS",
    "FAULTS",
    "TRADING",
    "HALT SOURCE",
    "HALTED AT",
    "ORDERS",
    "LAST ORDER",
    "RESTARTS",
    "STARTED",
    "FIREWALL",
]


def _fmt_firewall(fw: dict[str, Any] | None) -> str:
    if not fw:
        return "?" if fw is None else "-"
    return f"on(allow {','.join(fw['allow'])})" if fw.get("enabled") else "-"


def _status_summary(status: dict[str, Any]) -> list[str]:
    def comp(name: str, c: dict[str, Any]) -> str:
        state = "up" if c.get("alive") and c.get("reachable", True) else "DOWN"
        return f"{name} {c['host']}:{c['port']} (pid {c['pid']}) {state}"

    ep = status["engines_process"]
    lines = [
        f"lab {status['lab_dir']}: {'healthy' if status['healthy'] else 'UNHEALTHY'}, up {status['uptime_s']:.0f}s",
        "  " + comp("postgres", status["postgres"]),
        "  " + comp("redis", status["redis"]),
        *(["  " + comp("pgbouncer", status["pgbouncer"])] if status.get("pgbouncer") else []),
        f"  engines pid {ep['pid']} {'up' if ep['alive'] else 'DOWN'}, control "
        f"{status['control']['host']}:{status['control']['port']}",
        f"  secrets {status.get('secrets_file') or '-'} (the engines' admin tokens; re-read on change and SIGHUP)",
    ]
    if status.get("exchange"):
        ex = status["exchange"]
        working = ex.get("working_orders") or {}
        faults = ex.get("faults") or {}
        active = sorted(faults.get("venue") or {}) + [f"{f}({','.join(n)})" for f, n in
                                                      sorted((faults.get("accounts") or {}).items())]
        lines.append("  " + comp("exchange", ex) + f", {sum(working.values())} working order(s) over "
                     f"{len(working)} account(s)" + (f", faults {' '.join(active)}" if active else ""))
    lines += _db_fault_status_lines(status.get("db_faults") or {})
    lines += [f"  error: {err}" for err in status["errors"]]
    return lines


def _print_status(status: dict[str, Any]) -> None:
    rows = _status_rows(status)
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # pragma: no cover - rich is a dependency
            pass
        else:
            console = Console()
            for line in _status_summary(status):
                console.print(line, highlight=False)
            table = Table(*_STATUS_HEADERS, box=None, pad_edge=False)
            for row in rows:
                style = "red" if row[4] in ("NO", "down") else None
                table.add_row(*row, style=style)
            console.print(table)
            return
    print("\n".join(_status_summary(status)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_STATUS_HEADERS)]
    for row in [_STATUS_HEADERS, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cmd_lab_status(args: argparse.Namespace) -> int:
    status = Lab(args.dir).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return EXIT_OK if status["healthy"] else EXIT_FAILURE


def _parse_counts(items: list[str] | None) -> int | dict[str, int] | None:
    """``--count`` values: ``N`` (every kind) and ``KIND=N`` (one kind) into what ``Lab.inject`` takes."""
    if not items:
        return None
    counts: dict[str, int] = {}
    for item in items:
        kind, sep, value = item.rpartition("=")
        kind = kind.strip() if sep else "*"
        try:
            counts[kind] = int(value)
        except ValueError:
            raise LabInputError(f"bad --count {item!r}: expected N or KIND=N") from None
    return counts["*"] if list(counts) == ["*"] else counts


def _cmd_lab_inject(args: argparse.Namespace) -> int:
    engines = list(args.engines)
    if args.all:
        engines.append(ALL)
    if args.fault in DB_FAULTS:
        return _cmd_lab_inject_db(args, engines)
    if args.fault == FAULT_LEAKED_SECRET:
        return _cmd_lab_inject_leak(args, engines)
    if args.fault == FAULT_KEY_EXPIRED:
        res = Lab(args.dir).inject(args.fault, engines or None, clear=args.clear)
        print(json.dumps(res, indent=2) if args.json else f"{args.fault} injected: {res['expired']} key(s) expired")
        return EXIT_OK
    if args.fault == FAULT_WS_DOWN:
        res = Lab(args.dir).inject(args.fault, engines or None, clear=args.clear)
        print(json.dumps(res, indent=2) if args.json else f"{args.fault} {'cleared' if args.clear else 'injected'}: "
              f"the market-data feed is {'wedged' if res['wedged'] else 'serving'} ({res['clients']} client(s))")
        return EXIT_OK
    if args.fault in STREAM_FAULTS:
        counts = _parse_counts(args.count)
        if args.kinds is not None or args.seconds is not None or isinstance(counts, dict):
            raise LabInputError(f"only --count N (the transient messages of {FAULT_POISON}) applies to {args.fault}")
        res = Lab(args.dir).inject(args.fault, engines or None, clear=args.clear, count=counts)
        print(json.dumps(res, indent=2) if args.json else f"{args.fault} {'cleared' if args.clear else 'injected'}: "
              + ", ".join(f"{k} {v}" for k, v in res.items() if k != "fault"))
        return EXIT_OK
    if args.fault in SERVICE_FAULTS:
        res = Lab(args.dir).inject(args.fault, engines or None, clear=args.clear, kinds=args.kinds,
                                   count=_parse_counts(args.count), seconds=args.seconds)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(f"{args.fault} {'cleared' if args.clear else 'injected'}: "
                  + ", ".join(f"{k} {v}" for k, v in res.items() if k not in ("fault", "record", "cleared")))
        return EXIT_OK
    if args.fault in EXCHANGE_FAULTS:
        if args.kinds is not None or args.count is not None:
            raise LabInputError(f"--kinds and --count do not apply to {args.fault}")
        faults = Lab(args.dir).inject(args.fault, engines or None, clear=args.clear, seconds=args.seconds)
        if args.json:
            print(json.dumps(faults, indent=2))
        else:
            print(f"{args.fault} {'cleared' if args.clear else 'injected'}; exchange faults now: "
                  f"{json.dumps(faults, sort_keys=True)}")
        return EXIT_OK
    if args.kinds is not None or args.count is not None or args.seconds is not None:
        raise LabInputError(
            f"--kinds and --count only apply to {FAULT_CORRUPT_ROWS}, --seconds only to {FAULT_LONG_QUERY}"
        )
    if not engines:
        raise LabInputError("name at least one engine (or use --all)")
    result = Lab(args.dir).inject(args.fault, engines, clear=args.clear)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "cleared" if args.clear else "injected"
        print(f"{args.fault} {verb} on {len(result)} engine(s)")
        for e in result:
            print(f"  {e['name']}: faults {','.join(e['faults']) or '-'}")
    return EXIT_OK


def _cmd_lab_inject_leak(args: argparse.Namespace, engines: list[str]) -> int:
    if args.kinds is not None or args.count is not None or args.seconds is not None:
        raise LabInputError(f"--kinds, --count and --seconds do not apply to {FAULT_LEAKED_SECRET}")
    result = Lab(args.dir).inject(FAULT_LEAKED_SECRET, engines or None, clear=args.clear)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    r = result.get("leaked")
    if args.clear:
        if not r:
            print(f"{FAULT_LEAKED_SECRET}: not active, nothing to clear")
            return EXIT_OK
        print(f"{FAULT_LEAKED_SECRET} cleared after {r['calls']} calls")
    else:
        verb = "already active" if result.get("already") else "injected"
        print(
            f"{FAULT_LEAKED_SECRET} {verb}: a rogue client calls {r['endpoint']} on {len(r['engines'])} engine(s) "
            f"every {r['interval']}s with token {r['token_fingerprint']}; record {result.get('record')}"
        )
    print(
        f"  calls {r['calls']}: {r['successes']} ok, {r['unauthorized']} unauthorized (401), "
        f"{r['blocked']} blocked (403), {r['errors']} other"
    )
    return EXIT_OK


def _cmd_lab_firewall(args: argparse.Namespace) -> int:
    engines = list(args.engines)
    if args.all:
        engines.append(ALL)
    if not engines:
        raise LabInputError("name at least one engine (or use --all)")
    result = Lab(args.dir).firewall(engines, enabled=bool(args.enabled), allow=args.allow)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"firewall {'enabled' if args.enabled else 'disabled'} on {len(result)} engine(s)")
    for e in result:
        fw = e["firewall"]
        state = "on" if fw["enabled"] else "off"
        print(f"  {e['name']}: {state}, allow {','.join(fw['allow'])}, blocked {fw['blocked']}")
    return EXIT_OK


def _cmd_lab_inject_db(args: argparse.Namespace, engines: list[str]) -> int:
    if engines:
        raise LabInputError(
            f"{args.fault} is a database fault: it applies to the whole lab and takes no engine names or --all"
        )
    result = Lab(args.dir).inject(
        args.fault, clear=args.clear, kinds=args.kinds, count=_parse_counts(args.count), seconds=args.seconds
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for line in _db_fault_lines(args.fault, result, verb="cleared" if args.clear else "injected"):
        print(line)
    return EXIT_OK


def _db_fault_lines(fault: str, r: dict[str, Any], verb: str) -> list[str]:
    """Human lines for the result of injecting or clearing a database fault."""
    if r.get("already"):
        verb = "already active"
    if fault == FAULT_CORRUPT_ROWS:
        lines = [f"{fault} {verb}: {r['total']} bad rows; record {r['record']}"]
        for kind, entry in r["kinds"].items():
            ids = "; ".join(f"{table} {','.join(map(str, v))}" for table, v in entry["ids"].items())
            lines.append(f"  {kind:<22} {entry['count']:>3}  {ids}")
        return lines
    if fault == FAULT_INDEX_CORRUPTION:
        if r.get("cleared"):
            return [f"{fault} cleared: {r['action']}; bt_index_check {r['amcheck']['status']}"]
        error = (r["amcheck"].get("error") or "").splitlines()
        return [
            f"{fault} {verb}: {r['index']} block {r['block']} item {r['item']} ({r['relation_file']})",
            f"  bt_index_check: {r['amcheck']['status']}" + (f" ({error[0]})" if error else ""),
            f"  postgres restarted as pid {r['postgres_pid']} (down {r['postgres_down_s']:.2f}s), engines "
            + ("reconnected" if r.get("engines_reconnected_s") is not None else "NOT reconnected yet"),
        ] + ([f"  ended sessions: {', '.join(r['ended_sessions'])}"] if r.get("ended_sessions") else [])
    if fault == FAULT_TABLE_BLOAT:
        if r.get("cleared"):
            return [f"{fault} cleared: {BLOAT_TABLE} dropped"]
        return [f"{fault} {verb}: {r['table']} holds {r['dead_rows']} dead rows over {r['rows']} live ones, "
                "autovacuum off (VACUUM ANALYZE fixes it)"]
    if r.get("cleared") is False:
        return [f"{fault}: not active, nothing to clear"]
    if r.get("cleared"):
        if fault == FAULT_LONG_QUERY:
            return [f"{fault} cleared: backend {r['backend_pid']} ({r['query']}) {r.get('outcome') or 'ended'}"]
        return [
            f"{fault} cleared: lock on {r['table']} released; backends {r['blocker_pid']} (blocker) and "
            f"{r['waiter_pid']} (waiter, {r.get('waiter_outcome') or 'ended'}) gone"
        ]
    return [f"{fault} {verb}: {_session_summary(fault, r)}"]


def _session_summary(fault: str, r: dict[str, Any]) -> str:
    if fault == FAULT_LONG_QUERY:
        age = f", running {r['query_age_s']:.0f}s" if r.get("query_age_s") is not None else ""
        return f"backend {r['backend_pid']} ({r['application_name']}) {r['query']}{age}"
    return (
        f"backend {r['blocker_pid']} ({r['blocker_application_name']}) holds {r['mode']} on {r['table']}; "
        f"backend {r['waiter_pid']} ({r['waiter_application_name']}) waits in {r['waiter_query']!r}"
    )


def _db_fault_status_lines(faults: dict[str, Any]) -> list[str]:
    lines = []
    for fault, f in faults.items():
        state = {True: "ACTIVE", False: "not active", None: "recorded"}[f.get("active")]
        if fault == FAULT_CORRUPT_ROWS:
            counts = ", ".join(f"{k} {n}" for k, n in f["counts"].items())
            detail = f"{f['total']} rows ({counts}), last at {_fmt_time(f['injected_at'])}; not repaired by the lab"
        elif fault == FAULT_INDEX_CORRUPTION:
            detail = f"{f.get('index')} block {f.get('block')} item {f.get('item')}, {_fmt_time(f.get('injected_at'))}"
            if f.get("active") is False:
                state = "repaired (reindexed)"
        elif fault == FAULT_TABLE_BLOAT:
            detail = f"{f.get('table')}: {f.get('dead_rows')} dead rows made at {_fmt_time(f.get('injected_at'))}"
        elif f.get("active") is False:  # ended behind the lab's back (pg_terminate_backend, the sleep is over)
            state = "ended"
            if fault == FAULT_LONG_QUERY:
                outcome = (f.get("outcome") or "gone").splitlines()[0]
                detail = f"backend {f['backend_pid']} {f['query']} ({outcome}); clear to forget it"
            else:
                detail = f"blocker backend {f['blocker_pid']} gone, lock on {f['table']} released; clear to forget it"
        else:
            detail = _session_summary(fault, f)
        lines.append(f"  db fault {fault} {state}: {detail}")
    return lines


def _cmd_lab_venue_key(args: argparse.Namespace) -> int:
    print(json.dumps(Lab(args.dir).issue_venue_keys(args.engines)))
    return EXIT_OK


def _cmd_lab_consumers(args: argparse.Namespace) -> int:
    res = Lab(args.dir).scale_consumers(args.stream, args.count, args.replace)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['stream']} ({res['group']}): consumers {', '.join(res['consumers'])}"
              + (f"; stopped {', '.join(res['stopped'])}" if res["stopped"] else ""))
    return EXIT_OK


def _cmd_lab_restart(args: argparse.Namespace) -> int:
    engines = list(args.engines)
    services = [e for e in engines if e in SERVICES]
    if services:
        if len(engines) != 1 or args.all:
            raise LabInputError(f"restart one service ({', '.join(SERVICES)}) at a time, without engine names")
        res = Lab(args.dir).restart_service(services[0])
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(f"{res['service']} {'was already running' if res.get('already') else 'restarted'}, pid {res['pid']}")
        return EXIT_OK
    if args.all:
        engines.append(ALL)
    if not engines:
        raise LabInputError("name at least one engine (or use --all)")
    result = Lab(args.dir).restart(engines)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"restarted {len(result)} engine(s)")
        for e in result:
            state = "trading" if e["trading_active"] else "NOT trading"
            if e["halted"]:
                state = f"HALTED ({e['halt_source']})"
            print(
                f"  {e['name']}: port {e['port']}, restart #{e['restarts']}, {state}, "
                f"faults {','.join(e['faults']) or '-'}"
            )
    return EXIT_OK


def _cmd_lab_down(args: argparse.Namespace) -> int:
    from . import eda

    lab = Lab(args.dir)
    if eda.stop(lab):  # the rulebook started for this lab (`tradeops eda start`) goes first
        print("ansible-rulebook stopped")
    lab.down(keep=args.keep)
    print(f"lab in {lab.lab_dir} is down" + (" (directory kept)" if args.keep else ""))
    return EXIT_OK


# -- entry point -------------------------------------------------------------------------------------------


# One registration function per top-level command group; add new groups (drill, run) here.
def _cmd_drill_p0(args: argparse.Namespace) -> int:
    from .drill import run_p0_drill

    faults = parse_fault_specs(args.fault) if args.fault else None
    outcome = run_p0_drill(engines=args.engines, faults=faults, keep=args.keep)
    return EXIT_OK if outcome.ok else EXIT_FAILURE


def _add_drill_commands(subparsers: Any) -> None:
    drill = subparsers.add_parser("drill", help="run an incident drill against a fresh lab, with its report")
    kinds = drill.add_subparsers(dest="drill", metavar="DRILL", required=True)
    p0 = kinds.add_parser(
        "p0",
        help="P0 outage: halt every engine with playbooks/p0_outage.yml and prove it from PostgreSQL",
        description="Start a lab, run playbooks/p0_outage.yml, check in PostgreSQL that no engine wrote an "
        "order after its verified halt, print the report, tear the lab down. Exit 0 only if all of it holds.",
    )
    p0.add_argument("--engines", type=int, default=20, help="number of lab engines (default 20)")
    p0.add_argument(
        "--fault",
        action="append",
        metavar="ENGINE=FAULT",
        help="faults to inject (default: engine-002=killswitch-broken); repeatable",
    )
    p0.add_argument("--keep", action="store_true", help="leave the drill lab running afterwards")
    p0.set_defaults(func=_cmd_drill_p0)
    auto = kinds.add_parser(
        "auto",
        help="closed loop: fault -> Prometheus alert -> Alertmanager -> ansible-rulebook -> verified halt, timed",
        description="Start a lab with Prometheus, Alertmanager and ansible-rulebook (the collection's rulebook), "
        "inject error-rate on one engine and time, with no human step, each interval from the fault to the "
        "engine verified halted and its working orders cancelled at the venue; then clear the fault and show "
        "that the resolved alert starts nothing. The rules' `for:` windows are cut for the lab (--lab-for), "
        "and the drill says so. Exit 0 only if all of it holds and the fault-to-halt time is within --target.",
    )
    auto.add_argument("--engines", type=int, default=10, help="number of lab engines (default 10)")
    auto.add_argument("--engine", default="engine-003", help="the engine to fault (default engine-003)")
    auto.add_argument("--lab-for", default="3s", metavar="DURATION",
                      help="cut each alert rule's `for:` to at most this (default 3s)")
    auto.add_argument("--target", type=float, default=30.0, metavar="SECONDS",
                      help="fault to verified halt must take at most this (default 30)")
    auto.add_argument("--keep", action="store_true", help="leave the drill lab and the rulebook running")
    auto.set_defaults(func=_cmd_drill_auto)


def _cmd_drill_auto(args: argparse.Namespace) -> int:
    from .drill_auto import run_auto_drill

    outcome = run_auto_drill(engines=args.engines, engine=args.engine, lab_for=args.lab_for, keep=args.keep,
                             target=args.target)
    return EXIT_OK if outcome.ok else EXIT_FAILURE


# `tradeops eda`: ansible-rulebook for a lab that runs with --monitoring (src/tradeops/eda.py).
def _add_eda_commands(subparsers: Any) -> None:
    eda = subparsers.add_parser("eda", help="ansible-rulebook with the collection's rulebook, for a lab with "
                                "monitoring (start, stop, status)")
    sub = eda.add_subparsers(dest="eda_command", metavar="EDA_COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=None, help="the lab directory (default: $TRADEOPS_LAB_DIR or ./.lab)")
    start = sub.add_parser("start", parents=[common], help="start ansible-rulebook in the background")
    start.add_argument("--allow-repair", action="append", default=[], metavar="INCIDENT",
                       help="an incident whose repair phases an alert may run too (never resume); repeatable")
    start.set_defaults(func=_cmd_eda_start)
    stop = sub.add_parser("stop", parents=[common], help="stop it")
    stop.set_defaults(func=_cmd_eda_stop)
    stat = sub.add_parser("status", parents=[common], help="its state, counters and automatic runs (JSON)")
    stat.set_defaults(func=_cmd_eda_status)


def _cmd_eda_start(args: argparse.Namespace) -> int:
    from . import eda
    from .drill import find_root

    info = eda.start(Lab(args.dir), find_root(), allow_repair=args.allow_repair)
    print(f"ansible-rulebook running (pid {info['pid']}), ready in {info['ready_after']}s; webhook "
          f"{info['webhook']['host']}:{info['webhook']['port']}{info['webhook']['path']}; log {info['log']}")
    return EXIT_OK


def _cmd_eda_stop(args: argparse.Namespace) -> int:
    from . import eda

    print("ansible-rulebook stopped" if eda.stop(Lab(args.dir)) else "no ansible-rulebook was running")
    return EXIT_OK


def _cmd_eda_status(args: argparse.Namespace) -> int:
    from . import eda

    lab = Lab(args.dir)
    info = eda.status(lab)
    out = {"running": info is not None, "rulebook": info,
           "webhook": eda.webhook_counts(lab) if info else None,
           "alerts": eda.journal(lab),
           "runs": [{k: (r["result"] or {}).get(k) for k in ("run_id", "incident", "outcome", "exit_code")}
                    | {"running": r["running"]} for r in eda.runs(lab)]}
    print(json.dumps(out, indent=1))
    return EXIT_OK if info else EXIT_FAILURE


# -- run, incidents, report (the runner: src/tradeops/runner) -----------------------------------------------


def _add_run_commands(subparsers: Any) -> None:
    from .runner.cli import add_run_commands

    add_run_commands(subparsers, _Parser)


def _add_incidents_commands(subparsers: Any) -> None:
    from .runner.cli import add_incidents_commands

    add_incidents_commands(subparsers, _Parser)


def _add_report_commands(subparsers: Any) -> None:
    from .runner.cli import add_report_commands

    add_report_commands(subparsers, _Parser)


COMMAND_GROUPS: list[Callable[[Any], None]] = [
    _add_lab_commands,
    _add_drill_commands,
    _add_eda_commands,
    _add_run_commands,
    _add_incidents_commands,
    _add_report_commands,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``tradeops`` parser with every command group registered into its ``subparsers``."""
    parser = _Parser(prog="tradeops", description="Incident remediation for trading systems.")
    parser.add_argument("--version", action="version", version=f"tradeops {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tradeops``; returns the exit code (0 ok, 1 failure, 3 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version / usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.func(args))
    except LabInputError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LabError as exc:
        print(f"tradeops: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("tradeops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
