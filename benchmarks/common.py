"""What several benchmarks share: the host's matmul speed (the bound a speed is
stated against) and the model a benchmark runs on (the default config's, or a local
directory). Imported as `common` by the scripts in this folder (their own folder is on
sys.path when run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from saesuite.data.models import load_model
from saesuite.spec.config import REPO_ROOT, load_config


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def best_time(fn, device: str, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, the device synchronised around each."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_ceiling(
    m: int,
    k: int,
    n: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
) -> float:
    """FLOP/s of an (m × k) @ (k × n) product on `device`: the best of `repeats`
    after a warm-up."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b
    return 2 * m * k * n / best_time(lambda: a @ b, device, repeats)


def bench_model(
    model_dir: str | None, device: str = "cpu"
) -> tuple[str, dict[str, Any], dict[str, Any], torch.nn.Module]:
    """(model key, validated default config, model config, the model): the default
    config's model (the embedded gemma-3-270m), or the local directory `model_dir`."""
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    key = next(iter(cfg["models"]))
    mcfg = {**cfg["models"][key], "device": device}
    if model_dir:
        key, mcfg["source"] = model_dir, model_dir
    return key, cfg, mcfg, load_model(mcfg, Path(REPO_ROOT) / "results" / "cache")
