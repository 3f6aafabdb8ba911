"""What every saesuite figure shares: the headless backend, PNG and SVG files written
atomically and byte-reproducibly (no software/version/date stamps), and the Pareto
plot of a metric against L0 that the report, the model cards and the transfer checks
all draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saesuite.spec.io import atomic_path

# Axis labels of the metrics the Pareto plots show.
METRICS = {
    "delta_loss": "delta loss (nats/token)",
    "fvu": "fraction of variance unexplained",
}
L0_AXIS = "L0 (active latents per token, log scale)"


def pareto_series(
    ax: Any,
    l0: Sequence[float],
    ys: Sequence[float | None],
    *,
    label: str,
    line: bool = True,
    **style: Any,
) -> bool:
    """One series of a Pareto plot, in L0 order; points without a value are left
    out. False when none has one (nothing drawn)."""
    pts = sorted(
        (x, y)
        for x, y in zip(l0, ys, strict=True)
        if y is not None and not math.isnan(y)
    )
    if not pts:
        return False
    xs, vs = zip(*pts, strict=True)
    if line:
        ax.plot(xs, vs, label=label, **{"marker": "o", **style})
    else:
        ax.scatter(xs, vs, label=label, **style)
    return True


def pareto_axes(ax: Any, metric: str, *, log_y: bool = False, title: str = "") -> None:
    """The axes of every Pareto plot: L0 on a log axis against a metric of METRICS."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(L0_AXIS)
    ax.set_ylabel(METRICS[metric])
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def subplots(*args: Any, **kwargs: Any):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # SVG element ids are random unless salted: the same figure, the same bytes.
    matplotlib.rcParams["svg.hashsalt"] = "saesuite"
    matplotlib.rcParams["axes.titlesize"] = 10

    return plt.subplots(*args, **kwargs)


def save_svg(fig: Any, out: str | Path) -> None:
    """Write `fig` as SVG (no date stamp); the figure stays open (for save_png)."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": None})


def save_png(fig: Any, out: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
