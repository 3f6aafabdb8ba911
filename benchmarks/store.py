"""What verifying the activation cache's block checksums costs while training reads
it (issue 18, item 1): one epoch of one site through `ActivationReader` (batches of
the default 4096 from buckets of the default 1,000,000 activations), with and without
verification, on a cache written by `ChunkWriter` as extraction writes it.

    .venv/bin/python benchmarks/store.py [--chunks 4] [--tokens 131072] [--d-in 2304]

`--quick` (the test suite's run): 2 chunks of 2,048 tokens at d_in 64. Runs are
interleaved and the best of `--repeats` kept; the files sit in the page cache after
the first read, the case where reading is fastest and checksums cost most. Besides
the two epochs' wall times (whose difference is within their noise on a busy
machine), the time spent inside the verification itself is summed, timer around it:
its share of the verified epoch is the cost. Goal: verification ≤ 5 % of the
reading time.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import saesuite.data.reader as reader
from saesuite.data.reader import ActivationReader
from saesuite.data.store import (
    CHECKSUM,
    CHECKSUM_BLOCK_BYTES,
    ChunkWriter,
    write_manifest,
)

SITE = "layer_12.res"
SPENT = [0.0]  # seconds inside _Chunk._verify


def timed_verify(original):
    def verify(self, *args):
        t = time.perf_counter()
        try:
            return original(self, *args)
        finally:
            SPENT[0] += time.perf_counter() - t

    return verify


def write_cache(root: Path, chunks: int, tokens: int, d_in: int, dtype) -> Path:
    g = torch.Generator().manual_seed(0)
    infos = []
    for c in range(chunks):
        base = root / f"chunk_{c:05d}"
        specs = {SITE: ((tokens, d_in), dtype), "mask": ((tokens,), torch.bool)}
        with ChunkWriter(f"{base}.safetensors", f"{base}.json", specs, {}) as w:
            for r in range(0, tokens, 8192):  # extraction writes batch by batch
                n = min(8192, tokens - r)
                w.write(SITE, r, torch.randn(n, d_in, generator=g).to(dtype))
            w.write("mask", 0, torch.arange(tokens) % 128 != 0)  # BOS masked
        infos.append(f"{base}.json")
    write_manifest(infos, root / "manifest.json", {"model": "bench"})
    return root / "manifest.json"


def epoch(manifest: Path, batch: int, bucket: int, verify: bool) -> tuple[float, int]:
    t = time.perf_counter()
    r = ActivationReader(manifest, SITE, batch, bucket, seed=0, verify=verify)
    steps = r.n_valid // batch
    for j in range(steps):
        r.batch(j)
    return time.perf_counter() - t, steps * batch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=131072, help="per chunk")
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--bucket", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="tiny cache, once")
    args = ap.parse_args(argv)
    if args.quick:
        args.chunks, args.tokens, args.d_in = 2, 2048, 64
        args.batch, args.bucket, args.repeats = 256, 1024, 1
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_cache(Path(tmp), args.chunks, args.tokens, args.d_in, dtype)
        epoch(manifest, args.batch, args.bucket, False)  # into the page cache
        best = {True: float("inf"), False: float("inf")}
        share = float("inf")
        reader._Chunk._verify = timed_verify(reader._Chunk._verify)
        for _ in range(args.repeats):
            for verify in (False, True):
                SPENT[0] = 0.0
                t, n = epoch(manifest, args.batch, args.bucket, verify)
                best[verify] = min(best[verify], t)
                if verify:
                    share = min(share, SPENT[0] / t)
    size = args.chunks * args.tokens * args.d_in * dtype.itemsize
    print(
        f"\nmachine: {platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}; {args.chunks} chunks × {args.tokens} tokens × d_in "
        f"{args.d_in} {args.dtype} ({size / 1e9:.2f} GB), batch {args.batch}, bucket "
        f"{args.bucket}, {CHECKSUM} blocks of {CHECKSUM_BLOCK_BYTES >> 20} MiB; "
        f"best of {args.repeats}, page cache warm"
    )
    print("| reading | s per epoch | activations/s | GB/s | wall time vs unverified "
          "| time inside verification |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for verify in (False, True):
        t = best[verify]
        wall = f"{best[True] / best[False] - 1:+.1%}" if verify else "0"
        inside = f"{share:.1%}" if verify else "0"
        print(f"| {'verified' if verify else 'unverified'} | {t:.2f} | {n / t:.0f} | "
              f"{size / t / 1e9:.2f} | {wall} | {inside} |")  # fmt: skip


if __name__ == "__main__":
    main()
