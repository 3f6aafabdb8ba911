"""What jobs ask a scheduler for (saesuite.cluster.resources), against hand
computations."""

from __future__ import annotations

import pytest
from helpers import make_config

from saesuite.cluster.memory import train_flops
from saesuite.cluster.resources import (
    BASE_MB,
    evaluate_estimate,
    extract_estimate,
    model_mb,
    request,
    runtime_min,
    train_mem_mb,
    train_nproc,
)
from saesuite.spec.config import load_config
from saesuite.spec.known_models import KNOWN
from saesuite.spec.suite import expand_suite


def cfg(**resources):
    c = make_config("google/gemma-2-2b", resources=resources)
    c["models"]["tiny"]["dtype"] = "bfloat16"
    return load_config(c)


def test_gpu_requests_follow_the_config():
    off, on = cfg(), cfg(gpu=True, gres="gpu:h100:{n}", cpus_per_gpu=4)
    assert request(off, "train", 1000, 0.0) == {
        "mem_mb": 1000, "runtime": 10 + 10, "cpus_per_task": 2,
        "slurm_extra": "--signal=USR1@600",
    }  # fmt: skip
    r = request(on, "train", 1000, 0.0, gpus=4)
    assert (r["gres"], r["cpus_per_task"]) == ("gpu:h100:4", 16)
    # CPU-only stages never ask for GPUs, and only training gets the signal
    assert "gres" not in request(on, "eval_table", 1000, 0.0)
    assert "slurm_extra" not in request(on, "extract", 1000, 0.0)
    assert "slurm_extra" not in request(cfg(preempt_signal_s=0), "train", 1, 0.0)


def test_runtime_is_twice_the_estimate_clamped():
    c = cfg(gpu=True, gpu_tflops=50, min_runtime=10, max_runtime=600)
    assert runtime_min(c, "extract", 1e12) == 10  # 0.04 s of work
    flops = 50e12 * 60 * 100  # 100 minutes at 50 TFLOP/s
    assert runtime_min(c, "extract", flops) == 200
    assert runtime_min(c, "extract", flops * 10) == 600
    assert runtime_min(c, "eval_table", 0.1e12 * 60) == 10  # CPU rate
    assert runtime_min(c, "extract", None) == 600  # unknown model: the maximum


def test_train_estimates_match_hand_computation():
    c = cfg()
    specs = [s for s in expand_suite(c) if s.layer == 1 and s.site == "res"]
    d = 2304
    bucket = 1000 * d * 4  # shuffle_bucket × d_in × float32
    per_sae = 16 * 2 * d * 128 + 8 * 4 * 256 * 128
    assert train_mem_mb(c, specs, d) == int((bucket + 2 * per_sae) / 2**20 * 1.5) + 2048
    # on GPUs the host keeps the bucket and a checkpoint's weights + 2 Adam moments
    on_gpu = cfg(gpu=True)
    host = bucket + 2 * 3 * (2 * d * 128 * 4)
    assert train_mem_mb(on_gpu, specs, d) == int(host / 2**20 * 1.5) + 2048
    assert train_flops(specs, d) == 2 * 10 * d * 128 * 20000


def test_wide_saes_train_on_more_gpus():
    c = cfg(nproc_by_width={"262144": 2, "1048576": 8})
    assert train_nproc(c, [16384, 65536]) == 1
    assert train_nproc(c, [16384, 262144]) == 2
    assert train_nproc(c, [2**20]) == 8


def test_model_memory(tmp_path):
    c = cfg()
    assert model_mb(c, "tiny") == int(2 * KNOWN["gemma-2-2b"].n_params * 2 / 2**20)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2**20)
    (tmp_path / "config.json").write_text("{}")
    c["models"]["tiny"]["source"] = str(tmp_path)
    assert model_mb(c, "tiny") == 4  # 4 × the weight files
    c["models"]["tiny"]["source"] = "someone/unknown-model"
    assert model_mb(c, "tiny") == c["resources"]["unknown_model_mb"]


