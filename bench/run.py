"""`make bench`: the benchmark harness (issue 8). Writes bench/results/<date>.json and <date>.md and, after a
complete run, the README's Benchmarks section.

Sections (``--only``, default all):

- ``halt``: time to halt N lab engines (``--engines``, default 20,200) five ways, from process start to
  the last engine's own halt record: a. ``ansible-playbook p0_outage.yml --tags contain``, b. ``tradeops
  run p0_outage --tags contain``, c. one ``uri`` task per host (forks=50), d. a sequential curl loop, e. a
  bare thread-pool fan-out (``--paths``). See bench/halt.py.
- ``pg``: pg_integrity's one-pass scan against one query per check and ``count(*)``, at ``--pg-rows``
  (default 1M,10M) trades, warm cache; writer INSERT p99 with and without the scan. See bench/pg.py.
- ``mttr``: the P0 drill (20 engines, 3 crashed, 1 hung), phase by phase. See bench/mttr.py.
- ``rotate``: rotate 20 secrets, failed calls of a polling consumer. See bench/rotate.py.
- ``venue``: venue_guard cancel_all on 20 accounts x 100 resting orders against a per-order ccxt loop, and
  under the exchange's rate-limit fault. See bench/venue.py.
- ``incidents``: fault to GO of each scoped incident playbook (service_degraded, trading_halted,
  model_degradation, performance_degradation, agent_failure, and db_connectivity with PostgreSQL down, Redis down,
  and lock chains with Redis out of memory) on a 20-engine lab (``--incident-runs``, default 3).
  See bench/incidents.py.
- ``loop``: the closed loop, fault to verified halt through Prometheus, Alertmanager and ansible-rulebook
  (``tradeops drill auto``, 10 engines, ``--loop-runs``, default 3). See bench/loop.py.
- ``scale``: ``p0_outage.yml`` end to end on 200 healthy engines, and the P0 drill's MTTR on 200 engines with 10 %
  faulted (``--scale-runs``, default 3). See bench/scale.py.
- ``tests``: the wall time of the last ``make test``, per tier, from its JUnit XML. See bench/test_times.py.

Every figure is the median, min and max of ``--runs`` runs (default 5). The machine load average is recorded
at the start and the end of the run and of each section. Exits 1 if a run failed (e.g. an engine was not
halted), after writing the results. A benchmark, not a test: only a smoke run (N=5, one run) is in
``make test``.

    python bench/run.py                                   # everything (make bench), ~20 min on 2 cores
    python bench/run.py --only halt --engines 5 --runs 1 --paths a,e --out-dir /tmp/b   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, ROOT, loadavg, log, machine  # noqa: E402
from report import markdown, targets, update_readme  # noqa: E402

SECTIONS = ("halt", "pg", "mttr", "rotate", "venue", "incidents", "loop", "scale", "tests")
DEFAULT_ENGINES = "20,200,1000"
# the per-host baselines (c: a uri task per host, d: a curl loop) take minutes at 1,000 engines: not run there
SKIP_AT = {(1000, "c"): 0, (1000, "d"): 0}
DEFAULT_PATHS = "a,b,c,d,e"
DEFAULT_PG_ROWS = "1000000,10000000"


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def _list(text: str, allowed: tuple[str, ...] | str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} (known: {', '.join(allowed)})")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run, comma-separated (default: all)")
    p.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    p.add_argument("--engines", default=DEFAULT_ENGINES, help="halt: lab sizes (default 20,200,1000)")
    p.add_argument("--paths", default=DEFAULT_PATHS, help="halt: paths a..e (default all)")
    p.add_argument("--uri-runs-at-200", type=int, default=None,
                   help="halt: runs of path c at N=200 only (default: --runs; it takes ~40 s a run)")
    p.add_argument("--pg-rows", default=DEFAULT_PG_ROWS, help="pg: trades rows per dataset (default 1M,10M)")
    p.add_argument("--pg-writer-rows", default=None,
                   help="pg: the datasets with the writer-latency test (default: every one)")
    p.add_argument("--writer-seconds", type=float, default=6.0, help="pg: length of each writer window")
    p.add_argument("--mttr-engines", type=int, default=20)
    p.add_argument("--rotate-secrets", type=int, default=20)
    p.add_argument("--no-rotate-control", action="store_true",
                   help="rotate: skip the control run (staging=direct, which must show failed calls)")
    p.add_argument("--venue-accounts", type=int, default=20, help="venue: accounts (default 20)")
    p.add_argument("--venue-orders", type=int, default=100, help="venue: resting orders per account (default 100)")
    p.add_argument("--incident-runs", type=int, default=3,
                   help="incidents: runs of each playbook (default 3; each takes 10-40 s plus a lab start)")
    p.add_argument("--scale-runs", type=int, default=3, help="scale: runs of each figure (default 3)")
    p.add_argument("--scale-engines", type=int, default=200, help="scale: engines (default 200)")
    p.add_argument("--loop-runs", type=int, default=3, help="loop: runs of the closed-loop drill (default 3)")
    p.add_argument("--out-dir", default=str(BENCH / "results"), help="where <date>.json/.md go")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="run nothing: write the Markdown (and with --readme yes, the README section) of a results JSON")
    p.add_argument("--readme", choices=("auto", "yes", "no"), default="auto",
                   help="update README's Benchmarks section (auto: only after a complete default run)")
    args = p.parse_args(argv)
    args.sections = _list(args.only, SECTIONS)
    args.path_list = _list(args.paths, "abcde")
    args.engine_list = _ints(args.engines)
    args.pg_sizes = _ints(args.pg_rows)
    args.writer_sizes = _ints(args.pg_writer_rows) if args.pg_writer_rows else list(args.pg_sizes)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def complete(args: argparse.Namespace) -> bool:
    return (set(args.sections) == set(SECTIONS) and args.runs >= 5 and args.engines == DEFAULT_ENGINES
            and args.paths == DEFAULT_PATHS and args.pg_rows == DEFAULT_PG_ROWS)


def failed_runs(res: dict[str, Any]) -> list[str]:
    out = []
    for n, sec in res.get("halt", {}).get("by_engines", {}).items():
        for p, entry in sec["paths"].items():
            if entry["failed_runs"]:
                out.append(f"halt N={n} path {p}: {entry['failed_runs']} failed run(s)")
    if res.get("mttr", {}).get("failed_runs"):
        out.append(f"mttr: {res['mttr']['failed_runs']} drill(s) did not PASS")
    if res.get("rotate", {}).get("failed_runs"):
        out.append(f"rotate: {res['rotate']['failed_runs']} failed run(s)")
    if res.get("venue", {}).get("failed_runs"):
        out.append(f"venue: {res['venue']['failed_runs']} failed run(s)")
    if res.get("scale", {}).get("failed_runs"):
        out.append(f"scale: {res['scale']['failed_runs']} failed run(s)")
    if res.get("loop", {}).get("failed_runs"):
        out.append(f"loop: {res['loop']['failed_runs']} failed run(s)")
    if res.get("incidents", {}).get("failed_runs"):
        out.append(f"incidents: {res['incidents']['failed_runs']} failed run(s)")
    return out


def render(args: argparse.Namespace) -> int:
    json_path = Path(args.render)
    res = json.loads(json_path.read_text(encoding="utf-8"))
    res["targets"] = targets(res)
    table = markdown(res)
    json_path.with_suffix(".md").write_text(table, encoding="utf-8")
    if args.readme == "yes":
        update_readme(ROOT / "README.md", table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
    started = time.time()
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),
        "machine": machine(),
        "options": {"sections": args.sections, "runs": args.runs, "engines": args.engine_list,
                    "paths": args.path_list, "uri_runs_at_200": args.uri_runs_at_200, "pg_rows": args.pg_sizes,
                    "pg_writer_rows": args.writer_sizes, "writer_seconds": args.writer_seconds,
                    "mttr_engines": args.mttr_engines, "rotate_secrets": args.rotate_secrets},
    }
    log(f"start: sections {','.join(args.sections)}, {args.runs} run(s) each; load {res['loadavg_start']}")
    with tempfile.TemporaryDirectory(prefix="tradeops-bench-") as tmp:
        work = Path(tmp)
        if "halt" in args.sections:
            from halt import run_halt

            runs_for = dict(SKIP_AT)
            if args.uri_runs_at_200:
                runs_for[(200, "c")] = args.uri_runs_at_200
            res["halt"] = run_halt(args.engine_list, args.path_list, args.runs, work, runs_for)
        if "pg" in args.sections:
            from pg import run_pg

            res["pg"] = run_pg(args.pg_sizes, args.runs, work, args.writer_sizes, args.writer_seconds)
        if "mttr" in args.sections:
            from mttr import run_mttr

            res["mttr"] = run_mttr(args.runs, work, args.mttr_engines)
        if "rotate" in args.sections:
            from rotate import run_rotate

            res["rotate"] = run_rotate(args.runs, work, args.rotate_secrets, not args.no_rotate_control)
        if "venue" in args.sections:
            from venue import run_venue

            res["venue"] = run_venue(args.runs, work, args.venue_accounts, args.venue_orders)
        if "incidents" in args.sections:
            from incidents import run_incidents

            res["incidents"] = run_incidents(args.incident_runs or args.runs, work)
        if "loop" in args.sections:
            from loop import run_loop

            res["loop"] = run_loop(args.loop_runs or args.runs, work)
        if "tests" in args.sections:
            from test_times import run_test_times

            res["tests"] = run_test_times()
        if "scale" in args.sections:
            from scale import run_scale

            res["scale"] = run_scale(args.scale_runs or args.runs, work, args.scale_engines)
    res["loadavg_end"] = loadavg()
    res["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res["duration_s"] = round(time.time() - started, 1)
    res["targets"] = targets(res)
    res["failed"] = failed_runs(res)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{res['date']}.json"
    md_path = out_dir / f"{res['date']}.md"
    json_path.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    table = markdown(res)
    md_path.write_text(table, encoding="utf-8")
    if args.readme == "yes" or (args.readme == "auto" and complete(args)):
        update_readme(ROOT / "README.md", table)
        log("README.md: Benchmarks section updated")
    log(f"done in {res['duration_s'] / 60:.1f} min; load {res['loadavg_end']}; wrote {json_path} and {md_path}")
    print(table)
    print(json.dumps({"results": str(json_path), "markdown": str(md_path), "failed": res["failed"]}))
    for problem in res["failed"]:
        log(f"FAILED: {problem}")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
