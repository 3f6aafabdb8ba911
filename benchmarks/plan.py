"""How fast a suite is planned: `snakemake -n` (the whole DAG) and `saesuite plan`
(the pre-flight table) on each config of config/suites/.

    .venv/bin/python benchmarks/plan.py [--repeats 2] [--quick]

`--quick` (the test suite's run): one small suite, once.

Goal (issue 6): the dry-run of the full Gemma Scope 1 union under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time

from saesuite.cluster.plan import preflight
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.suite import expand_suite


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


QUICK_SUITE = "gemma-2-27b-pt"  # select layers of one model: a small DAG


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one small suite, once")
    args = ap.parse_args(argv)
    suites = sorted((REPO_ROOT / "config" / "suites").glob("*.yaml"))
    if args.quick:
        args.repeats = 1
        suites = [p for p in suites if p.stem == QUICK_SUITE]
    rows = []
    for path in suites:
        cfg = load_config(path)
        work = tempfile.mkdtemp()
        cmd = [sys.executable, "-m", "snakemake", "-n", "-q", "rules",
               "-s", str(REPO_ROOT / "Snakefile"), "--directory", work,
               "--configfile", str(path)]  # fmt: skip

        def dry_run(cmd=cmd) -> None:
            subprocess.run(cmd, check=True, capture_output=True)

        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        jobs = next(int(line.split()[-1]) for line in out.splitlines()
                    if line.startswith("total"))  # fmt: skip
        dry = best(dry_run, args.repeats)
        plan = best(lambda cfg=cfg: preflight(cfg, 200), args.repeats)
        rows.append((path.stem, len(expand_suite(cfg)), jobs, dry, plan))
    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    print("| suite | SAEs | jobs | snakemake -n | saesuite plan |")
    print("|---|---:|---:|---:|---:|")
    for name, saes, jobs, dry, plan in rows:
        print(f"| {name} | {saes} | {jobs} | {dry:.1f} s | {plan:.2f} s |")


if __name__ == "__main__":
    main()
