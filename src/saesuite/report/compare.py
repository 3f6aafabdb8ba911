"""`saesuite compare RESULTS_A RESULTS_B`: whether two runs built the same artefacts
byte for byte (by kind: `paths.ARTEFACTS`), and, for each dictionary whose held-out
evaluation differs, how far its L0, FVU and delta loss moved against a stated
tolerance. Torch-free: it reads files only.
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from saesuite.spec import paths
from saesuite.spec.io import read_json

# How far a rebuild's metric may move and still count as the same result: L0 by a
# share of its value, FVU and delta loss (nats) by an absolute amount. These are
# well under the gaps between a ladder's rungs (L0 20 → 80 moves delta loss by
# 0.01–0.1 nats in the default run), so a rebuild within them would be ranked alike.
TOLERANCES = {"l0": ("relative", 0.05), "fvu": ("absolute", 0.02),
              "delta_loss": ("absolute", 0.02)}  # fmt: skip


@dataclass
class KindDiff:
    """One artefact kind's files: equal, different, or in one run only (relative
    to the output root)."""

    equal: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.differ or self.only_a or self.only_b)


def artefacts(root: Path, globs: tuple[str, ...]) -> set[str]:
    return {
        str(p.relative_to(root)) for g in globs for p in root.glob(g) if p.is_file()
    }


def compare_files(a: Path, b: Path) -> dict[str, KindDiff]:
    """Every artefact kind of two output roots, file by file (full byte compare)."""
    for root in (a, b):
        if not root.is_dir():
            raise SystemExit(f"saesuite compare: {root} is not a folder")
    out = {}
    for kind, globs in paths.ARTEFACTS.items():
        in_a, in_b = artefacts(a, globs), artefacts(b, globs)
        d = KindDiff(only_a=sorted(in_a - in_b), only_b=sorted(in_b - in_a))
        for rel in sorted(in_a & in_b):
            same = filecmp.cmp(a / rel, b / rel, shallow=False)
            (d.equal if same else d.differ).append(rel)
        out[kind] = d
    return out


def within(metric: str, x: float, y: float) -> bool:
    how, tol = TOLERANCES[metric]
    gap = abs(x - y)
    return gap <= tol * max(abs(x), 1e-12) if how == "relative" else gap <= tol


def metric_deltas(a: Path, b: Path, evaluations: list[str]) -> pd.DataFrame:
    """One row per differing evaluation JSON: each metric in A and B, B − A, and
    whether every metric is within TOLERANCES."""
    rows = []
    for rel in evaluations:
        if rel.endswith(".frequencies.safetensors"):
            continue
        ma, mb = (read_json(root / rel)["metrics"] for root in (a, b))
        row: dict = {"evaluation": rel.removesuffix(".json")}
        ok = True
        for k in TOLERANCES:
            if ma.get(k) is None or mb.get(k) is None:
                continue
            row |= {f"{k} A": ma[k], f"{k} B": mb[k], f"Δ {k}": mb[k] - ma[k]}
            ok &= within(k, ma[k], mb[k])
        row["within tolerance"] = ok
        rows.append(row)
    return pd.DataFrame(rows)


def summary(diffs: dict[str, KindDiff]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "artefact": kind,
                "files": len(d.equal) + len(d.differ),
                "equal": len(d.equal),
                "differ": len(d.differ),
                "only in A": len(d.only_a),
                "only in B": len(d.only_b),
            }
            for kind, d in diffs.items()
        ]
    )


def compare(a: Path, b: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(the summary by kind, the metric deltas, the verdict: "identical",
    "within tolerance" or "different")."""
    diffs = compare_files(a, b)
    deltas = metric_deltas(a, b, diffs["evaluations"].differ)
    if all(d.same for d in diffs.values()):
        verdict = "identical"
    elif (
        not any(d.only_a or d.only_b for d in diffs.values())
        and len(deltas)
        and deltas["within tolerance"].all()
    ):
        verdict = "within tolerance"
    else:
        verdict = "different"
    return summary(diffs), deltas, verdict


def tolerance_line() -> str:
    return ", ".join(
        f"{k} {'±' + format(t, '.0%') if how == 'relative' else '±' + format(t, 'g')}"
        for k, (how, t) in TOLERANCES.items()
    )
