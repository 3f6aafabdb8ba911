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
   tolerances of gpu_checks.py;
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

Its helper modules: gpu_models.py (random models, inputs, sizes), gpu_checks.py
(section 1) and gpu_report.py (the machine and the tables).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import best_time, sync
from gpu_checks import correctness
from gpu_models import (
    EXTRA,
    bench_spec,
    build_model,
    eval_sae,
    every_site,
    free,
    sibling,
    sizes,
    threshold_for,
    token_ids,
)
from gpu_report import machine, markdown, save

from saesuite.cluster.memory import sae_gpu_bytes
from saesuite.data.extract import extract_batches
from saesuite.data.sites import site_width
from saesuite.eval.passes import evaluate
from saesuite.sae.member import Member, train_step
from saesuite.spec.config import schema_defaults
from saesuite.spec.sections import TrainConfig
from saesuite.spec.sites import Site


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
