"""Metric records as the evaluate job writes them (no torch)."""

from __future__ import annotations

from typing import Any


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics that fit a table cell (not the by-position curves, histograms)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}
