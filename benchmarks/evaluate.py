"""Evaluation cost per SAE on the embedded gemma-3-270m, in units of one full forward
pass (with the language-model head) over the same tokens.

    .venv/bin/python benchmarks/evaluate.py [--tokens 512] [--repeats 2]

`--quick --model DIR` (the test suite's run): random 64-wide SAEs on a local model
directory, a few sequences, once (the timings then say nothing; the code runs).

Uses the residual SAEs of the default run (`make run` first). For each layer,
`evaluate` runs with one and with both of the layer's residual SAEs (target L0 80,
then also 20): the difference is the marginal cost of one SAE (its spliced pass,
encode/decode and metrics), with spliced passes that replay the clean output of the
layer before (`resume`) and, for comparison, recomputing every layer. The clean pass
and the site's zero-ablation pass are shared and reported apart. The
reconstruction-only path (no head) is measured the same way. Trained SAEs matter:
random ones produce extreme logits whose logsumexp runs several times slower.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from common import bench_model

from saesuite.data.sites import site_width
from saesuite.eval.evaluate import load_released
from saesuite.eval.passes import evaluate
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.config import REPO_ROOT
from saesuite.spec.sites import Site
from saesuite.spec.suite import model_layers


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def random_sae(d_in: int, seed: int) -> JumpReLUSAE:
    return JumpReLUSAE(d_in, 64).initialize(torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="a local model directory, with random SAEs")
    ap.add_argument("--quick", action="store_true", help="a few sequences, once")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.context, args.batch, args.repeats = 64, 16, 2, 1
    torch.set_num_threads(args.threads)

    key, cfg, mcfg, model = bench_model(args.model, args.device)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    n_seq = args.tokens // args.context
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(10, min(vocab, 200_000), (n_seq, args.context), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    saes_dir = REPO_ROOT / cfg["output_root"] / key / "saes"

    def full_pass() -> None:
        with torch.no_grad():
            for b0 in range(0, n_seq, args.batch):
                model(input_ids=ids[b0 : b0 + args.batch].to(device), use_cache=False)

    def run(site: Site, k: int, **kw) -> None:
        folder = saes_dir / f"layer_{site.layer}" / site.kind / "width_4096"
        if args.model:
            d = site_width(model, site.kind)
            saes = {i: (site, random_sae(d, i).to(device)) for i in range(k)}
        else:
            saes = {lab: (site, load_released(folder / lab).to(device))
                    for lab in ("l0_80", "l0_20")[:k]}  # fmt: skip
        evaluate(model, ids, mask, saes, batch_size=args.batch,
                 loss_batch_size=args.batch, **kw)  # fmt: skip

    full_pass()  # warm-up
    full = best_time(full_pass, args.repeats)
    rows = []
    n_layers = model.config.get_text_config().num_hidden_layers
    layers = range(n_layers) if args.model else model_layers(cfg, key)
    for layer in layers:
        site = Site(layer, "res")
        t = {}
        for name, kw in {"resume": {}, "recompute": {"resume": False},
                         "no head": {"loss_sequences": 0}}.items():  # fmt: skip
            one = best_time(lambda kw=kw: run(site, 1, **kw), args.repeats)
            two = best_time(lambda kw=kw: run(site, 2, **kw), args.repeats)
            t[name] = (two - one, 2 * one - two)
        rows.append((layer, t))

    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}, device {device}; "
          f"{args.tokens} tokens, batch {args.batch} × {args.context}, "
          f"{key} ({n_layers} layers), "
          f"SAE width {'64 (random)' if args.model else 4096}; "
          f"full pass with head {full:.2f} s")  # fmt: skip
    print("| layer | per SAE, resumed | per SAE, recomputed | shared (clean + zero) "
          "| per SAE, reconstruction only |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    for layer, t in rows:
        res, rec, nohead = (t[k][0] / full for k in ("resume", "recompute", "no head"))
        shared = t["resume"][1] / full
        print(f"| {layer} | {res:.2f}× | {rec:.2f}× | {shared:.2f}× | {nohead:.3f}× |")


if __name__ == "__main__":
    main()
