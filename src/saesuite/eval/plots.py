"""What every saesuite figure shares: the headless backend, and PNG and SVG files
written atomically and byte-reproducibly (no software/version/date stamps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesuite.spec.io import atomic_path

# Axis labels of the metrics the Pareto plots show.
METRICS = {
    "delta_loss": "delta loss (nats/token)",
    "fvu": "fraction of variance unexplained",
}


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
