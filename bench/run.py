"""`make bench`: time to halt N lab engines, halt_trading vs. one `uri` task per host.

Baseline (named in issue 2): one ansible.builtin.uri halt task per host took 67-84 s for 200
engines on this 2-core machine; a concurrent fan-out from one process took 0.35 s. This
benchmark measures both on the lab and reports the ratio. It is a benchmark, not a test:
it asserts nothing and is not part of `make test`.

    python bench/run.py [--engines 200] [--forks 50] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tradeops.lab import Lab  # noqa: E402


def env_for(lab_dir: Path) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), TRADEOPS_LAB_DIR=str(lab_dir))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def time_halt_trading(lab_dir: Path, report: Path) -> dict:
    started = time.time()
    proc = subprocess.run(["ansible-playbook", "playbooks/p0_outage.yml", "--tags", "contain",
                           "-e", f"halt_trading_report_path={report}",
                           "-e", "halt_trading_quiesce_seconds=0"], cwd=ROOT, env=env_for(lab_dir),
                          capture_output=True, text=True, check=False)
    result = json.loads(report.read_text())["result"]
    last = max(t["halted_at"] for t in result["targets"] if t.get("halted_at"))
    return {"rc": proc.returncode, "start_to_last_verified_halt_s": round(last - started, 2),
            "fan_out_s": round(result["elapsed_ms"] / 1000, 3), "halted": len(result["halted"])}


def time_uri_baseline(lab_dir: Path, forks: int) -> dict:
    started = time.time()
    proc = subprocess.run(["ansible-playbook", "bench/halt_uri_baseline.yml", "-f", str(forks)], cwd=ROOT,
                          env=env_for(lab_dir), capture_output=True, text=True, check=False)
    return {"rc": proc.returncode, "wall_s": round(time.time() - started, 2), "forks": forks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=int, default=200)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    out: dict = {"engines": args.engines}
    with tempfile.TemporaryDirectory(prefix="tradeops-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(engines=args.engines, mix="killswitch_api", order_interval=0.2)
        try:
            time.sleep(1)
            out["halt_trading"] = time_halt_trading(lab.lab_dir, Path(tmp) / "halt.json")
        finally:
            lab.down()
        if not args.skip_baseline:
            lab = Lab(Path(tmp) / "lab-baseline")
            lab.up(engines=args.engines, mix="killswitch_api", order_interval=0.2)
            try:
                out["uri_per_host"] = time_uri_baseline(lab.lab_dir, args.forks)
            finally:
                lab.down()
            out["ratio_uri_over_halt_trading"] = round(
                out["uri_per_host"]["wall_s"] / out["halt_trading"]["start_to_last_verified_halt_s"], 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
