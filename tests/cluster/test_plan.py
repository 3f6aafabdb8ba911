"""The pre-flight plan against hand computations: cache bytes of the default config
(also what its run wrote to disk), dense-equivalent training FLOPs, Gemma Scope's
token budgets on a Gemma 2 2B suite, unknown models, and the CLI."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from helpers import make_config

from saesuite.cli import main
from saesuite.cluster.plan import data_reuse, format_plan, preflight
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.known_models import KNOWN


def test_default_plan_matches_hand_computation():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    df = preflight(cfg, tflops=0.1).set_index("stage")
    # 4 layers × (res, att) and, for the CLT over all 18 layers, every layer's mlp
    # and mlp_in (the SAEs' mlp and the transcoders' mlp_in among them), fp32
    per_token = (4 * (640 + 1024) + 36 * 640) * 4 + 5
    assert df.loc["extract", "cache_bytes"] == 131072 * per_token
    # 24 SAEs and 8 transcoders (2 layers × plain/affine × 2 targets, 640 → 640)
    d_in_sum = 8 * 640 + 8 * 640 + 8 * 1024 + 8 * 640
    assert df.loc["train", "flops"] == 10 * 4096 * 300000 * d_in_sum
    assert df.loc["train", "saes"] == 32 and df.loc["train", "tokens"] == 32 * 300000
    hours = df.loc["train", "flops"] / 0.1e12 / 3600
    assert df.loc["train", "gpu_hours"] == pytest.approx(hours)
    assert "transfer (gemma-3-270m SAEs, chat)" in df.index  # the format-shift check
    # Evaluation: one job per layer (5, 9, 12, 15), each 6 SAEs at 3 sites; per job a
    # pass over 128 × 128 tokens and, over 512 tokens, the clean pass, 3 zero-ablated
    # and 6 spliced passes, and 4 more spliced (the transcoders) at layers 9 and 15;
    # the same FLOPs the jobs' runtime requests come from.
    n = KNOWN["gemma-3-270m"].n_params
    ev = df.loc["evaluate (gemma-3-270m SAEs, text)"]
    assert ev["flops"] == 2 * n * (4 * (16384 + 512 * (1 + 3 + 6)) + 2 * 512 * 4)


def test_a_clt_plans_its_cache_training_evaluation_and_memory():
    """An 18-layer CLT of gemma-3-270m beside one layer's MLP SAEs: the cache holds
    all 36 MLP sites; its training counts 6·L·d·width per token for the encoders and
    6·L0·d per decoder block an active latent writes (L(L+1)/2 per L0); its
    memory on one GPU every tensor (encoders, 171 decoder blocks, gradients, two Adam
    moments) and the step's work; a width that does not fit is named."""
    from saesuite.cluster.memory import clt_bytes
    from saesuite.cluster.plan import gpu_memory

    clt = {"layers": "all", "kind": "clt", "sites": ["mlp"], "widths": [2048],
           "sparsity": {"target_l0": [10]}, "tokens": 65536}  # fmt: skip
    cfg = load_config({
        "models": {"m": {"source": "embedded"}},
        "suite": [{"layers": [9], "sites": ["mlp"], "widths": [4096],
                   "sparsity": {"target_l0": [20]}, "tokens": 300000}, clt],
    })  # fmt: skip
    df = preflight(cfg, tflops=0.1).set_index("stage")
    ctx = cfg["data"]["context_size"]
    tokens = cfg["data"]["train_tokens"] // ctx * ctx
    assert df.loc["extract", "cache_bytes"] == tokens * (36 * 640 * 4 + 5)
    L, d, w = 18, 640, 2048
    want = 65536 * (6 * L * d * w + 6 * 10 * d * L * (L + 1) / 2)
    assert df.loc["train_clt", "flops"] == pytest.approx(want)
    assert df.loc["train_clt", "saes"] == 1 and df.loc["train", "saes"] == 1
    params = L * w * (d + 2) + w * d * 171 + L * d
    batch = cfg["train"]["batch_size"]
    assert clt_bytes(batch, L, d, d, w) == (
        4 * 4 * params + 8 * batch * L * w * 4 + batch * L * 3 * d * 4)  # fmt: skip
    wide = {**clt, "widths": [2**20]}
    on_gpus = {"gpu": True, "gpu_mem_gb": 80}
    gpu = load_config({**cfg, "suite": [wide], "resources": on_gpus})
    _, problems = gpu_memory(gpu)
    assert len(problems) == 1 and "is not sharded over GPUs" in problems[0]


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
    assert "| gemma-3-270m | train | 32 |" in printed and "15.6 GB" in printed
    assert "| gemma-3-270m | train_clt | 2 | 262 k |" in printed  # CLT, crosscoder
    df = pd.read_csv(out)
    # extract, train, evaluate, rollouts, PT SAEs on chat; the default run's
    # fine-tuning (transfer.finetune_share 0.1) with its two evaluations; and its
    # dashboards at layer 9 (dashboards.layers); the CLT's training and evaluation
    assert len(df) == 11
    dash = df.set_index("stage").loc["dashboards"]
    assert dash["saes"] == 10 and dash["tokens"] == 16384  # res, att, mlp, 2 kinds × 2
    effects = 10 * 2 * 640 * 262_144 * 4096  # every latent through the unembedding
    assert effects < dash["flops"] < 1.5 * effects
    ft = df.set_index("stage").loc["finetune (gemma-3-270m SAEs)"]
    assert ft["saes"] == 32 and ft["tokens"] == 32 * 30_000
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"m": {"source": "x", "dtype": "f64"}},
                                   "suite": []}))  # fmt: skip
    with pytest.raises(SystemExit, match="models.m.dtype"):
        main(["plan", "--configfile", str(bad)])


