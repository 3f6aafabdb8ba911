"""The GPU proof (issue 15): one command that checks saesuite's CUDA paths against the
CPU path on the same inputs, then measures the suite's hot paths on one GPU. Models
are random-weight Gemma 3 270m and Gemma 2 2B shapes built from their published
configs, so no weights travel.

    PYTHONPATH=src python3 benchmarks/gpu.py --out DIR      # one GPU, sized for < 8 min
    .venv/bin/python benchmarks/gpu.py --device cpu --quick --out DIR   # the tests' run

It needs torch, transformers, safetensors, numpy, tqdm and pyyaml, not snakemake, gguf
or sae-lens (the GPU machine has none of them). Each section is written to
DIR/gpu.json (every figure) and DIR/gpu.md (the tables) as soon as it finishes, so a
run cut short keeps what it measured. The exit status is 1 if a correctness check
failed.

1. correctness: on the device and on the CPU, from the same weights and inputs: one
   extraction batch (every site of every layer, float32), one dense and one sparse
   training step of an SAE and of a skip-transcoder (every gradient; and sparse
   against dense on the device), and one evaluation batch (its metrics), within the
   tolerances below;
2. extraction: tokens/s of all sites against the bare forward pass to the deepest
   layer, float32 and bfloat16, both shapes;
3. training: tokens/s of the trainer's step (`train_step`: step, clipping, Adam, the
   decoder norm), dense and sparse, at each d_in × width × L0 (L0 set through the
   threshold), as a share of the float32 matmul ceiling measured in this run (a dense
   step is 10·d·width FLOP per token); which step `train.step: auto` picks and which
   was faster; the peak device memory against `sae_gpu_bytes`, the planner's estimate;
   then SAELens's JumpReLU trainer on the same batches at each d_in × width (the
   lower L0), when sae-lens can be imported: the GPU machine has none, and its wheels
   with those it needs (transformer-lens, plotly, wandb, datasets, nltk …) come to
   ~35 MB, never tried there (BENCHMARKS.md); without them the section says so;
4. evaluation: the marginal cost of one SAE (its spliced pass, encoding, metrics)
   against a clean forward pass with the head, from `evaluate` with one and two SAEs.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import best_time, matmul_ceiling, sync

from saesuite.cluster.memory import sae_gpu_bytes
from saesuite.data.extract import extract_batches
from saesuite.data.models import DTYPES, default_attention
from saesuite.data.sites import site_width
from saesuite.eval.passes import evaluate
from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
from saesuite.sae.member import Member, train_step
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec.config import schema_defaults
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import atomic_open, write_json
from saesuite.spec.known_models import KNOWN
from saesuite.spec.sections import TrainConfig
from saesuite.spec.sites import SITE_NAMES, Site

# Tolerances of the correctness checks: the largest relative error ‖a − b‖ / ‖b‖ over
# the compared tensors (or |a − b| / max(|b|, 1e-3) over metrics). float32 kernels
# differ in summation order (~1e-6 relative per op over 18 layers). θ's gradient is a
# sum over the few pre-activations inside the kernel window: one that rounds across
# the window's edge moves it by a whole term, hence the looser bound (the check uses
# a bandwidth of 0.05 so that the window holds thousands of terms).
EXTRACT_TOL = 1e-3
GRAD_TOL = 1e-3
THETA_TOL = 2e-2
EVAL_TOL = 1e-3
CHECK_BANDWIDTH = 0.05

# Model shapes beyond KNOWN's: vocabularies, KV heads and sliding windows of the
# published config.json files.
EXTRA = {
    "gemma-3-270m": {"arch": "gemma3", "vocab": 262144, "kv": 1, "window": 512},
    "gemma-2-2b": {"arch": "gemma2", "vocab": 256000, "kv": 4, "window": 4096},
}


# Each size on one GPU and in the quick CPU run (the test suite's): (full, quick).
SIZES: dict[str, tuple[Any, Any]] = {
    "ctx": (1024, 16),  # tokens per sequence
    "seqs": (16, 4),  # sequences extracted (half for the 2B shape)
    "batch": (8, 2),  # sequences per forward pass
    "check_ctx": (128, 16),  # tokens per sequence in the correctness checks
    "d_ins": ([640, 2304], [32, 48]),
    "widths": ([16384, 65536, 262144], [256, 1024]),
    "l0s": ([20, 100], [20, 100]),
    "train_batch": (4096, 128),
    "check_width": (4096, 256),
    "check_batch": (1024, 64),
    "warmup": (2, 1),  # training steps before the timed ones
    "steps": (5, 2),  # timed training steps
    "eval_width": (16384, 64),
    "eval_seqs": (4, 2),
    "matmul": (8192, 256),  # n of the n×n×n matmul ceiling
    "repeats": (2, 1),  # best of
}


def sizes(quick: bool) -> dict[str, Any]:
    return {k: v[1] if quick else v[0] for k, v in SIZES.items()}


def hf_config(name: str, quick: bool) -> Any:
    """The transformers config of a random model of `name`'s shape (tiny if quick)."""
    from transformers import Gemma2Config, Gemma3TextConfig

    shape, extra = KNOWN[name], EXTRA[name]
    kw = {
        "vocab_size": extra["vocab"],
        "hidden_size": shape.d_model,
        "intermediate_size": shape.d_mlp,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": extra["kv"],
        "head_dim": shape.head_dim,
        "sliding_window": extra["window"],
        "query_pre_attn_scalar": shape.head_dim,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    if quick:
        kw |= {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "sliding_window": 8,
            "query_pre_attn_scalar": 16,
        }
    return (Gemma2Config if extra["arch"] == "gemma2" else Gemma3TextConfig)(**kw)


def build_model(name: str, quick: bool, dtype: str, device: str, seed: int = 0):
    """A random-weight causal LM of `name`'s shape, initialised on `device`."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(name, quick)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=DTYPES[dtype], attn_implementation=default_attention(cfg)
        )
    return model.eval().requires_grad_(False)


def sibling(name: str):
    """Another benchmark of this folder, as a module."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def token_ids(vocab: int, n_seq: int, ctx: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (n_seq, ctx), generator=g)
    ids[:, 0] = 2  # <bos>
    return ids


def every_site(model) -> list[str]:
    n = model.config.get_text_config().num_hidden_layers
    return [f"layer_{L}.{k}" for L in range(n) for k in SITE_NAMES]


def threshold_for(l0: float, width: int) -> float:
    """θ at which a latent with N(0, 1) pre-activations fires on a share l0/width of
    tokens: with unit-norm encoder columns (the initialisation) and x ~ N(0, I), every
    pre-activation is N(0, 1)."""
    return float(
        torch.special.ndtri(torch.tensor(1.0 - l0 / width, dtype=torch.float64))
    )


def bench_spec(width: int, tokens: int, coefficient: float) -> Dictionary:
    return Dictionary.of("bench", "sae", 0, "res", width, tokens, lambda_=coefficient)


# --- 1. correctness -----------------------------------------------------------------
def check(name: str, err: float, tol: float) -> dict[str, Any]:
    return {"check": name, "error": err, "tolerance": tol, "pass": err <= tol}


def check_extraction(cpu_model, dev_model, s: dict) -> dict[str, Any]:
    sites = every_site(cpu_model)
    widths = {x: site_width(cpu_model, Site.parse(x).kind) for x in sites}
    ids = token_ids(cpu_model.config.vocab_size, 2, s["check_ctx"])
    a = extract_batches(cpu_model, ids, sites, widths, "float32", 2, "cpu")
    b = extract_batches(dev_model, ids, sites, widths, "float32", 2, "device")
    err = max(rel_err(b[x], a[x]) for x in sites)
    return check(f"extraction batch: {len(sites)} sites, float32", err, EXTRACT_TOL)


def check_steps(device: str, s: dict, kind: str = "sae") -> list[dict[str, Any]]:
    """Gradients of both steps, device against CPU, for an SAE or a skip-transcoder
    (its target a random linear map of the input plus noise)."""
    d, w, n = s["d_ins"][0], s["check_width"], s["check_batch"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    tc = kind == "skip_transcoder"
    base = JumpReLUSAE(
        d, w, skip=tc, apply_b_dec_to_input=not tc, bandwidth=CHECK_BANDWIDTH
    ).initialize(torch.Generator().manual_seed(0))
    y = None
    with torch.no_grad():
        base.threshold_raw.fill_(threshold_for(0.02 * w, w))
        if tc:
            base.W_skip.normal_(0, d**-0.5, generator=g)
            y = x @ torch.randn(d, d, generator=g) / d**0.5 + torch.randn(n, d)
    terms = LossTerms("l0", 1e-3)
    grads = {}
    for where, fn in (
        ("cpu", dense_step),
        ("cpu", sparse_step),
        (device, dense_step),
        (device, sparse_step),
    ):
        sae = copy.deepcopy(base).to(where)
        fn(sae, x.to(where), terms, target=None if y is None else y.to(where))
        grads[where, fn.__name__] = {k: p.grad for k, p in sae.named_parameters()}
    rows = []
    what = "skip-transcoder " if tc else ""
    for step in ("dense_step", "sparse_step"):
        rows += pair(f"{what}{step}: device vs CPU", grads[device, step],
                     grads["cpu", step])  # fmt: skip
    rows += pair(
        f"{what}sparse vs dense step on the device",
        grads[device, "sparse_step"],
        grads[device, "dense_step"],
    )
    return rows


def pair(name: str, a: dict, b: dict) -> list[dict[str, Any]]:
    theta = [k for k in b if k.startswith("threshold")]
    rest = max(rel_err(a[k], b[k]) for k in b if k not in theta)
    names = ", ".join(k for k in b if k not in theta)
    return [
        check(f"{name}, gradients of {names}", rest, GRAD_TOL),
        check(f"{name}, gradient of θ", rel_err(a[theta[0]], b[theta[0]]), THETA_TOL),
    ]


EVAL_KEYS = (
    "mse",
    "fvu",
    "l0",
    "cosine",
    "clean_loss",
    "spliced_loss",
    "zero_ablation_loss",
    "kl",
)


def eval_sae(d_in: int, width: int, device: str) -> JumpReLUSAE:
    sae = JumpReLUSAE(d_in, width, apply_b_dec_to_input=False)
    return sae.initialize(torch.Generator().manual_seed(0)).to(device)


def check_evaluation(cpu_model, dev_model, device: str, s: dict) -> dict[str, Any]:
    site = Site(cpu_model.config.num_hidden_layers // 2, "res")
    ids = token_ids(cpu_model.config.vocab_size, 2, s["check_ctx"])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    sae = eval_sae(site_width(cpu_model, "res"), s["eval_width"], "cpu")
    out = {}
    for where, model in (("cpu", cpu_model), (device, dev_model)):
        acc = evaluate(
            model,
            ids.to(where),
            mask.to(where),
            {"sae": (site, copy.deepcopy(sae).to(where))},
            batch_size=2,
            loss_batch_size=2,
        )["sae"]
        out[where] = acc.metrics()
    a, b = out[device], out["cpu"]
    err = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-3) for k in EVAL_KEYS)
    return check(f"evaluation batch: {', '.join(EVAL_KEYS)}", err, EVAL_TOL)


def correctness(device: str, quick: bool, s: dict) -> list[dict[str, Any]]:
    cpu_model = build_model("gemma-3-270m", quick, "float32", "cpu")
    dev_model = copy.deepcopy(cpu_model).to(device)
    rows = [check_extraction(cpu_model, dev_model, s)]
    rows += check_steps(device, s) + check_steps(device, s, "skip_transcoder")
    rows.append(check_evaluation(cpu_model, dev_model, device, s))
    return rows


# --- 2. extraction ------------------------------------------------------------------
def extraction(device: str, quick: bool, s: dict) -> list[dict[str, Any]]:
    bare_forward = sibling("extract").bare_forward
    rows = []
    for name in EXTRA:
        for dtype in ("float32", "bfloat16"):
            rows.append(extract_one(name, dtype, device, quick, s, bare_forward))
            free(device)
    return rows


def extract_one(name, dtype, device, quick, s, bare_forward) -> dict[str, Any]:
    model = build_model(name, quick, dtype, device)
    sites = every_site(model)
    widths = {x: site_width(model, Site.parse(x).kind) for x in sites}
    n_seq = s["seqs"] // (2 if name == "gemma-2-2b" else 1)
    ids = token_ids(model.config.vocab_size, n_seq, s["ctx"]).to(device)
    last = model.config.num_hidden_layers - 1
    bare = best_time(
        lambda: bare_forward(model, ids, s["batch"], last), device, s["repeats"] + 1
    )
    every = best_time(
        lambda: extract_batches(model, ids, sites, widths, dtype, s["batch"]),
        device,
        s["repeats"],
    )
    n = ids.numel()
    return {
        "model": name, "dtype": dtype, "tokens": n, "sites": len(sites),
        "bare_tok_s": n / bare, "all_sites_tok_s": n / every, "ratio": bare / every,
    }  # fmt: skip


def free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- 3. training and memory ---------------------------------------------------------
def training(device: str, s: dict, ceiling: float) -> list[dict[str, Any]]:
    cfg = schema_defaults("train") | {
        "batch_size": s["train_batch"],
        "log_every": 10**9,
    }
    steps = s["warmup"] + s["steps"]
    cuda = device.startswith("cuda")
    rows = []
    for d in s["d_ins"]:
        g = torch.Generator().manual_seed(2)
        batches = [
            torch.randn(s["train_batch"], d, generator=g).to(device)
            for _ in range(steps)
        ]
        for w in s["widths"]:
            for mode in ("dense", "sparse"):
                run = TrainConfig.from_dict({**cfg, "step": mode})
                free(device)
                base = torch.cuda.memory_allocated(device) if cuda else 0
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                m = Member(bench_spec(w, 10**12, 1e-4), d, run, seed=0, device=device)
                for l0 in s["l0s"]:
                    with torch.no_grad():
                        m.sae.threshold_raw.fill_(threshold_for(l0, w))
                    for i in range(s["warmup"]):
                        train_step(m, batches[i], i, run, 1)
                    l0s = []
                    sync(device)
                    t = time.perf_counter()
                    for i in range(s["warmup"], steps):
                        l0s.append(train_step(m, batches[i], i, run, 1)["l0"])
                    sync(device)
                    dt = (time.perf_counter() - t) / s["steps"]
                    tok_s = s["train_batch"] / dt
                    rows.append(
                        {
                            "d_in": d,
                            "width": w,
                            "target_l0": l0,
                            "step": mode,
                            "l0": sum(l0s) / len(l0s),
                            "tok_s": tok_s,
                            "share_fp32": 10 * d * w * tok_s / ceiling,
                        }
                    )
                peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
                estimate = sae_gpu_bytes(s["train_batch"], d, w, 1)
                for r in rows[-len(s["l0s"]) :]:
                    r |= {
                        "peak_bytes": peak,
                        "estimate_bytes": estimate,
                        "peak_over_estimate": peak / estimate if peak else None,
                    }
                del m
    auto_verdicts(rows, cfg["sparse_density"])
    return sorted(rows, key=lambda r: (r["d_in"], r["width"], r["target_l0"]))


def auto_verdicts(rows: list[dict[str, Any]], density: float) -> None:
    """For each case: the faster step, and the one `train.step: auto` takes (sparse
    below `sparse_density` × width active latents, from the last step's L0)."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault((r["d_in"], r["width"], r["target_l0"]), {})[r["step"]] = r
    for case in by_case.values():
        faster = max(case, key=lambda k: case[k]["tok_s"])
        auto = (
            "sparse"
            if case["sparse"]["l0"] < density * case["sparse"]["width"]
            else "dense"
        )
        speedup = case["sparse"]["tok_s"] / case["dense"]["tok_s"]
        for r in case.values():
            r |= {"faster": faster, "auto": auto, "sparse_over_dense": speedup}


# --- 3b. SAELens's trainer on the same batches ----------------------------------------
def saelens(device: str, s: dict, ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SAELens's JumpReLU trainer (dense) on the training section's shapes at the
    lower L0, from saesuite's initialisation, against saesuite's faster step there."""
    try:
        import sae_lens
    except ImportError:
        return [{"note": "sae_lens is not importable here: carry its wheels (see "
                 "BENCHMARKS.md) to compare SAELens's trainer"}]  # fmt: skip
    run = sibling("train").run_saelens
    l0, steps = s["l0s"][0], s["warmup"] + s["steps"]
    rows = []
    for d in s["d_ins"]:
        g = torch.Generator().manual_seed(2)
        batches = torch.stack(
            [torch.randn(s["train_batch"], d, generator=g) for _ in range(steps)]
        ).to(device)
        for w in s["widths"]:
            hp = schema_defaults("train") | {"init_threshold": threshold_for(l0, w),
                                     "_lr_warmup": 0, "_lam_warmup": 0}  # fmt: skip
            args = argparse.Namespace(steps=steps, width=w, batch=s["train_batch"],
                                      l0_coef=1e-4)  # fmt: skip
            free(device)
            _, times, l0s = run(batches, args, hp, device=device)
            timed = times[s["warmup"] :]
            tok_s = s["train_batch"] * len(timed) / sum(timed)
            case = (d, w, l0)
            best = max(r["tok_s"] for r in ours
                       if (r["d_in"], r["width"], r["target_l0"]) == case)  # fmt: skip
            rows.append({"d_in": d, "width": w, "target_l0": l0,
                         "l0": sum(l0s[s["warmup"] :]) / len(timed), "tok_s": tok_s,
                         "saesuite_tok_s": best, "ratio": best / tok_s,
                         "sae_lens": sae_lens.__version__})  # fmt: skip
    return rows


# --- 4. evaluation ------------------------------------------------------------------
def evaluation(device: str, quick: bool, s: dict) -> list[dict[str, Any]]:
    rows = []
    for name, dtype in (("gemma-3-270m", "float32"), ("gemma-2-2b", "bfloat16")):
        rows.append(evaluate_one(name, dtype, device, quick, s))
        free(device)
    return rows


def evaluate_one(name, dtype, device, quick, s) -> dict[str, Any]:
    model = build_model(name, quick, dtype, device)
    ids = token_ids(model.config.vocab_size, s["eval_seqs"], s["ctx"]).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    site = Site(model.config.num_hidden_layers // 2, "res")
    d = site_width(model, "res")
    saes = {i: (site, eval_sae(d, s["eval_width"], device)) for i in range(2)}

    def clean():
        with torch.no_grad():
            for b0 in range(0, len(ids), 2):
                model(input_ids=ids[b0 : b0 + 2], use_cache=False)

    def run(k: int):
        chosen = dict(list(saes.items())[:k])
        evaluate(model, ids, mask, chosen, batch_size=2, loss_batch_size=2)

    clean()  # warm-up
    full = best_time(clean, device, s["repeats"] + 1)
    one = best_time(lambda: run(1), device, s["repeats"])
    two = best_time(lambda: run(2), device, s["repeats"])
    return {
        "model": name, "dtype": dtype, "layer": site.layer, "tokens": ids.numel(),
        "width": s["eval_width"], "clean_s": full, "per_sae_s": two - one,
        "shared_s": 2 * one - two, "per_sae_over_clean": (two - one) / full,
    }  # fmt: skip


# --- report -------------------------------------------------------------------------
def gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# Each section's table: title, (column, alignment) pairs, and a row's cells.
TABLES = {
    "correctness": (
        "Correctness: device against CPU",
        [("check", "<"), ("error", ">"), ("tolerance", ">"), ("result", "<")],
        lambda r: [r["check"], f"{r['error']:.2e}", f"{r['tolerance']:.0e}",
                   "pass" if r["pass"] else "FAIL"],
    ),
    "extraction": (
        "Extraction: all sites against the bare forward",
        [("model", "<"), ("dtype", "<"), ("tokens", ">"), ("sites", ">"),
         ("bare forward tok/s", ">"), ("all sites tok/s", ">"), ("all / bare", ">")],
        lambda r: [r["model"], r["dtype"], str(r["tokens"]), str(r["sites"]),
                   f"{r['bare_tok_s']:.0f}", f"{r['all_sites_tok_s']:.0f}",
                   f"{r['ratio']:.0%}"],
    ),
    "training": (
        "Training step and memory",
        [("d_in", ">"), ("width", ">"), ("L0 target", ">"), ("step", "<"),
         ("L0", ">"), ("tok/s", ">"), ("share of fp32 ceiling", ">"),
         ("sparse / dense", ">"), ("faster", "<"), ("auto picks", "<"),
         ("peak GB", ">"), ("estimate GB", ">"), ("peak / estimate", ">")],
        lambda r: [str(r["d_in"]), str(r["width"]), str(r["target_l0"]), r["step"],
                   f"{r['l0']:.1f}", f"{r['tok_s']:.0f}", f"{r['share_fp32']:.1%}",
                   f"{r['sparse_over_dense']:.2f}", r["faster"], r["auto"],
                   gb(r["peak_bytes"]), gb(r["estimate_bytes"]),
                   _ratio(r["peak_over_estimate"])],
    ),
    "saelens": (
        "SAELens's trainer on the same batches (dense; saesuite: its faster step)",
        [("d_in", ">"), ("width", ">"), ("L0 target", ">"), ("L0", ">"),
         ("SAELens tok/s", ">"), ("saesuite tok/s", ">"), ("saesuite / SAELens", ">"),
         ("sae-lens", "<")],
        lambda r: [str(r["d_in"]), str(r["width"]), str(r["target_l0"]),
                   f"{r['l0']:.1f}", f"{r['tok_s']:.0f}", f"{r['saesuite_tok_s']:.0f}",
                   f"{r['ratio']:.2f}", r["sae_lens"]],
    ),
    "evaluation": (
        "Evaluation: one SAE's marginal cost against a clean forward",
        [("model", "<"), ("dtype", "<"), ("layer", ">"), ("tokens", ">"),
         ("SAE width", ">"), ("clean forward s", ">"), ("per SAE s", ">"),
         ("shared s", ">"), ("per SAE / clean", ">")],
        lambda r: [r["model"], r["dtype"], str(r["layer"]), str(r["tokens"]),
                   str(r["width"]), f"{r['clean_s']:.3f}", f"{r['per_sae_s']:.3f}",
                   f"{r['shared_s']:.3f}", f"{r['per_sae_over_clean']:.2f}"],
    ),
}  # fmt: skip


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    out = [
        f"# GPU proof: {m['device_name']}",
        "",
        f"{rep['date']}; `{rep['command']}`; torch {m['torch']}, transformers "
        f"{m['transformers']}, Python {m['python']}; matmul ceiling "
        f"{m['fp32_flops'] / 1e12:.1f} TFLOP/s float32, "
        f"{m['bf16_flops'] / 1e12:.1f} TFLOP/s bfloat16 ({m['matmul_n']}³).",
        "",
    ]
    sec = rep["sections"]
    for name, (title, columns, cells) in TABLES.items():
        if name not in sec:
            continue
        if sec[name] and "note" in sec[name][0]:
            out += [f"## {title}", "", sec[name][0]["note"], ""]
            continue
        head = [c for c, _ in columns]
        align = "|" + "|".join("---" if a == "<" else "---:" for _, a in columns) + "|"
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", align]
        out += ["| " + " | ".join(cells(r)) + " |" for r in sec[name]]
        out.append("")
    return "\n".join(out)


def save(rep: dict[str, Any], out: Path) -> None:
    write_json(out / "gpu.json", rep)
    with atomic_open(out / "gpu.md") as f:
        f.write(markdown(rep))


def machine(device: str, s: dict) -> dict[str, Any]:
    import transformers

    name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "matmul_n": s["matmul"],
        "fp32_flops": matmul_ceiling(
            s["matmul"], s["matmul"], s["matmul"], device, torch.float32, 10
        ),
        "bf16_flops": matmul_ceiling(
            s["matmul"], s["matmul"], s["matmul"], device, torch.bfloat16, 10
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", required=True, type=Path, help="folder for gpu.json, gpu.md"
    )
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few steps")
    ap.add_argument(
        "--only",
        nargs="*",
        choices=["correctness", "extraction", "training", "saelens", "evaluation"],
        help="run these sections only",
    )
    args = ap.parse_args(argv)
    if args.only and "saelens" in args.only and "training" not in args.only:
        ap.error("--only saelens compares with the training section: name it too")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    s = sizes(args.quick)
    torch.manual_seed(0)
    rep: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            ["benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "sizes": s,
        "machine": machine(args.device, s),
        "sections": {},
        "seconds": {},
    }
    sections = {
        "correctness": lambda: correctness(args.device, args.quick, s),
        "extraction": lambda: extraction(args.device, args.quick, s),
        "training": lambda: training(args.device, s, rep["machine"]["fp32_flops"]),
        "saelens": lambda: saelens(args.device, s, rep["sections"]["training"]),
        "evaluation": lambda: evaluation(args.device, args.quick, s),
    }
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        rep["sections"][name] = fn()
        rep["seconds"][name] = time.perf_counter() - t
        save(rep, args.out)
        print(f"[{name}: {rep['seconds'][name]:.0f} s]", flush=True)
    print(markdown(rep))
    failed = [
        r["check"] for r in rep["sections"].get("correctness", []) if not r["pass"]
    ]
    for name in failed:
        print(f"FAIL: {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
