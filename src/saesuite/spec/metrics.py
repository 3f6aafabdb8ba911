"""Metric records as the evaluate job writes them (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# A latent firing on more than this share of tokens is "dense" (tables, logs, report).
DENSE_FREQUENCY = 0.1


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that fit a table cell (not the by-position curves, histograms)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}


# How far a dictionary's held-out L0 may miss its target L0 (a share of the target)
L0_TARGET_TOLERANCE = 0.25


def l0_off_target(l0: float | None, target: float | None) -> bool:
    """Held-out L0 outside ±L0_TARGET_TOLERANCE of the target (False without one)."""
    if l0 is None or target is None:
        return False
    return abs(l0 / target - 1) > L0_TARGET_TOLERANCE


# A training FVU spike: after the first SPIKE_AFTER of the logged steps, a logged FVU
# above SPIKE_FACTOR × the best logged so far
SPIKE_AFTER, SPIKE_FACTOR = 0.2, 2.0


def fvu_spike(log: Sequence[dict[str, Any]]) -> tuple[int, float, float] | None:
    """The worst (step, FVU, best FVU before it) among the training log's lines
    after the first SPIKE_AFTER of its steps whose FVU exceeds SPIKE_FACTOR × the best
    before it; None without one."""
    if not log:
        return None
    last = log[-1]["step"]
    best, worst = float("inf"), None
    for line in log:
        fvu = line["fvu"]
        if line["step"] >= SPIKE_AFTER * last and fvu > SPIKE_FACTOR * best:
            if worst is None or fvu / best > worst[1] / worst[2]:
                worst = (line["step"], fvu, best)
        best = min(best, fvu)
    return worst


def health_warnings(
    width: int,
    dead: int | None,
    loss_recovered: float | None = None,
    l0: float | None = None,
    target_l0: float | None = None,
) -> list[str]:
    """What should make a researcher distrust an SAE (issue 19): worse than
    zero-ablating its site (loss recovered < 0), more than half its latents dead, or
    a held-out L0 off its target by more than L0_TARGET_TOLERANCE."""
    out = []
    if loss_recovered is not None and loss_recovered < 0:
        out.append(f"worse than zero-ablation (loss recovered {loss_recovered:.2f})")
    if dead is not None and dead > width / 2:
        out.append(f"{dead} of {width} latents dead")
    if l0_off_target(l0, target_l0):
        share = f"{L0_TARGET_TOLERANCE:.0%}"
        out.append(
            f"held-out L0 {l0:.1f} misses its target {target_l0:g} by over {share}"
        )
    return out


def nearest_l0(l0s: Sequence[float], target: float) -> int:
    """Index of the L0 closest to `target` (absolute gap, the first on a tie):
    SAELens's rule for a release's canonical SAE, and the SAE the report's per-layer
    bars show (both at release.canonical_l0)."""
    return min(range(len(l0s)), key=lambda i: abs(l0s[i] - target))
