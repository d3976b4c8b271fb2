"""The Markdown table of a results JSON, the targets, and the README's Benchmarks section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README_START = "<!-- bench:start (written by `make bench`; edit bench/report.py instead) -->"
README_END = "<!-- bench:end -->"


def fmt(s: dict[str, Any] | None, unit: str = "", digits: int = 2) -> str:
    """``median [min–max]`` of a summary dict."""
    if not s or s.get("median") is None:
        return "—"

    def f(x: float) -> str:
        return f"{x:.{digits}f}"

    if s.get("n", 0) <= 1 or s["min"] == s["max"]:
        return f"{f(s['median'])}{unit}"
    return f"{f(s['median'])}{unit} [{f(s['min'])}–{f(s['max'])}]"


def num(x: float | None, digits: int = 2, unit: str = "") -> str:
    return "—" if x is None else f"{x:.{digits}f}{unit}"


def load(sec: dict[str, Any] | None) -> str:
    """The 1-min load average at a section's start and end (the machine is shared: read noisy figures so)."""
    if not sec or "loadavg_start" not in sec:
        return ""
    return f" Load average (1 min) {sec['loadavg_start'][0]} at its start, {sec['loadavg_end'][0]} at its end."


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: float | None, ok: bool | None, shown: str | None = None) -> None:
        out.append({"target": name, "goal": goal, "value": value, "shown": shown if shown is not None else
                    num(value), "met": ok})

    # issue 20's targets: the last verified halt at N=200 and 1,000; the contain phase, proof included, at 1,000
    goals = {"200": {"last": 2.0, "wall": 5.0}, "1000": {"last": 3.5, "wall": 5.0}}
    for n, goal in goals.items():
        halt = res.get("halt", {}).get("by_engines", {}).get(n)
        if not halt:
            continue
        r = halt["ratios"]
        if n == "200":
            add("halt N=200: a/e", "≤ 7", r.get("a/e"), None if r.get("a/e") is None else r["a/e"] <= 7)
            add("halt N=200: c/a", "≥ 25", r.get("c/a"), None if r.get("c/a") is None else r["c/a"] >= 25)
        a = halt["paths"].get("a", {})
        last = (a.get("time_to_last_halt_s") or {}).get("median")
        add(f"halt N={n}: contain (a), process start to last engine halted", f"≤ {goal['last']} s", last,
            None if last is None else last <= goal["last"], num(last, 2, " s"))
        wall = (a.get("wall_s") or {}).get("median")
        add(f"halt N={n}: contain phase (a) done, orders proof included, process start to exit",
            f"≤ {goal['wall']} s", wall, None if wall is None else wall <= goal["wall"], num(wall, 2, " s"))
    tests = res.get("tests")
    if tests and tests.get("wall_s"):
        add("`make test` wall time (the last run)", "≤ 45 min", tests["wall_s"], tests["wall_s"] <= 45 * 60,
            num(tests["wall_s"] / 60, 1, " min"))
    scale = res.get("scale")
    if scale:
        w = scale["p0_healthy"]["wall_s"]["median"]
        add(f"p0_outage.yml on {scale['p0_healthy']['engines']} healthy engines", "≤ 12 s", w,
            None if w is None else w <= 12, num(w, 1, " s"))
        m = scale["mttr"]["mttr_s"]["median"]
        add(f"P0 drill MTTR, {scale['mttr']['engines']} engines, {scale['mttr']['faulted']} faulted", "≤ 60 s", m,
            None if m is None else m <= 60, num(m, 1, " s"))
    for rows, sec in res.get("pg", {}).get("by_rows", {}).items():
        label = f"{int(rows) // 1_000_000}M" if int(rows) >= 1_000_000 else rows
        r = sec["ratios"]
        add(f"pg_integrity {label}: a/c", "≤ 1.5", r.get("a/c"), None if r.get("a/c") is None else r["a/c"] <= 1.5)
        add(f"pg_integrity {label}: b/a", "≥ 2", r.get("b/a"), None if r.get("b/a") is None else r["b/a"] >= 2)
        w = sec.get("writer")
        if w:
            x = w["ratio_p99_with_over_without"]
            add(f"pg_integrity {label}: writer p99 with scan / without", "< 2×", x, None if x is None else x < 2,
                num(x, 2, "×"))
    mttr = res.get("mttr")
    if mttr:
        m = mttr["mttr_s"]["median"]
        add("P0 drill MTTR (fault to all GO)", "≤ 60 s", m, None if m is None else m <= 60, num(m, 1, " s"))
    rot = res.get("rotate")
    if rot:
        t = rot["rotation_s"]["median"]
        add("rotate 20 secrets: time", "≤ 10 s", t, None if t is None else t <= 10, num(t, 2, " s"))
        f = rot["failed_calls"]["max"]
        add("rotate 20 secrets: failed authenticated calls (worst run)", "0", f, None if f is None else f == 0,
            num(f, 0))
    venue = res.get("venue")
    if venue:
        g = venue["guard_s"]["median"]
        add("venue cancel-all 20x100: venue_guard to zero verified", "≤ 2 s", g, None if g is None else g <= 2,
            num(g, 2, " s"))
        r = venue["ratios"]["loop/guard"]
        add("venue cancel-all 20x100: per-order ccxt loop / venue_guard", "≥ 10×", r, None if r is None else r >= 10,
            num(r, 1, "×"))
        u = venue["rate_limited_unverified"]["max"]
        add("venue cancel-all under the rate-limit fault: accounts unverified within 10 s (worst run)", "0", u,
            None if u is None else u == 0, num(u, 0))
    loop = res.get("loop")
    if loop:
        h = loop["fault_to_halt_s"]["median"]
        add("closed loop: fault to verified halt (Prometheus, Alertmanager, ansible-rulebook)", "≤ 30 s", h,
            None if h is None else h <= 30, num(h, 1, " s"))
    return out


