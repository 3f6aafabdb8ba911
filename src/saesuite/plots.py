"""What every saesuite figure shares: the headless backend, and a PNG written
atomically and byte-reproducibly (no software/version stamp in its metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesuite.io import atomic_path


def subplots(*args: Any, **kwargs: Any):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig: Any, out: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
