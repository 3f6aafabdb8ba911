"""Extraction throughput on the embedded gemma-3-270m: bare forward to the deepest
layer (no site hooks), extraction of one site, and of all sites of the default config.

    .venv/bin/python benchmarks/extract.py [--tokens 16384] [--repeats 2]

`--quick --model DIR` (the test suite's run): a few hundred tokens through a local
model directory, every site of every layer, once.

Goal (issue 2): all sites ≥ 90 % of the bare forward's tokens/s, and ≤ 1.1× the time
of one site. Runs are interleaved and the best of `repeats` is kept.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from common import bench_model

from saesuite.data.extract import extract_batches
from saesuite.data.sites import StopForward, decoder_layers, site_width
from saesuite.spec.sites import SITE_NAMES
from saesuite.spec.suite import model_sites


def bare_forward(model, ids, batch, last):
    def stop(*_):
        raise StopForward

    h = decoder_layers(model)[last].register_forward_hook(stop)
    try:
        with torch.no_grad():
            for b0 in range(0, len(ids), batch):
                try:
                    model(input_ids=ids[b0 : b0 + batch], use_cache=False)
                except StopForward:
                    pass
    finally:
        h.remove()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--model", help="a local model directory (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="a few hundred tokens, once")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.context, args.batch, args.repeats = 256, 32, 4, 1
    torch.set_num_threads(args.threads)

    key, cfg, mcfg, model = bench_model(args.model, "cpu")
    if args.model:  # every site of every layer
        n = model.config.get_text_config().num_hidden_layers
        sites = [f"layer_{L}.{k}" for L in range(n) for k in SITE_NAMES]
    else:
        sites = [s.name for s in model_sites(cfg, key)]
    last = max(int(s.split(".")[0].removeprefix("layer_")) for s in sites)
    widths = {s: site_width(model, s.split(".")[1]) for s in sites}
    g = torch.Generator().manual_seed(0)
    n_seq = args.tokens // args.context
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(10, min(vocab, 200_000), (n_seq, args.context), generator=g)
    ids[:, 0] = 2
    one = [f"layer_{last}.res"]

    runs = {
        "bare forward": lambda: bare_forward(model, ids, args.batch, last),
        "extract 1 site": lambda: extract_batches(
            model, ids, one, widths, "float32", args.batch, "one"
        ),
        f"extract {len(sites)} sites": lambda: extract_batches(
            model, ids, sites, widths, "float32", args.batch, "all"
        ),
    }
    runs["bare forward"]()  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)

    base, single = best["bare forward"], best["extract 1 site"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, torch {torch.__version__}; "
          f"{args.tokens} tokens, batch {args.batch} × {args.context}, "
          f"forward to layer {last} of {key}")  # fmt: skip
    print(f"| {'run':<18} | tokens/s | vs bare forward | time vs 1 site |")
    print("|---|---:|---:|---:|")
    for name, t in best.items():
        print(
            f"| {name:<18} | {args.tokens / t:8.0f} | {base / t:15.1%} "
            f"| {t / single:13.2f}× |"
        )


if __name__ == "__main__":
    main()
