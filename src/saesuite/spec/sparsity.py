"""Sparsity penalties and how a dictionary's rung of the ladder is named: in its
folder under saes/, in a release folder's name (when two share an L0), and in a
figure's legend. The one home of those labels (no torch)."""

from __future__ import annotations

# penalty → its value's meaning, and the label patterns by place
PENALTIES = {
    "l0": (
        "λ of λ·L0 (Gemma Scope)",
        {"folder": "lambda_{v}", "release": "lambda_{v}", "legend": "λ {v}"},
    ),
    "target_l0": (
        "the target L0 of the quadratic penalty (Gemma Scope 2)",
        {"folder": "l0_{v}", "release": "target_{v}", "legend": "target L0 {v}"},
    ),
}


def sparsity_label(penalty: str, value: float, place: str = "folder") -> str:
    """`place`: "folder", "release" or "legend"."""
    return PENALTIES[penalty][1][place].format(v=f"{value:g}")
