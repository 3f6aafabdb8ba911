"""The paper's suites as configs (config/suites/): SAE families and SAEs per the
Gemma Scope tables (RECIPE.md: more than 400 SAEs, over 2,000 with L0 variants),
Gemma Scope's token budgets, the plan of each (its jobs and their resources) and
the real dry-run Snakemake makes of the union."""

from __future__ import annotations

import re

import pytest
from helpers import job_counts

from saesuite.cluster.resources import JobResources
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.suite import expand_spanning, expand_suite
from saesuite.spec.workflow import Workflow

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
    # SAEs: every layer × 3 sites × 2 widths (L0 10, 100) + 4 layers × 3 sites × 4
    # widths (L0 10, 50, 150), the L0-10 SAEs at 16k and 262k shared; transcoders the
    # same with the MLP's one "site", plain and affine; a train job per site and one
    # per layer for its plain and skip-transcoders together (they read the same sites)
    "gemma-scope-2-270m": (
        (18 * 3 * 2 + 4 * 3 * 2) + 2 * (18 * 2 + 4 * 2),
        (18 * 3 * 2 * 2 + 4 * 3 * 4 * 3 - 24) + 2 * (18 * 2 * 2 + 4 * 4 * 3 - 8),
        18 * 3 + 18,
    ),
    # the same for gemma-3-1b's 26 layers (subset layers 7, 13, 17, 22)
    "gemma-scope-2-1b": (
        (26 * 3 * 2 + 4 * 3 * 2) + 2 * (26 * 2 + 4 * 2),
        (26 * 3 * 2 * 2 + 4 * 3 * 4 * 3 - 24) + 2 * (26 * 2 * 2 + 4 * 4 * 3 - 8),
        26 * 3 + 26,
    ),
    # every MLP layer at 2^14 × 6 λ, one train job per layer
    "gemma-2-2b-transcoders": (26, 26 * 6, 26),
}
# Transcoders among them: (plain, affine)
TRANSCODERS = {
    "gemma-scope-2-270m": (112, 112),
    "gemma-scope-2-1b": (144, 144),
    "gemma-2-2b-transcoders": (156, 0),
}
# Gemma Scope 2's spanning dictionaries: (its CLTs' layers and per-layer widths, its
# crosscoders' layers), each at 2 widths × 3 L0 bands (15, 45, 120)
SPANNING = {
    "gemma-scope-2-270m": (range(18), (910, 14560), (5, 9, 12, 15)),
    "gemma-scope-2-1b": (range(26), (630, 10080), (7, 13, 17, 22)),
}
CLTS = {k: (12, 0) for k in SPANNING}  # (spanning dictionaries, unused)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_suite_counts_and_budgets(name):
    cfg = load_config(SUITES / f"{name}.yaml")
    suite = expand_suite(cfg)
    families = {(s.model, s.layer, s.family, s.width) for s in suite}
    assert (len(families), len(suite)) == EXPECTED[name][:2]
    kinds = [s.kind for s in suite]
    plain, affine = TRANSCODERS.get(name, (0, 0))
    assert (kinds.count("transcoder"), kinds.count("skip_transcoder")) == (
        plain,
        affine,
    )
    assert all(
        (s.input_site.kind, s.output_site.kind) == ("mlp_in", "mlp")
        for s in suite if s.kind != "sae"
    )  # fmt: skip
    spanning = expand_spanning(cfg)
    want = []
    if name in SPANNING:
        every, widths, subset = SPANNING[name]
        want = sorted(
            [("clt", tuple(every), w, t) for w in widths for t in (15, 45, 120)]
            + [("crosscoder", subset, w, t) for w in (2**14, 2**16)
               for t in (15, 45, 120)]
        )  # fmt: skip
    assert sorted((d.kind, d.layers, d.width, d.target_l0) for d in spanning) == want
    for s in suite:  # Gemma Scope's budgets: 4B at 16.4K, 16B at 1M, else 8B
        assert s.tokens == {2**14: 4e9, 2**20: 16e9}.get(s.width, 8e9)
    for d in spanning:  # the same budgets, by the latents of every layer together
        total = d.width * len(d.layers)
        assert d.tokens == (4e9 if total <= 2**14 else 16e9 if total >= 2**20 else 8e9)


