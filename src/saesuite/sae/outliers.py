"""Tokens of outlying activation norm (attention sinks), one rule for training and
for evaluation: a row is an outlier where its norm exceeds `multiple` × the median
norm of its batch's valid rows (`train.max_norm_multiple`).

In gemma-3-270m's residual stream about 2 tokens in 10,000 besides BOS have norms
8–10× the median (BENCHMARKS.md, "Attention-sink tokens in training"): the
phenomenon that makes BOS itself an outlier, which Gemma Scope leaves out of
training and of every metric. A dictionary trained without them (mode "drop") is
evaluated without them too: they keep their clean activation in spliced passes and
leave the reconstruction means, as BOS does (`eval.passes.evaluate`)."""

from __future__ import annotations

import torch


def norm_outliers(
    x: torch.Tensor, multiple: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool mask over x's rows (x: (..., d)) of norm above `multiple` × the median
    norm of the rows where `valid` (bool, x's shape less d; None = all) holds;
    rows outside `valid` are never outliers."""
    norms = x.float().norm(dim=-1)
    ref = norms if valid is None else norms[valid]
    if ref.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    out = norms > multiple * ref.median()
    return out if valid is None else out & valid


def drop_outliers(
    x: torch.Tensor, target: torch.Tensor | None, multiple: float, mode: str = "drop"
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The batch without its rows of norm above `multiple` × the batch's median (a
    transcoder's rows go where its input's or its target's is), and how many there
    were; `mode` "clip" keeps them, each such row scaled down to that norm."""
    out = norm_outliers(x, multiple)
    if target is not None:
        out |= norm_outliers(target, multiple)
    n = int(out.sum())
    if n == 0:
        return x, target, 0
    if mode == "clip":
        clipped = None if target is None else _clip(target, multiple)
        return _clip(x, multiple), clipped, n
    keep = ~out
    return x[keep], None if target is None else target[keep], n


def _clip(x: torch.Tensor, multiple: float) -> torch.Tensor:
    """x with each row's norm capped at `multiple` × the median row norm."""
    norms = x.norm(dim=1, keepdim=True)
    return x * (multiple * norms.median() / norms).clamp(max=1.0)
