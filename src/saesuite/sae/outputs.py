"""What a train job writes per dictionary (`write_outputs`: the folded release
weights, the raw training state, sae.json), and the two state moves around it:
starting from a trained dictionary (`start_from`, fine-tuning) and gathering a sharded
one on rank 0 (`gather_members`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.sae.member import Member
from saesuite.sae.shard import (
    LATENT_DIM,
    bounds,
    gather_state,
)
from saesuite.spec import paths
from saesuite.spec.io import atomic_path, versions, write_json
from saesuite.spec.jobs import TrainJob


@torch.no_grad()
def start_from(m: Member, sae_dir: str, rank: int = 0, world: int = 1) -> None:
    """`m`'s SAE ← the training state of a trained dictionary (its block of latents
    when sharded); Adam and the counters start afresh."""
    state = load_file(str(paths.sae_file(sae_dir, "state")))
    mine = m.sae.state_dict()
    if set(state) != set(mine):
        raise ValueError(
            f"{sae_dir}: its training state has {sorted(state)}, this dictionary "
            f"{sorted(mine)} (trained under another train.threshold_param?)"
        )
    if m.sharded:
        lo, hi = bounds(m.spec.width, world, rank)
        state = {
            k: v.narrow(LATENT_DIM[k], lo, hi - lo) if k in LATENT_DIM else v
            for k, v in state.items()
        }
    for k, v in state.items():
        if v.shape != mine[k].shape:
            raise ValueError(
                f"{sae_dir}: {k} is {tuple(v.shape)}, not {tuple(mine[k].shape)}"
            )
    m.sae.load_state_dict(state)


def gather_members(members: list[Member], rank: int, world: int) -> None:
    """Replace each sharded SAE by the whole SAE on rank 0's CPU (for its outputs)."""
    for m in members:
        state = gather_state(m.sae.state_dict(), rank, world)
        if state is None:
            continue
        # as the shard was built: a transcoder's output width, skip matrix and input
        # (no b_dec subtracted) included
        full = JumpReLUSAE(
            m.sae.d_in,
            m.spec.width,
            d_out=m.sae.W_dec.shape[1],
            skip=m.sae.skip,
            apply_b_dec_to_input=m.sae.apply_b_dec_to_input,
            threshold_param=m.sae.threshold_param,
            bandwidth=m.sae.bandwidth,
            device="meta",
        )
        full.load_state_dict(state, assign=True)
        m.sae = full


def write_outputs(
    m: Member,
    job: TrainJob,
    scale: float,
    n_valid: int,
    target_scale: float | None = None,
) -> dict[str, Any]:
    """Per SAE: folded release weights, raw training state, and reproduction JSON.
    `target_scale`: a transcoder's target site's scalar (its input's is `scale`)."""
    out = Path(m.out_dir)
    sae = m.sae.to("cpu")
    with atomic_path(paths.sae_file(out, "state")) as tmp:
        save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(tmp))
    paired = m.spec.paired
    released = sae.fold_normalization(scale, target_scale if paired else None)
    with atomic_path(paths.sae_file(out, "weights")) as tmp:
        save_file(released.release_tensors(), str(tmp))
    info = {
        **job.identity,
        "config_hash": job.config_hash,
        "site": job.site,
        "layer": m.spec.layer,
        "kind": m.spec.input_site.kind,
        "width": m.spec.width,
        "penalty": m.spec.penalty,
        "value": m.spec.value,
        "coefficient": m.spec.lambda_,
        "tokens": m.spec.tokens,
        "path": m.spec.path,
        "d_in": sae.d_in,
        "steps": m.schedule.total_steps,
        "schedule": {
            "lr_warmup_steps": m.schedule.lr_warmup,
            "lambda_warmup_steps": m.schedule.lam_warmup,
            "lr_decay_steps": m.schedule.decay_steps
            if m.schedule.decay != "none"
            else 0,
        },
        "train": job.train.to_dict(),
        "seed": job.seed,
        "normalization_scale": scale,
        **(
            {
                "dictionary": m.spec.kind,
                "output_site": job.output_site,
                "d_out": sae.d_out,
                "target_normalization_scale": target_scale,
            }
            if paired
            else {}
        ),
        "cache_tokens": n_valid,
        "epochs": m.schedule.total_steps * job.train.batch_size / n_valid,
        "versions": versions(),
    }
    write_json(paths.sae_file(out, "info"), info)
    return info
