"""Where a local run's CPU time goes, for settings of the default run
(config/config.yaml `train.sparse_density`, the trainer's Adam, rules/common.smk
`job_threads`):

    .venv/bin/python benchmarks/threads.py [--model DIR] [--quick]

1. `sparse_density`: the sparse and the dense training step (with the optimiser step
   and clipping, as `train_step` runs them) at several L0s, one thread per job with
   a second job running beside it (what a local run does), so the crossover is the
   density below which `train.step: auto` should take the sparse step.
2. Adam: torch's per-tensor, foreach and fused implementations on an SAE's
   parameters (the trainer uses fused).
3. Jobs at once: the same work as one job on every core against one single-thread
   job per core side by side (separate processes), for training steps and for the
   model's body (`--model`, default the embedded model from the cache). Whole runs
   decide: on 2 cores the default run with two single-thread jobs at once was no
   faster than one job on both cores (BENCHMARKS.md), so rules keep every core.

`--quick` (the test suite's run): width 256, batch 64, two L0s, a tiny model.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import torch
from common import bench_model

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
from saesuite.sae.member import contiguous_grads
from saesuite.sae.step import dense_step, sparse_step

STEPS = {"sparse": sparse_step, "dense": dense_step}


def sae_at_l0(d: int, width: int, x: torch.Tensor, l0: int) -> JumpReLUSAE:
    """An SAE (Gemma Scope's init) whose thresholds make ~`l0` latents fire on x."""
    sae = JumpReLUSAE(d, width, threshold_param="direct", bandwidth=0.001)
    sae.initialize(torch.Generator().manual_seed(0), full_width=width, start=0)
    with torch.no_grad():
        q = torch.quantile(x @ sae.W_enc, 1 - l0 / width, dim=0)
        sae.threshold_raw.copy_(q.clamp_min(1e-4))
    return sae


def step_ms(
    sae: JumpReLUSAE, x: torch.Tensor, path: str, reps: int
) -> tuple[float, float]:
    """(ms per training step, measured L0): the step, clipping and fused Adam."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-7, betas=(0.0, 0.999), fused=True)

    def one() -> float:
        st = STEPS[path](sae, x, LossTerms("target_l0", 0.01, 20.0))
        contiguous_grads(sae)
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return st.l0

    one()
    t = time.perf_counter()
    for _ in range(reps):
        l0 = one()
    return (time.perf_counter() - t) / reps * 1000, l0


def adam_ms(d: int, width: int, reps: int) -> dict[str, float]:
    ps = [torch.randn(d, width), torch.randn(width, d), torch.randn(width),
          torch.randn(d), torch.randn(width)]  # fmt: skip
    for p in ps:
        p.requires_grad_(True)
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("per tensor", {"foreach": False}), ("foreach", {"foreach": True}),
                     ("fused", {"fused": True})):  # fmt: skip
        opt = torch.optim.Adam(ps, lr=1e-7, betas=(0.0, 0.999), **kw)
        opt.step()
        t = time.perf_counter()
        for _ in range(reps):
            opt.step()
        out[name] = (time.perf_counter() - t) / reps * 1000
    return out


def worker(args: argparse.Namespace) -> None:
    """One job's work in this process, on `args.threads` threads: `args.reps`
    training steps at L0 `args.l0`, or forward passes of the model (batch
    `args.fwd_batch`, the evaluation's); prints the seconds the work took, start-up
    (imports, loading) left out."""
    torch.set_num_threads(args.threads)
    if args.worker == "forward":
        model = bench_model(args.model)[3]
        vocab = model.config.get_text_config().vocab_size
        ids = torch.randint(10, min(vocab, 1000), (args.fwd_batch, args.context),
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(args.reps):
                model.model(input_ids=ids)
        print(f"WORK {time.perf_counter() - t}")
        return
    x = torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(0))
    sae = sae_at_l0(args.d, args.width, x / args.d**0.5, args.l0)
    t = time.perf_counter()
    step_ms(sae, x / args.d**0.5, args.worker, args.reps)
    print(f"WORK {time.perf_counter() - t}")


def side_by_side(work: list[str], jobs: int, threads: int) -> float:
    """Seconds `jobs` processes of `threads` threads each, started together, take
    to do `work` (worker arguments): the slowest one's own timing."""
    cmd = [sys.executable, __file__, "--threads", str(threads), *work]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(jobs)]  # fmt: skip
    secs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"worker {' '.join(work)} failed")
        secs.append(float(out.split("WORK ")[-1]))
    return max(secs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=640)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--fwd-batch", type=int, default=8, help="sequences a forward")
    ap.add_argument("--l0s", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model", help="a local model directory (default: embedded)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)  # workers
    ap.add_argument("--worker", choices=["sparse", "dense", "forward"])
    ap.add_argument("--l0", type=int, default=100)
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.width, args.batch, args.context = 32, 256, 64, 16
        args.fwd_batch, args.l0s, args.reps = 2, [8, 64], 2
    if args.worker:
        return worker(args)
    n = args.cores
    print(f"\n{platform.node()}, {n} cores, torch {torch.__version__}; d {args.d}, "
          f"width {args.width}, batch {args.batch}\n")  # fmt: skip

    # 1. the sparse/dense crossover, one thread per job, a second job beside it
    torch.set_num_threads(1)
    x = torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(0))
    x /= args.d**0.5
    load_work = ["--worker", "dense", "--reps", str(10**6), "--d", str(args.d),
                 "--width", str(args.width), "--batch", str(args.batch)]  # fmt: skip
    beside = [subprocess.Popen([sys.executable, __file__, "--threads", "1",
                                *load_work]) for _ in range(n - 1)]  # fmt: skip
    try:
        print("| L0 | sparse step, ms | dense step, ms | sparse / dense |")
        print("|---:|---:|---:|---:|")
        for l0 in args.l0s:
            ms = {p: step_ms(sae_at_l0(args.d, args.width, x, l0), x, p, args.reps)
                  for p in STEPS}  # fmt: skip
            s, d = ms["sparse"][0], ms["dense"][0]
            print(f"| {ms['sparse'][1]:.0f} | {s:.0f} | {d:.0f} | {s / d:.2f} |")
    finally:
        for p in beside:
            p.kill()
            p.wait()

    # 2. Adam, on every core
    torch.set_num_threads(n)
    print("\n| Adam | ms per step |\n|---|---:|")
    for name, ms in adam_ms(args.d, args.width, args.reps).items():
        print(f"| {name} | {ms:.1f} |")

    # 3. one job on every core against one single-thread job per core
    common = ["--d", str(args.d), "--width", str(args.width), "--batch",
              str(args.batch), "--context", str(args.context), "--fwd-batch",
              str(args.fwd_batch)]  # fmt: skip
    if args.model:
        common += ["--model", args.model]
    reps = 2 * args.reps
    print(f"\n| work ({reps} reps a job) | {n} jobs × 1 thread, s | {n} × (1 job × {n} "
          "threads), s | throughput gain |\n|---|---:|---:|---:|")  # fmt: skip
    for kind in ("sparse", "dense", "forward"):
        reps_k = reps // 4 if kind == "forward" else reps
        work = ["--worker", kind, "--reps", str(reps_k), "--l0", "100", *common]
        par = side_by_side(work, n, 1)
        seq = sum(side_by_side(work, 1, n) for _ in range(n))
        print(f"| {kind} | {par:.1f} | {seq:.1f} | {seq / par - 1:+.0%} |")


if __name__ == "__main__":
    main()