def check_resources(jobs: list[tuple[str, dict]], has_1m: bool) -> None:
    """Every job asks for memory, time and CPUs; the model and training stages for
    GPUs (the suites set resources.gpu), 8 of them for a site with 2^20 latents."""
    for rule, r in jobs:
        assert int(r["mem_mb"]) > 0 and 10 <= int(r["runtime"]) <= 2880, (rule, r)
        gpu = rule in ("extract", "train", "train_clt", "evaluate", "evaluate_clt",
                       "transfer_rollouts")  # fmt: skip
        assert ("gres" in r) == gpu, (rule, r)
        if gpu:
            n = int(str(r["gres"]).removeprefix("gpu:"))
            assert int(r["cpus_per_task"]) == 8 * n
        if rule == "train":
            assert r["slurm_extra"] == "--signal=USR1@600"
        if rule == "extract":  # streamed to disk: fits a GPU node's host memory
            assert int(r["mem_mb"]) < 200_000, r
    wide = {int(str(r["gres"]).split("gpu:")[1]) for rule, r in jobs if rule == "train"}
    assert wide == ({1, 8} if has_1m else {1})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_plan_of_each_suite_has_its_jobs_and_their_resources(name):
    """What rules/common.smk hands Snakemake, from the package alone: a train job
    per site, 128 chunks per model (2^28 / 2^21 tokens), every job's resources."""
    cfg = load_config(SUITES / f"{name}.yaml")
    wf = Workflow(cfg)
    res = JobResources(wf)
    sites = [(m, L, k) for m in wf.trained for L, k in wf.train_families(m)]
    assert len(sites) == EXPECTED[name][2]
    jobs = [("train", res("train", {"model": m, "layer": str(L), "kind": k}))
            for m, L, k in sites]  # fmt: skip
    for m in wf.trained:
        assert len(wf.chunk_indices()) == 128
        jobs.append(("extract", res("extract", {"model": m, "chunk": "00000"})))
        jobs += [(s, res(s, {"model": m})) for s in ("model", "manifest", "normalize")]
    for lm, data, layer in wf.eval_passes:
        w = {"lm": lm, "data": data, "layer": str(layer)}
        jobs.append(("evaluate", res("evaluate", w)))
    jobs += [("transfer_rollouts", res("transfer_rollouts", {"model": c.target}))
             for c in wf.checks.values()]  # fmt: skip
    jobs += [("release", res("release", {"release": r})) for r in wf.releases]
    for d in wf.spanning:  # one train and one evaluate job per CLT
        w = {"model": d.model, "clt": d.path}
        jobs += [("train_clt", res("train", w)), ("evaluate_clt", res("evaluate", w))]
    assert len(wf.spanning) == CLTS.get(name, (0, 0))[0]
    check_resources(jobs, any(s.width >= 2**20 for s in wf.suite))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["gemma-scope-union", "gemma-scope-2-270m", "gemma-scope-2-1b"]
)
def test_snakemake_plans_the_suite_as_the_package_does(tmp_path, name):
    """The real dry-run of the whole Gemma Scope 1 union and of Gemma Scope 2's
    270m and 1b suites (their transcoders and CLTs too): the job counts of the
    package's plan, and every job's resources as Snakemake prints them."""
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "snakemake", "-n", "-s", str(REPO_ROOT / "Snakefile"),
        "--directory", str(tmp_path), "--configfile", str(SUITES / f"{name}.yaml"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = job_counts(res.stdout)
    wf = Workflow(load_config(SUITES / f"{name}.yaml"))
    assert counts["train"] == EXPECTED[name][2] == len(wf.site_summaries())
    assert counts["extract"] == counts["manifest"] * 128  # 2^28 / 2^21 tokens
    assert (
        counts["evaluate"]
        == len(wf.eval_passes)
        == len({f for e in wf.evaluations for f in wf.eval_layers(e)})
    )
    assert counts["release"] == len(wf.releases)
    n = CLTS.get(name, (0, 0))[0]
    assert counts.get("train_clt", 0) == counts.get("evaluate_clt", 0) == n
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$",
                      res.stdout, re.MULTILINE)  # fmt: skip
    jobs = [j for j in jobs if j[0] != "all"]  # a local target: no resources
    assert len(jobs) == counts["total"] - 1
    parsed = [(rule, dict(kv.split("=", 1) for kv in line.split(", ")))
              for rule, line in jobs]  # fmt: skip
    check_resources(parsed, True)
