"""Which dictionaries of a train job train together: groups that fit the device's
memory (cluster.resources' formula), and which dictionary is too wide for data
parallelism and trains alone, sharded by latents.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from saesuite.cluster.memory import GPU_HEADROOM, fit_groups, n_prefixes, sae_gpu_bytes
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sections import TrainConfig


def needs_sharding(
    width: int,
    d_in: int,
    cfg: TrainConfig,
    world: int,
    budget: float | None,
    skip: bool = False,
) -> bool:
    """Whether an SAE's latents are split over the job's processes: when its data-
    parallel copy does not fit `budget` and there is more than one process."""
    if world == 1 or budget is None:
        return False
    pre = n_prefixes(cfg.matryoshka_fractions)
    need = sae_gpu_bytes(cfg.batch_size, d_in, width, world, skip=skip, prefixes=pre)
    return need > budget


def sae_groups(
    saes: list[Dictionary],
    d_in: int,
    cfg: TrainConfig,
    world: int,
    budget: float | None,
) -> list[list[int]]:
    """Indices of `saes` in groups trained one after another, each within `budget`
    bytes per device (None: one group); an SAE too wide for data parallelism trains
    alone, sharded (`needs_sharding`). The batches are a function of the step and
    each SAE's initialisation of its own seed, so grouping does not change results."""
    pre = n_prefixes(cfg.matryoshka_fractions)
    sizes = [
        sae_gpu_bytes(cfg.batch_size, d_in, s.width, world, skip=s.skip, prefixes=pre)
        for s in saes
    ]
    alone = frozenset(
        i
        for i, s in enumerate(saes)
        if needs_sharding(s.width, d_in, cfg, world, budget, s.skip)
    )
    return fit_groups(sizes, budget, alone)


def device_budget(device: str, world: int) -> float | None:
    """Bytes a group of SAEs may take on `device`: a share of the smallest GPU's
    memory over all processes (every process must form the same groups); None on
    the CPU."""
    if not device.startswith("cuda"):
        return None
    total = torch.tensor(float(torch.cuda.get_device_properties(device).total_memory))
    if world > 1:
        total = total.to(device)
        dist.all_reduce(total, op=dist.ReduceOp.MIN)
    return GPU_HEADROOM * float(total)
