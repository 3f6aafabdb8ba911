"""A cross-layer transcoder's training step at 6, 12 and 18 layers (issue 37, item 1):
tokens/s of the decode over active latents (`CrossLayerTranscoder.decode`) against
the dense decoder (`decode_dense`), each step's forward, backward and Adam, on the
same batches, at an L0 of about 20 per layer (θ set where N(0, 1) pre-activations
fire on that share of the latents).

    .venv/bin/python benchmarks/clt.py [--layers 6 12 18] [--width 2048]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from common import matmul_ceiling

from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.sae.jumprelu import LossTerms


def tokens_per_s(
    L: int, d: int, w: int, batch: int, l0: float, steps: int, dense: bool
):
    g = torch.Generator().manual_seed(0)
    m = CrossLayerTranscoder(L, d, w).initialize(g)
    theta = float(torch.special.ndtri(torch.tensor(1.0 - l0 / w, dtype=torch.float64)))
    with torch.no_grad():
        m.threshold_raw.fill_(theta)
    opt = torch.optim.Adam(m.parameters(), lr=1e-7)
    x = torch.randn(batch, L, d, generator=g)
    y = torch.randn(batch, L, d, generator=g)
    terms = tuple(LossTerms("target_l0", 1e-3, l0) for _ in range(L))
    seen = []
    for i in range(steps + 1):  # the first step warms up
        t = time.perf_counter()
        out = m.training_loss(x, y, terms, dense=dense)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            seen.append(time.perf_counter() - t)
    return batch / min(seen), float(out.l0.mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18])
    ap.add_argument("--d", type=int, default=640, help="d_model (gemma-3-270m's)")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--l0", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=3, help="timed steps, best of")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the test)")
    a = ap.parse_args(argv)
    if a.quick:
        a.layers, a.d, a.width, a.batch, a.l0, a.steps = [2, 4], 16, 64, 32, 4.0, 1
    speed = matmul_ceiling(1024, 1024, 1024, "cpu", torch.float32, 3)
    print(f"{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; d {a.d}, width {a.width} per layer, batch {a.batch}, L0 ≈ "
          f"{a.l0:g} per layer; float32 matmul {speed / 1e9:.0f} GFLOP/s")  # fmt: skip
    print("\n| layers | sparse tok/s | dense tok/s | sparse / dense | L0 "
          "| sparse tok/s × layers |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for L in a.layers:
        sparse, l0 = tokens_per_s(L, a.d, a.width, a.batch, a.l0, a.steps, False)
        dense, _ = tokens_per_s(L, a.d, a.width, a.batch, a.l0, a.steps, True)
        print(f"| {L} | {sparse:.0f} | {dense:.0f} | {sparse / dense:.2f} | {l0:.1f} "
              f"| {sparse * L:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
