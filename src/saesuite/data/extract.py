"""Activation extraction (rule `extract`): one chunk of training sequences through the
model, every requested site captured in the same forward pass, which stops after the
deepest requested layer (the LM head is never computed).

Usage from a rule: `extract_chunk(...)`; `check_disk` is the disk pre-flight check
every extraction job runs before it loads the model.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saesuite.cluster.resources import cache_plan
from saesuite.data.logs import progress_interval
from saesuite.data.models import DTYPES, load_model
from saesuite.data.sites import capture
from saesuite.data.store import ChunkWriter
from saesuite.data.tokens import load_tokens
from saesuite.spec.sites import Site

log = logging.getLogger(__name__)


def check_disk(
    plan: dict[str, int],
    present: int,
    out_dir: str | Path,
    min_free_gb: float,
    model: str,
) -> None:
    """Print the cache size per site; refuse if the disk lacks room for what is left."""
    total = sum(plan.values())
    lines = [f"activation cache for model '{model}': {total / 1e9:.3f} GB"]
    lines += [f"  {name:<24} {b / 1e9:10.3f} GB" for name, b in plan.items()]
    print("\n".join(lines), flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir).free
    need = total - present + int(min_free_gb * 1e9)
    if need > free:
        raise OSError(
            f"not enough disk under {out_dir} for model '{model}': need "
            f"{need / 1e9:.2f} GB (cache {total / 1e9:.2f} GB − {present / 1e9:.2f} GB "
            f"already written + activations.min_free_gb {min_free_gb}), free "
            f"{free / 1e9:.2f} GB: {(need - free) / 1e9:.2f} GB missing. Free space, "
            "point scratch_root at a larger filesystem, or lower data.train_tokens"
        )


def extract_into(
    model: torch.nn.Module,
    ids: torch.Tensor,
    sites: list[str],
    widths: dict[str, int],
    dtype: str,
    batch: int,
    put: Callable[[str, int, torch.Tensor], None],
    desc: str = "extract",
) -> None:
    """One truncated forward pass per batch of sequences `ids` (n_seq, ctx); each
    site's activations (batch·ctx, d) in `dtype` go to `put(site, first_row, rows)`."""
    n_seq, ctx = ids.shape
    device = next(model.parameters()).device
    site_objs = [Site.parse(s) for s in sites]
    with tqdm(
        total=n_seq * ctx,
        unit="tok",
        unit_scale=True,
        desc=desc,
        mininterval=progress_interval(),
    ) as bar:
        for b0 in range(0, n_seq, batch):
            b1 = min(b0 + batch, n_seq)

            def sink(site: Site, act: torch.Tensor, row: int = b0 * ctx) -> None:
                rows = act.reshape(-1, widths[site.name]).to(DTYPES[dtype])
                put(site.name, row, rows)

            capture(model, ids[b0:b1].to(device), site_objs, sink=sink)
            bar.update((b1 - b0) * ctx)


def extract_batches(
    model: torch.nn.Module,
    ids: torch.Tensor,
    sites: list[str],
    widths: dict[str, int],
    dtype: str,
    batch: int,
    desc: str = "extract",
) -> dict[str, torch.Tensor]:
    """Activations (n_seq·ctx, d) of every site in memory (benchmarks, small runs)."""
    n = ids.numel()
    acts = {s: torch.empty(n, widths[s], dtype=DTYPES[dtype]) for s in sites}

    def put(site: str, row: int, rows: torch.Tensor) -> None:
        acts[site][row : row + len(rows)].copy_(rows)

    extract_into(model, ids, sites, widths, dtype, batch, put, desc)
    return acts


def extract_chunk(
    *,
    model_cfg: dict[str, Any],
    cache_root: str | Path,
    tokens_path: str | Path,
    chunk: int,
    seqs_per_chunk: int,
    sites: list[str],
    site_widths: dict[str, int],
    dtype: str,
    min_free_gb: float,
    out: str | Path,
    out_info: str | Path,
    identity: dict[str, Any],
) -> dict[str, Any]:
    out = Path(out)
    ids_all, mask_all = load_tokens(tokens_path)
    s0 = chunk * seqs_per_chunk
    s1 = min(s0 + seqs_per_chunk, ids_all.shape[0])
    if s0 >= s1:
        raise ValueError(f"chunk {chunk} is past the {ids_all.shape[0]} sequences")
    ids, mask = ids_all[s0:s1].long(), mask_all[s0:s1]
    n_seq, ctx = ids.shape

    total_tokens = ids_all.numel()
    widths = {s: site_widths[Site.parse(s).kind] for s in sites}
    present = sum(
        p.stat().st_size for p in out.parent.glob("chunk_*.safetensors") if p != out
    )
    check_disk(
        cache_plan(widths, total_tokens, dtype),
        present,
        out.parent,
        min_free_gb,
        identity["model"],
    )

    model = load_model(model_cfg, cache_root)
    meta = {"model": identity["model"], "identity": identity["hash"], "chunk": chunk}
    n = n_seq * ctx
    specs = {s: ((n, widths[s]), DTYPES[dtype]) for s in sites}
    specs |= {"input_ids": ((n,), torch.int32), "mask": ((n,), torch.bool)}
    start = time.perf_counter()
    # Timing stays out of the files so that they are byte-reproducible. Rows go to
    # the file batch by batch: memory is one batch, whatever the chunk's size.
    with ChunkWriter(out, out_info, specs, {**meta, "sequences": [s0, s1]}) as w:
        w.write("input_ids", 0, ids.reshape(-1).int())
        w.write("mask", 0, mask.reshape(-1))
        extract_into(
            model,
            ids,
            sites,
            widths,
            dtype,
            model_cfg.get("batch_size", 8),
            w.write,
            f"chunk {chunk}",
        )
    elapsed = time.perf_counter() - start
    rate = n_seq * ctx / elapsed
    log.info("chunk %d: %d tokens at %.0f tok/s", chunk, n_seq * ctx, rate)
    return w.info