def test_evaluate_estimate_counts_the_passes():
    c = cfg()
    specs = [s for s in expand_suite(c) if s.layer == 2]  # 3 sites × 2 SAEs
    mem, flops = evaluate_estimate(c, "tiny", "text", specs)
    n = KNOWN["gemma-2-2b"].n_params
    # reconstruction over 1,024 tokens; loss over 256 for 6 SAEs + 3 zero-ablations
    # + the clean pass
    assert flops == 2 * n * (1024 + 256 * (6 + 3 + 1))
    # res and mlp are 2304 wide, att 8 heads × 256 = 2048
    sae_mb = 2 * (2304 + 2048 + 2304) * 2 * 128 * 4 / 2**20
    # on the CPU the pass's tensors too: per loss batch of L × T × V logits, p in
    # float32, the spliced logits and a temporary in bfloat16, their float32 copy,
    # two float64 KL blocks; per batch of B, the three sites captured and rebuilt;
    # encoding's three (B, T, width) float32 tensors
    ev, T, V = c["evaluate"], c["data"]["context_size"], 256000
    L, B = ev["loss_batch_size"], ev["batch_size"]
    logits = L * T * V
    work = (logits * (4 + 2 * 2 + 4) + 2 * min(2**24, logits) * 8
            + 2 * B * T * (2304 + 2048 + 2304) * 4 + 3 * 4 * B * T * 128)  # fmt: skip
    assert mem == (
        model_mb(c, "tiny") + int(1.5 * sae_mb) + BASE_MB + int(1.5 * work / 2**20)
    )
    # On a 10 GB GPU, 9 GB - 5.2 GB of bf16 weights - 4.3 GB of work leaves no room
    # beside the model: counted as 1 GB of SAEs, 6 × 2.4 MB → one group still. The
    # host holds one SAE at a time.
    g = cfg(gpu=True, gpu_mem_gb=10)
    mem_g, flops_g = evaluate_estimate(g, "tiny", "text", specs)
    assert (
        flops_g == flops
        and mem_g == model_mb(c, "tiny") + int(1.5 * sae_mb / 6) + BASE_MB
    )


def test_evaluating_saes_wider_than_a_gpu_holds_beside_the_model_repeats_clean_passes():
    """Gemma 2 9B layer 20: 66 SAEs, 6 of them 2^20 wide (30 GB each in fp32). On
    80 GB GPUs with 18.5 GB of bf16 weights beside them, they go in groups, and each
    group repeats the clean, zero-ablation and reconstruction passes."""
    import math

    from saesuite.spec.config import REPO_ROOT

    c = load_config(REPO_ROOT / "config/suites/gemma-2-9b-pt.yaml")
    specs = [s for s in expand_suite(c) if s.layer == 20]
    shape = KNOWN["gemma-2-9b"]
    sizes = sum(2 * shape.site_width(s.site) * s.width * 4 for s in specs)
    free = 0.9 * 80e9 - KNOWN["gemma-2-9b"].n_params * 2 - 2**32
    groups = math.ceil(sizes / free)
    assert groups > 3
    _, flops = evaluate_estimate(c, "gemma-2-9b", "text", specs)
    n, ev = KNOWN["gemma-2-9b"].n_params, c["evaluate"]
    tok = ev["tokens"] or 2048 * 1024
    loss = min(ev["loss_tokens"] or tok, tok)
    assert flops == 2 * n * (groups * (tok + loss * 4) + loss * len(specs))


def test_extract_memory_is_one_batch_whatever_the_chunk():
    """The chunk streams to its file: memory is a batch of every site's activations
    (float32 + bfloat16), the split's ids and mask, and the model."""
    c = cfg()
    c["activations"]["dtype"] = "bfloat16"
    sites = [(0, "res"), (0, "att"), (3, "mlp")]
    mem, flops = extract_estimate(c, "tiny", sites)
    batch = c["models"]["tiny"]["batch_size"] * c["data"]["context_size"]
    acts = batch * (2304 + 2048 + 2304) * (4 + 2)
    ids = 5 * c["data"]["train_tokens"]
    assert mem == model_mb(c, "tiny") + int((acts + ids) / 2**20 * 1.5) + BASE_MB
    shape = KNOWN["gemma-2-2b"]
    tokens = c["activations"]["chunk_tokens"]
    assert flops == 2 * shape.n_params * 4 / shape.n_layers * tokens
    c["activations"]["chunk_tokens"] *= 64
    assert extract_estimate(c, "tiny", sites)[0] == mem


@pytest.mark.parametrize("bad", [{"gres": "gpu"}, {"nproc_by_width": {"wide": 2}}])
def test_bad_resource_settings_name_the_key(bad):
    with pytest.raises(Exception, match="resources"):
        cfg(**bad)


