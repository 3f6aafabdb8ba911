"""Evaluation cost per SAE on the embedded gemma-3-270m, in units of one full forward
pass (with the language-model head) over the same tokens.

    .venv/bin/python benchmarks/evaluate.py [--tokens 512] [--repeats 2]

For each layer of the default config, `evaluate` runs with 1 and with 3 SAEs at the
layer's residual site; the difference over 2 is the marginal cost of one SAE (its
spliced pass, encode/decode and metrics), with spliced passes that replay the clean
output of the layer before (`resume`) and, for comparison, recomputing every layer.
The clean pass and the site's zero-ablation pass are shared and reported apart.
The reconstruction-only path (no head) is measured the same way.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from saesuite.config import REPO_ROOT, Site, load_config, model_layers
from saesuite.evaluate import evaluate
from saesuite.models import load_model
from saesuite.sae import JumpReLUSAE


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    key = next(iter(cfg["models"]))
    model = load_model(
        {**cfg["models"][key], "device": args.device}, REPO_ROOT / "results" / "cache"
    )
    device = next(model.parameters()).device
    d = model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(0)
    n_seq = args.tokens // args.context
    ids = torch.randint(10, 200_000, (n_seq, args.context), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    torch.manual_seed(0)
    saes = [
        JumpReLUSAE(d, args.width, apply_b_dec_to_input=False).initialize().to(device)
        for _ in range(3)
    ]

    def full_pass() -> None:
        with torch.no_grad():
            for b0 in range(0, n_seq, args.batch):
                model(input_ids=ids[b0 : b0 + args.batch].to(device), use_cache=False)

    def run(site: Site, k: int, **kw) -> None:
        evaluate(model, ids, mask, {f"{i}": (site, saes[i]) for i in range(k)},
                 batch_size=args.batch, loss_batch_size=args.batch, **kw)  # fmt: skip

    full_pass()  # warm-up
    full = best_time(full_pass, args.repeats)
    rows = []
    for layer in model_layers(cfg, key):
        site = Site(layer, "res")
        t = {}
        for name, kw in {"resume": {}, "recompute": {"resume": False},
                         "no head": {"loss_sequences": 0}}.items():  # fmt: skip
            one = best_time(lambda kw=kw: run(site, 1, **kw), args.repeats)
            three = best_time(lambda kw=kw: run(site, 3, **kw), args.repeats)
            t[name] = ((three - one) / 2, one - (three - one) / 2)
        rows.append((layer, t))

    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, device {device}; "
          f"{args.tokens} tokens, batch {args.batch} × {args.context}, "
          f"{key} ({model.config.get_text_config().num_hidden_layers} layers), "
          f"SAE width {args.width}; full pass with head {full:.2f} s")  # fmt: skip
    print("| layer | per SAE, resumed | per SAE, recomputed | shared (clean + zero) "
          "| per SAE, reconstruction only |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    for layer, t in rows:
        res, rec, nohead = (t[k][0] / full for k in ("resume", "recompute", "no head"))
        shared = t["resume"][1] / full
        print(f"| {layer} | {res:.2f}× | {rec:.2f}× | {shared:.2f}× | {nohead:.3f}× |")


if __name__ == "__main__":
    main()
