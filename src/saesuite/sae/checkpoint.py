"""A train job's checkpoints (weights, Adam state, step, dead-latent counters, RNG),
written atomically; a sharded dictionary's blocks one file per rank. Used by the loop
in `saesuite.sae.train`; a checkpoint holds the job's fingerprint and is resumed only
under the same training config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from saesuite.sae.member import Member
from saesuite.spec.io import atomic_open, atomic_path

log = logging.getLogger(__name__)


def shard_path(path: Path, rank: int, step: int) -> Path:
    return path.with_name(f"{path.stem}.shard{rank}.step{step}{path.suffix}")


def member_state(members: list[Member]) -> list[dict[str, Any]]:
    return [
        {
            "sae": m.sae.state_dict(),
            "opt": m.opt.state_dict(),
            "since_fired": m.since_fired,
            "last_l0": m.last_l0,
            "window_counts": m.window_counts,
            "window_tokens": m.window_tokens,
        }
        for m in members
    ]


def save_checkpoint(
    path: Path,
    step: int,
    members: list[Member],
    fingerprint: str,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Rank 0 writes `path`. A sharded SAE's other blocks go to one file per rank and
    step, written before `path` names that step and removed once a later one does,
    so that the files `path` points to are always complete."""
    sharded = any(m.sharded for m in members)
    if rank != 0 and not sharded:  # data parallelism: every copy is the same
        return
    state = {
        "job": fingerprint,
        "saes": [m.spec.path for m in members],
        "shards": world if sharded else None,
        "step": step,
        "members": member_state(members),
        "torch_rng": torch.get_rng_state(),
    }
    if sharded and rank != 0:
        with atomic_path(shard_path(path, rank, step)) as tmp:
            torch.save(state, tmp)
    if sharded:
        dist.barrier()
    if rank == 0:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    if sharded:
        dist.barrier()
        if rank != 0:
            keep = shard_path(path, rank, step)
            for old in path.parent.glob(f"{path.stem}.shard{rank}.step*{path.suffix}"):
                if old != keep:
                    old.unlink(missing_ok=True)


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    for f in path.parent.glob(f"{path.stem}.shard*.step*{path.suffix}"):
        f.unlink(missing_ok=True)


def checkpoint_head(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The SAEs a checkpoint holds and over how many shards, or None when it was
    written for another job (a changed config starts afresh)."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state.get("job") != fingerprint:
        log.warning("%s was written for another training config; starting afresh", path)
        return None
    return {"saes": list(state["saes"]), "shards": state.get("shards")}


def load_checkpoint(path: Path, members: list[Member], rank: int = 0) -> int:
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state["saes"] != [m.spec.path for m in members]:
        raise RuntimeError(f"{path}: checkpoint holds SAEs {state['saes']}")
    if state.get("shards") and rank != 0:
        state = torch.load(
            shard_path(path, rank, state["step"]),
            weights_only=True,
            map_location="cpu",
        )
    for m, s in zip(members, state["members"]):
        m.sae.load_state_dict(s["sae"])
        m.opt.load_state_dict(s["opt"])
        m.since_fired = s["since_fired"]
        m.last_l0 = s["last_l0"]
        if "window_counts" in s:  # checkpoints before the dense-latent count lack it
            m.window_counts, m.window_tokens = s["window_counts"], s["window_tokens"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["step"] < step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut short by kill -9
            continue
    with atomic_open(path) as f:
        f.write("".join(ln + "\n" for ln in keep))