def test_a_skip_transcoders_bytes_count_its_skip_matrix():
    """Issue 16: W_skip (d_in × d_in, fp32) is 7 % of a 2B transcoder at 2^14: the
    sizes count it; whole on every process of a sharded job, with its gradient and
    Adam's two moments."""
    from saesuite.cluster.memory import sae_gpu_bytes
    from saesuite.spec.sizes import dictionary_bytes

    d, w = 2304, 2**14
    assert dictionary_bytes(d, w, skip=True) - dictionary_bytes(d, w) == 4 * d * d
    for nproc, sharded in ((1, False), (4, False), (4, True)):
        plain = sae_gpu_bytes(4096, d, w, nproc, sharded=sharded)
        skip = sae_gpu_bytes(4096, d, w, nproc, sharded=sharded, skip=True)
        assert skip - plain == 4 * 4 * d * d


def test_dashboard_memory_depends_on_width_and_k_not_on_tokens():
    """Issue 17, item 2: a dashboards job streams its top-k, so its request grows
    with the SAEs' width × (top_k + samples) × window, never with dashboards.tokens."""
    from saesuite.cluster.resources import dashboards_estimate

    def estimate(**dash):
        cfg = load_config(make_config("google/gemma-2-2b", dashboards=dash))
        specs = [s for s in expand_suite(cfg) if s.layer == 1]
        return dashboards_estimate(cfg, "tiny", specs)

    mem, flops = estimate(tokens=256)  # of the 1024 held-out tokens
    mem4, flops4 = estimate(tokens=1024)
    # the forward and encoding grow with the tokens; the logit effects (every
    # latent through gemma-2-2b's 2304 × 256,000 unembedding) do not
    cfg = load_config(make_config("google/gemma-2-2b"))
    effects = sum(2 * 2304 * 256_000 * s.width for s in expand_suite(cfg)
                  if s.layer == 1)  # fmt: skip
    assert mem4 == mem
    assert flops4 - effects == pytest.approx(4 * (flops - effects), rel=1e-9)
    wide, _ = estimate(tokens=256, top_k=200)
    specs = [s for s in expand_suite(load_config(make_config("google/gemma-2-2b")))
             if s.layer == 1]  # fmt: skip
    slots = 180 * (2 * 8 + 1) * 12  # 180 more contexts of 17 tokens, 12 bytes each
    want = sum(s.width for s in specs) * slots * 1.5 / 2**20
    assert wide - mem == pytest.approx(want, abs=2)


def test_the_matryoshka_losss_memory_is_counted_as_autograd_keeps_it():
    """Issue 19: the Matryoshka loss keeps a partial decode per group of latents for
    the backward pass. What autograd saves in the dense loss (measured with
    saved_tensors_hooks) is what sae_gpu_bytes adds for prefixes, within the
    factor the gradients of those tensors take at backward (≤ 2×), as for the
    (rows, width) tensors of any SAE."""
    import torch

    from saesuite.cluster.memory import n_prefixes, sae_gpu_bytes
    from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
    from saesuite.spec.sizes import dictionary_bytes

    d, w, B = 64, 1024, 256
    sae, x = JumpReLUSAE(d, w), torch.randn(B, d)

    def saved(prefixes: tuple[int, ...]) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sae.training_loss(x, LossTerms(lambda_=1e-3, prefixes=prefixes))
        return sum(sizes)

    plain = sae_gpu_bytes(B, d, w, 1)
    assert n_prefixes([1 / 16, 1 / 4]) == 2 and n_prefixes(None) == 0
    extra = sae_gpu_bytes(B, d, w, 1, prefixes=2) - plain
    kept = saved((64, 256)) - saved(())
    assert kept <= extra <= 2 * kept
    acts = plain - 4 * dictionary_bytes(d, w)
    # saved for backward, then the gradients and the estimators' temporaries at
    # backward: the peak measured in test_memory_measured.py is ~2.1× what is saved
    assert saved(()) <= acts <= 2.5 * saved(())
    sharded = sae_gpu_bytes(B, d, w, 4, sharded=True, prefixes=2)
    assert sharded - sae_gpu_bytes(B, d, w, 4, sharded=True) == 4 * 4 * 3 * B * d
