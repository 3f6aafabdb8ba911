"""The pre-flight plan against hand computations: cache bytes of the default config
(also what its run wrote to disk), dense-equivalent training FLOPs, Gemma Scope's
token budgets on a Gemma 2 2B suite, unknown models, and the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import make_config

from saesuite.cli import main
from saesuite.config import REPO_ROOT, load_config
from saesuite.plan import format_plan, preflight


def test_default_plan_matches_hand_computation():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    df = preflight(cfg, tflops=0.1).set_index("stage")
    per_token = 4 * (640 + 640 + 1024) * 4 + 5  # 4 layers × (res, mlp, att), fp32
    assert df.loc["extract", "cache_bytes"] == 131072 * per_token
    d_in_sum = 8 * 640 + 8 * 640 + 8 * 1024  # 24 SAEs
    assert df.loc["train", "flops"] == 10 * 4096 * 300000 * d_in_sum
    assert df.loc["train", "saes"] == 24 and df.loc["train", "tokens"] == 24 * 300000
    hours = df.loc["train", "flops"] / 0.1e12 / 3600
    assert df.loc["train", "gpu_hours"] == pytest.approx(hours)
    assert "transfer (gemma-3-270m SAEs, chat)" in df.index  # the format-shift check


def test_gemma_scope_budgets_on_a_gemma_2_2b_suite():
    cfg = load_config({
        "models": {"g2b": {"source": "google/gemma-2-2b"}},
        "suite": [{"layers": "all", "sites": ["res", "att"], "widths": [16384, 2**20],
                   "sparsity": {"lambdas": [1e-4, 3e-4, 1e-3]}}],
    })  # fmt: skip
    train = preflight(cfg, tflops=200).set_index("stage").loc["train"]
    assert train["saes"] == 26 * 2 * 2 * 3
    per_site = 3 * (4 * 10**9 + 16 * 10**9)  # 4B tokens at 16k, 16B at 1M
    assert train["tokens"] == 26 * 2 * per_site
    flops = 26 * 3 * 10 * (2304 + 2048) * (16384 * 4e9 + 2**20 * 16e9)
    assert train["flops"] == pytest.approx(flops)


def test_unknown_model_gets_no_flops(tiny_models):
    cfg = load_config(make_config(tiny_models["gemma3"]))
    df = preflight(cfg, tflops=200)
    assert df["flops"].isna().all() and (df["saes"][df["stage"] == "train"] == 12).all()
    assert "| ? |" in format_plan(df, 200)


def test_cli_plan(tmp_path, capsys):
    out = tmp_path / "plan.csv"
    main(["plan", "--tflops", "0.1", "--csv", str(out)])
    printed = capsys.readouterr().out
    assert "| gemma-3-270m | train | 24 |" in printed and "4.83 GB" in printed
    assert len(pd.read_csv(out)) == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"m": {"source": "x", "dtype": "f64"}},
                                   "suite": []}))  # fmt: skip
    with pytest.raises(SystemExit, match="models.m.dtype"):
        main(["plan", "--configfile", str(bad)])


def test_plan_names_the_saes_too_wide_for_one_gpu():
    """Gemma 2 2B's 2^20-latent SAEs need 16 B × 2 × 2304 × 2^20 = 77 GB of weights,
    gradients and Adam moments on each GPU, over 90 % of 80 GB; everything else fits
    in groups. On CPU there is no limit."""
    from saesuite.config import REPO_ROOT, load_config
    from saesuite.plan import gpu_memory_problems

    c = load_config(REPO_ROOT / "config/suites/gemma-2-2b-pt.yaml")
    problems = gpu_memory_problems(c)
    assert [p.split(":")[0] for p in problems] == [
        f"gemma-2-2b layer {L} res width 1048576" for L in (5, 12, 19)
    ]
    assert "72 GB usable" in problems[0]
    c["resources"]["gpu_mem_gb"] = 141  # an H200
    assert gpu_memory_problems(c) == []
    c["resources"]["gpu"] = False
    c["resources"]["gpu_mem_gb"] = 1
    assert gpu_memory_problems(c) == []
