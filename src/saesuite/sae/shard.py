"""An SAE's latents sharded over the processes of a training job, for SAEs too wide
for one GPU (a 2^20-latent SAE of Gemma 2 9B takes ~130 GB with Adam). Data
parallelism replicates the SAE; here each of the `world` processes holds a
contiguous block of latents — its columns of W_enc and its b_enc, θ and rows of
W_dec — and a copy of b_dec, and every process sees the whole batch.

Latents are independent except where they meet: the reconstruction x̂ = Σ_c f_c W_dec[c]
and each token's L0 are sums over all latents. Those partial sums are all-reduced
(`reduce_sum`: the backward is the identity, since every process then computes the
same loss from the same sums); the encoder input x − b_dec fans out to every shard, so
its gradient is all-reduced on the way back (`fan_out`). Everything else — Adam, the
decoder-norm constraint, θ > 0 — is per latent and stays local. The result equals
training the whole SAE on one device up to the order of float sums.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# Which dimension of each parameter runs over latents (b_dec has none: replicated).
LATENT_DIM = {
    "W_enc": 1,
    "W_dec": 0,
    "b_enc": 0,
    "threshold_raw": 0,
    "log_threshold": 0,
}


def bounds(width: int, world: int, rank: int) -> tuple[int, int]:
    """The latents [start, stop) of `rank`: blocks as equal as they can be."""
    base, extra = divmod(width, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the processes, in place."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _ReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_(t.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _FanOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_(grad.clone())


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ over processes of a partial sum; gradient passed through unchanged."""
    return _ReduceSum.apply(t)


def fan_out(t: torch.Tensor) -> torch.Tensor:
    """`t` as it is; its gradient summed over the processes that used it."""
    return _FanOut.apply(t)


@torch.no_grad()
def clip_grad_norm_(module: torch.nn.Module, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_ over the whole sharded SAE: the squared norms
    of the latent blocks add up over processes; the replicated parameters' (b_dec, a
    skip-transcoder's W_skip) count once."""
    local = torch.zeros((), dtype=torch.float64, device=module.b_dec.device)
    for name, p in module.named_parameters():
        if p.grad is not None and name in LATENT_DIM:
            local += p.grad.double().pow(2).sum()
    all_reduce_(local)
    for name, p in module.named_parameters():
        if p.grad is not None and name not in LATENT_DIM:
            local += p.grad.double().pow(2).sum()
    norm = float(local.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for p in module.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)
    return norm


@torch.no_grad()
def gather_state(
    state: dict[str, torch.Tensor], rank: int, world: int
) -> dict[str, torch.Tensor] | None:
    """The whole SAE's tensors on rank 0's CPU (None elsewhere), received one shard
    at a time so that no GPU holds more than its own shard and one more."""
    out: dict[str, torch.Tensor] | None = {} if rank == 0 else None
    for name in sorted(state):
        t = state[name].contiguous()
        if name not in LATENT_DIM:  # replicated
            if out is not None:
                out[name] = t.cpu().clone()
            continue
        dim = LATENT_DIM[name]
        sizes = torch.tensor([t.shape[dim]], device=t.device)
        every = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(every, sizes)
        if out is None:
            dist.send(t, dst=0)
            continue
        parts = [t.cpu().clone()]
        for src in range(1, world):
            shape = list(t.shape)
            shape[dim] = int(every[src])
            buf = torch.empty(shape, dtype=t.dtype, device=t.device)
            dist.recv(buf, src=src)
            parts.append(buf.cpu())
        out[name] = torch.cat(parts, dim=dim)
    return out