def markdown(res: dict[str, Any], heading: str = "##") -> str:
    h3 = heading + "#"
    m = res["machine"]
    lines = [
        f"{heading} Benchmarks",
        "",
        f"`make bench`, {res['date']} (`bench/results/{res['date']}.json`). {m.get('cpus')} CPUs, "
        f"{m.get('ansible_core') or 'ansible-core ?'}, Python {m.get('python')}; load average (1/5/15 min) "
        f"{'/'.join(str(x) for x in res['loadavg_start'])} at the start, "
        f"{'/'.join(str(x) for x in res['loadavg_end'])} at the end; {res['duration_s'] / 60:.1f} min in all. "
        f"Each figure is the median [min–max] of {res['options']['runs']} runs unless stated. "
        "Other jobs share this machine: compare the ratios, measured in the same run, more than the absolute times.",
        "",
    ]
    for note in res.get("notes") or []:  # set by hand when a section was re-run (bench/run.py --render)
        lines += [f"Note: {note}", ""]
    halt = res.get("halt")
    if halt:
        ns = list(halt["by_engines"])
        lines += [f"{h3} Time to halt", "",
                  "Seconds from process start to the last engine's own record of its halt (`halt requested via` "
                  "in its `engine.log`, ms stamps); every engine checked halted through the lab's control API "
                  "after each run, fresh engines (restarted, trading again) before each run."
                  + "".join(f" N={n}:{load(halt['by_engines'][n])}" for n in ns), "",
                  "| path | " + " | ".join(f"N={n}" for n in ns) + " |",
                  "| --- | " + " | ".join("---:" for _ in ns) + " |"]
        paths = list(dict.fromkeys(p for n in ns for p in halt["by_engines"][n]["paths"]))
        for p in paths:
            label = next(halt["by_engines"][n]["paths"][p]["label"] for n in ns if p in halt["by_engines"][n]["paths"])
            cells = []
            for n in ns:
                entry = halt["by_engines"][n]["paths"].get(p)
                if entry is None:
                    cells.append("—")
                    continue
                cell = fmt(entry["time_to_last_halt_s"])
                k = entry["time_to_last_halt_s"].get("n", 0)
                if k != res["options"]["runs"]:
                    cell += f" ({k} runs)"
                if entry.get("failed_runs"):
                    cell += f" **{entry['failed_runs']} failed**"
                cells.append(cell)
            lines.append(f"| {p}. {label} | " + " | ".join(cells) + " |")
        for key, label in (("a/e", "a/e (target ≤ 7 at N=200)"), ("b/a", "b/a"), ("c/a", "c/a (target ≥ 25 at N=200)"),
                           ("d/a", "d/a")):
            lines.append(f"| ratio {label} | " + " | ".join(num(halt["by_engines"][n]["ratios"].get(key)) for n in ns)
                         + " |")
        lines.append("| a: contain phase, process start to exit (halt, venue cancel-all during the quiesce of 3 "
                     "order intervals after the last engine's halt, then the orders proof) | "
                     + " | ".join(fmt(halt["by_engines"][n]["paths"].get("a", {}).get("wall_s")) for n in ns) + " |")
        lines.append("| a: halt_trading module call (all engines, each read back) | "
                     + " | ".join(fmt(halt["by_engines"][n]["paths"].get("a", {}).get("module_elapsed_s"))
                                  for n in ns) + " |")
        lines.append("")
    pg = res.get("pg")
    if pg:
        sizes = list(pg["by_rows"])

        def col(key: str, sub: str | None = None) -> str:
            cells = []
            for s in sizes:
                v = pg["by_rows"][s].get(key)
                if sub and isinstance(v, dict):
                    v = v.get(sub)
                cells.append(fmt(v, "", 3) if isinstance(v, dict) else num(v))
            return " | ".join(cells)

        lines += [f"{h3} pg_integrity (warm cache)", "",
                  f"Seconds. Trades rows: {', '.join(f'{int(s):,}' for s in sizes)}; lab schema and settings "
                  f"({pg['server']['version'].split(' on ')[0]}, shared_buffers {pg['server']['shared_buffers']}, "
                  f"{pg['server']['max_parallel_workers_per_gather']} parallel workers per gather). The writer runs "
                  "single-row INSERTs for a fixed window, alone and while the module's full built-in scan runs back "
                  "to back in another process."
                  + "".join(f" {int(s):,} rows:{load(pg['by_rows'][s])}" for s in sizes), "",
                  "| figure | " + " | ".join(f"{int(s):,} rows" for s in sizes) + " |",
                  "| --- | " + " | ".join("---:" for _ in sizes) + " |",
                  f"| c. floor: `SELECT count(*) FROM trades` | {col('count_s')} |",
                  "| c'. `count(*)` that reads every column (`WHERE created_at IS NULL`) | "
                  f"{col('count_all_columns_s')} |",
                  f"| a. the module's one-pass scan (trades: 3 checks, FILTER clauses) | {col('one_pass_s')} |",
                  f"| b. one query per check (same 3 checks) | {col('per_check_s')} |",
                  "| ratio a/c (target ≤ 1.5) | " + " | ".join(num(pg["by_rows"][s]["ratios"]["a/c"]) for s in sizes)
                  + " |",
                  "| ratio b/a (target ≥ 2) | " + " | ".join(num(pg["by_rows"][s]["ratios"]["b/a"]) for s in sizes)
                  + " |",
                  f"| every built-in check (module, one call) | {col('full_scan_s')} |"]
        if any("writer" in pg["by_rows"][s] for s in sizes):
            cells_q, cells_b, cells_r = [], [], []
            for s in sizes:
                w = pg["by_rows"][s].get("writer")
                cells_q.append(fmt(w["p99_ms_without_scan"], " ms", 3) if w else "—")
                cells_b.append(fmt(w["p99_ms_with_scan"], " ms", 3) if w else "—")
                cells_r.append(num(w["ratio_p99_with_over_without"], 2, "×") if w else "—")
            lines += ["| writer: INSERT p99, no scan | " + " | ".join(cells_q) + " |",
                      "| writer: INSERT p99, full scan running back to back | " + " | ".join(cells_b) + " |",
                      "| writer p99 ratio (target < 2×) | " + " | ".join(cells_r) + " |"]
        lines.append("| dataset build, once (not timed above) | " + " | ".join(
            f"{pg['by_rows'][s]['dataset']['build_s']} s ({pg['by_rows'][s]['dataset']['table_size']} + "
            f"{pg['by_rows'][s]['dataset']['index_size']} indexes)" for s in sizes) + " |")
        lines.append("")
    mttr = res.get("mttr")
    if mttr:
        lines += [f"{h3} P0 drill MTTR", "",
                  f"`tradeops drill p0` on {mttr['engines']} engines, 3 crashed and 1 hung; seconds. "
                  f"Runs: {len(mttr['runs'])}, failed: {mttr['failed_runs']}.{load(mttr)}", "",
                  "| phase | seconds |", "| --- | ---: |"]
        for k, v in mttr["phases_s"].items():
            lines.append(f"| {k.replace('_', ' ')} | {fmt(v)} |")
        lines.append(f"| **MTTR, fault to all GO** (target ≤ 60 s) | **{fmt(mttr['mttr_s'], '', 1)}** |")
        lines.append("")
    rot = res.get("rotate")
    if rot:
        lines += [f"{h3} rotate_secret", "", rot.get("summary", "") + load(rot), "",
                  "| figure | value |", "| --- | ---: |",
                  f"| rotation of {rot['secrets']} secrets, seconds (target ≤ 10 s) | {fmt(rot['rotation_s'])} |",
                  "| failed authenticated calls of the polling consumer (target 0) | "
                  f"{fmt(rot['failed_calls'], '', 0)} |",
                  f"| consumer calls during the rotation | {fmt(rot['calls'], '', 0)} |"]
        for k, v in rot.get("task_s", {}).items():
            lines.append(f"| task: {k.replace('|', '—')} | {fmt(v)} |")
        ctl = rot.get("control_direct_staging")
        if ctl:
            lines.append(f"| control, 1 run, staging=direct: failed calls | {ctl['failed_calls']} of {ctl['calls']} |")
        lines.append("")
    venue = res.get("venue")
    if venue:
        lines += [f"{h3} Venue cancel-all", "",
                  f"{venue['accounts']} accounts x {venue['orders_per_account']} resting orders at the lab exchange "
                  "(Kraken's API); seconds from the start of the call to zero working orders, then confirmed by the "
                  f"exchange itself. Failed runs: {venue['failed_runs']}.{load(venue)}", "",
                  "| path | seconds |", "| --- | ---: |",
                  "| a. venue_guard cancel_all (cancel-all + read-back, accounts concurrent) | "
                  f"{fmt(venue['guard_s'])} |",
                  f"| b. per-order cancel loop through ccxt, one process | {fmt(venue['loop_s'])} |",
                  f"| ratio b/a (target ≥ 10×) | {num(venue['ratios']['loop/guard'], 1, '×')} |",
                  "| c. venue_guard under exchange-rate-limit, 10 s deadline | "
                  f"{fmt(venue['rate_limited_s'])} |",
                  "| c. accounts left unverified (target 0) | "
                  f"{fmt(venue['rate_limited_unverified'], '', 0)} |", ""]
    inc = res.get("incidents")
    if inc:
        lines += [f"{h3} Scoped incidents, fault to GO", "",
                  f"{inc['method']} {inc['engines']} engines; stability windows shortened to 2 s for the lab. "
                  f"Failed runs: {inc['failed_runs']}.{load(inc)}", "",
                  "| playbook | fault to GO, s | playbook run, s |", "| --- | ---: | ---: |"]
        for name, case in inc["cases"].items():
            lines.append(f"| `{name}.yml` | {fmt(case['fault_to_go_s'])} | {fmt(case['playbook_s'])} |")
        lines.append("")
    tests = res.get("tests")
    if tests and tests.get("tiers"):
        lines += [f"{h3} `make test`, per tier", "",
                  f"{tests['method']} Run of {tests.get('timestamp')}: **{tests['wall_s'] / 60:.1f} min** wall.", "",
                  "| tier | tests | their time summed, s | failed |", "| --- | ---: | ---: | ---: |"]
        for tier, t in tests["tiers"].items():
            lines.append(f"| {tier} | {t['tests']} | {t['summed_s']:.0f} | {t['failed']} |")
        lines.append("")
    scale = res.get("scale")
    if scale:
        ph, mt = scale["p0_healthy"], scale["mttr"]
        lines += [f"{h3} Scale", "", f"{scale['method']} Failed runs: {scale['failed_runs']}.{load(scale)}", "",
                  "| figure | s |", "| --- | ---: |",
                  f"| `p0_outage.yml` end to end, {ph['engines']} healthy engines | {fmt(ph['wall_s'])} |",
                  f"| P0 drill MTTR, {mt['engines']} engines, {mt['faulted']} faulted | {fmt(mt['mttr_s'])} |", ""]
    loop = res.get("loop")
    if loop:
        lines += [f"{h3} Closed loop: fault to verified halt, no human", "",
                  f"{loop['method']} {loop['engines']} engines. Failed runs: {loop['failed_runs']}.{load(loop)}", "",
                  "| interval | s |", "| --- | ---: |"]
        for label, stat in loop["intervals_s"].items():
            lines.append(f"| {label} | {fmt(stat)} |")
        lines += [f"| **fault to verified halt** | {fmt(loop['fault_to_halt_s'])} |",
                  f"| fault to zero working orders | {fmt(loop['fault_to_cancelled_s'])} |", ""]
    tg = res.get("targets") or []
    if tg:
        lines += [f"{h3} Targets", "", "| target | goal | measured | met |", "| --- | --- | ---: | :---: |"]
        for t in tg:
            met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['goal']} | {t['shown']} | {met} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, table_md: str) -> None:
    """Replace (or add, before ``## Development``) the README's Benchmarks section."""
    text = readme.read_text(encoding="utf-8")
    block = f"{README_START}\n{table_md.rstrip()}\n{README_END}"
    if README_START in text and README_END in text:
        text = re.sub(re.escape(README_START) + r".*?" + re.escape(README_END), lambda _m: block, text,
                      flags=re.S)
    elif "\n## Development" in text:
        text = text.replace("\n## Development", "\n" + block + "\n\n## Development", 1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")