def test_plan_shards_saes_too_wide_for_one_gpu_and_names_those_that_still_do_not_fit():
    """Gemma 2 2B's 2^20-latent SAEs need 16 B × 2 × 2304 × 2^20 = 77 GB of weights,
    gradients and Adam moments, over 90 % of 80 GB, before any activations: the
    suite's 8 GPUs for that width each take 1/8 of the latents and the whole batch of
    4096 rows (6 × 4 B × 4096 × 2^17 = 13 GB of work tensors). With one GPU per job
    it does not fit, and the plan names how many it needs. On CPU there is no limit."""
    from saesuite.cluster.memory import sae_gpu_bytes
    from saesuite.cluster.plan import gpu_memory
    from saesuite.spec.config import REPO_ROOT, load_config

    c = load_config(REPO_ROOT / "config/suites/gemma-2-2b-pt.yaml")
    assert c["resources"]["nproc_by_width"] == {"1048576": 8}
    sharded, problems = gpu_memory(c)
    assert problems == []
    per_gpu = 16 * 2 * 2304 * 2**17 + 16 * 2304 + 8 * 4 * 4096 * 2**17
    assert sae_gpu_bytes(4096, 2304, 2**20, 8, sharded=True) == per_gpu
    assert sharded == [
        f"gemma-2-2b res width 1048576 (layers 5, 12, 19): "
        f"{per_gpu / 1e9:.0f} GB per GPU over 8 GPUs"
    ]
    c["resources"]["nproc_by_width"] = {}
    sharded, problems = gpu_memory(c)
    assert sharded == [] and len(problems) == 2
    # 2^20: (77.3 + 103.1) GB / 3 = 60 GB ≤ 72 GB usable; over 2 GPUs 90 GB
    # 2^19 (layer 12 only): (38.7 + 51.5) GB / 2 = 45 GB; one GPU holds 90 GB
    for p, width, layers, least in zip(
        problems, (2**20, 2**19), ("5, 12, 19", "12"), (3, 2)
    ):
        assert p.startswith(f"gemma-2-2b res width {width} (layers {layers})")
        assert "72 GB usable" in p
        assert f'resources.nproc_by_width {{"{width}": {least}}} or more' in p
    c["resources"]["gpu_mem_gb"] = 250  # one 2^20 SAE per GPU fits
    assert gpu_memory(c) == ([], [])
    c["resources"]["gpu"] = False
    c["resources"]["gpu_mem_gb"] = 1
    assert gpu_memory(c) == ([], [])


def test_data_reuse_shows_epochs_and_the_cache_that_repeats_nothing():
    """Issue 19, item 6: 300k tokens per SAE over 131,072 cached tokens are 2.29
    epochs; with data.train_tokens "unique" the cache holds 300,032 tokens (whole
    128-token sequences) and no SAE repeats one."""
    raw = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    lines = data_reuse(load_config(raw))
    assert lines[0] == (
        "gemma-3-270m: 131 k unique tokens cached; 2 SAEs × 131 k tokens (1 epoch), "
        "32 SAEs × 300 k tokens (2.29 epochs)"
    )
    per_token = (4 * (640 + 1024) + 36 * 640) * 4 + 5  # as the extract row
    size = 300032 * per_token / 1e9
    assert lines[1] == (
        "  no token repeated (data.train_tokens: unique): 300 k tokens, "
        f"a cache of {size:.3g} GB"
    )
    raw["data"]["train_tokens"] = "unique"
    cfg = load_config(raw)
    assert cfg["data"]["train_tokens"] == 300032
    assert data_reuse(cfg) == [
        "gemma-3-270m: 300 k unique tokens cached; 2 SAEs × 131 k tokens (0.437 "
        "epochs), 32 SAEs × 300 k tokens (1 epoch)"
    ]
    extract = preflight(cfg, 0.1).set_index("stage").loc["extract"]
    assert extract["cache_bytes"] == 300032 * per_token
