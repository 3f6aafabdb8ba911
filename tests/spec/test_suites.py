"""The paper's suites as configs (config/suites/): SAE families and SAEs per the
Gemma Scope tables (RECIPE.md: more than 400 SAEs, over 2,000 with L0 variants),
Gemma Scope's token budgets, and the dry-run plans Snakemake makes of them."""

from __future__ import annotations

import re

import pytest
from helpers import job_counts

from saesuite.spec.config import REPO_ROOT, expand_suite, load_config

SUITES = REPO_ROOT / "config" / "suites"
# (families = model × layer × site × width, SAEs = families × 6 λ, train jobs)
EXPECTED = {
    # 26 layers × 3 sites × 2 widths + layer 12 res × 4 widths + 2^20 at 3 layers
    "gemma-2-2b-pt": (26 * 3 * 2 + 4 + 3, (26 * 3 * 2 + 7) * 6, 26 * 3),
    "gemma-2-9b-pt": (42 * 3 * 2 + 4 + 3, (42 * 3 * 2 + 7) * 6, 42 * 3),
    "gemma-2-27b-pt": (3, 18, 3),
    # the IT SAEs (3 layers × 2 widths) and the PT ones they are compared with
    "gemma-2-9b-it": (12, 72, 6),
    "gemma-scope-union": (431, 2586, 26 * 3 + 42 * 3 + 3 + 3),
    # every layer × 3 sites × 2 widths (L0 10, 100) + 4 layers × 3 sites × 4 widths
    # (L0 10, 50, 150), the L0-10 SAEs at 16k and 262k shared
    "gemma-scope-2-270m": (
        18 * 3 * 2 + 4 * 3 * 2,
        18 * 3 * 2 * 2 + 4 * 3 * 4 * 3 - 24,
        54,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_suite_counts_and_budgets(name):
    cfg = load_config(SUITES / f"{name}.yaml")
    suite = expand_suite(cfg)
    families = {(s.model, s.layer, s.site, s.width) for s in suite}
    assert (len(families), len(suite)) == EXPECTED[name][:2]
    for s in suite:  # Gemma Scope's budgets: 4B at 16.4K, 16B at 1M, 8B otherwise
        assert s.tokens == {2**14: 4e9, 2**20: 16e9}.get(s.width, 8e9)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_plans_the_expected_training_jobs(name, tmp_path):
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "snakemake", "-n", "-s", str(REPO_ROOT / "Snakefile"),
        "--directory", str(tmp_path), "--configfile", str(SUITES / f"{name}.yaml"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = job_counts(res.stdout)
    assert counts["train"] == EXPECTED[name][2]
    assert counts["extract"] == counts["manifest"] * 128  # 2^28 / 2^21 tokens
    # Every job asks for memory, time and CPUs; the model and training stages for
    # GPUs (the suites set resources.gpu), 8 of them for a site with 2^20 latents.
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$",
                      res.stdout, re.MULTILINE)  # fmt: skip
    jobs = [j for j in jobs if j[0] != "all"]  # a local target: no resources
    assert len(jobs) == counts["total"] - 1
    for rule, line in jobs:
        r = dict(kv.split("=", 1) for kv in line.split(", "))
        assert int(r["mem_mb"]) > 0 and 10 <= int(r["runtime"]) <= 2880, (rule, r)
        gpu = rule in ("extract", "train", "evaluate", "transfer_rollouts")
        assert ("gres" in r) == gpu, (rule, r)
        if gpu:
            n = int(r["gres"].removeprefix("gpu:"))
            assert int(r["cpus_per_task"]) == 8 * n
        if rule == "train":
            assert r["slurm_extra"] == "--signal=USR1@600"
        if rule == "extract":  # streamed to disk: fits a GPU node's host memory
            assert int(r["mem_mb"]) < 200_000, r
    wide = {int(r.split("gres=gpu:")[1].split(",")[0]) for rule, r in jobs
            if rule == "train"}  # fmt: skip
    has_1m = any(s.width >= 2**20 for s in expand_suite(load_config(
        SUITES / f"{name}.yaml")))  # fmt: skip
    assert wide == ({1, 8} if has_1m else {1})
