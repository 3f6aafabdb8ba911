"""Latent sharding: what one process holds and how long a step takes when an SAE's
latents are split over n processes (saesuite.sae.shard) against the whole SAE in one.

    .venv/bin/python benchmarks/shard.py [--width 32768 --d-in 640 --batch 1024]

`--quick` (the test suite's run): a 256-wide SAE on 16 dimensions, one step, in two
processes.

Each configuration runs in fresh processes (torchrun, gloo on CPU; NCCL on GPUs):
dense steps with Adam, as the trainer takes them before L0 falls. Reported per
process: the SAE's parameter bytes and the peak of allocated memory (CPU: the max
resident set; GPU: torch.cuda.max_memory_allocated), and the mean time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saesuite.spec.config import REPO_ROOT


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
    from saesuite.sae.shard import bounds
    from saesuite.sae.step import dense_step

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    gpu = torch.cuda.is_available()
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if gpu else "cpu"
    if world > 1:
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
        rank = dist.get_rank()
    lo, hi = bounds(args.width, world, rank)
    sae = JumpReLUSAE(args.d_in, hi - lo, device=device)
    sae.initialize(torch.Generator().manual_seed(0), full_width=args.width, start=lo)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
    x = torch.randn(args.batch, args.d_in, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    times = []
    for i in range(args.warmup + args.steps):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        dense_step(sae, x, LossTerms("l0", 1e-3, sharded=world > 1))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = (
        torch.cuda.max_memory_allocated(device)
        if gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    params = sum(p.numel() * 4 for p in sae.parameters())
    out = {"rank": rank, "world": world, "params": params, "peak": peak,
           "step_s": sum(times) / len(times)}  # fmt: skip
    Path(args.out, f"{world}.{rank}.json").write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=32768)
    ap.add_argument("--d-in", type=int, default=640)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--nprocs", default="1,2")
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one step")
    args = ap.parse_args(argv)
    if args.out:  # a worker
        return worker(args)
    if args.quick:
        args.width, args.d_in, args.batch, args.steps, args.warmup = 256, 16, 32, 1, 0
        args.nprocs = "2"
    out = tempfile.mkdtemp()
    flags = [f"--width={args.width}", f"--d-in={args.d_in}",
             f"--batch={args.batch}", f"--steps={args.steps}",
             f"--warmup={args.warmup}", f"--out={out}"]  # fmt: skip
    cores = os.cpu_count() or 1
    rows = []
    for n in map(int, args.nprocs.split(",")):
        # the machine's cores split among the processes, so that n = 1 is not starved
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", __file__, *flags]  # fmt: skip
        subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=True, capture_output=True)
        res = [json.loads(Path(out, f"{n}.{r}.json").read_text()) for r in range(n)]
        rows.append((n, max(r["params"] for r in res), max(r["peak"] for r in res),
                     max(r["step_s"] for r in res)))  # fmt: skip
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{platform.processor() or platform.machine()}, {cores} cores, {dev}, "
          f"torch {torch.__version__}; width {args.width}, d_in {args.d_in}, "
          f"batch {args.batch}, dense steps with Adam")  # fmt: skip
    print("| processes | SAE params per process | peak memory per process | s/step |")
    print("|---:|---:|---:|---:|")
    for n, params, peak, step in rows:
        print(f"| {n} | {params / 2**20:.0f} MiB | {peak / 2**20:.0f} MiB "
              f"| {step:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
