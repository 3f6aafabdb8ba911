"""A model's cross-layer transcoders and crosscoders in its report (rule
`report_figures`): each CLT beside the per-layer transcoders and skip-transcoders of
the same model (a crosscoder beside the residual-stream SAEs), layer by layer, and
against a full set of them at equal total L0 where the suite has one.

- `tables/clt.html`: per CLT its replacement-model row (every MLP at once: delta
  loss, KL, loss recovered, total L0) and, for each per-layer kind with a
  dictionary at every one of its layers, that set's total L0 and mean FVU at the
  per-layer rung nearest the CLT's total L0 divided by its layers;
- `tables/clt_layers.html`: per CLT and layer its L0, FVU and delta loss with that
  layer's MLP replaced alone, beside each per-layer kind's dictionary at that layer
  whose L0 is nearest the CLT's layer L0;
- `figures/<kind>/by_layer_<name>.png`: FVU and delta loss alone by layer, its line
  beside each per-layer kind's points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from saesuite.eval.plots import save_png, save_svg, subplots
from saesuite.eval.tables import html_table
from saesuite.spec.dictionary import FAMILY_TITLES
from saesuite.spec.io import atomic_path, read_json

# the per-layer kinds beside each spanning one: what writes the same sites
PER_LAYER = {"clt": ("transcoder", "skip_transcoder"), "crosscoder": ("res",)}


def _nearest(rows: pd.DataFrame, l0: float) -> pd.Series | None:
    if rows.empty:
        return None
    return rows.loc[(rows["l0"] - l0).abs().idxmin()]


def clt_frames(df: pd.DataFrame, evals: list[dict[str, Any]]):
    """(per-layer rows, per-CLT rows) of the CLTs' evaluations `evals` (their JSON)
    against the per-layer kinds of the evaluation table `df`."""
    layers, totals = [], []
    for ev in evals:
        ident, m = ev["identity"], ev["metrics"]
        name, kinds = ident["path"], PER_LAYER[ident["kind"]]
        for layer, b in zip(ident["layers"], m["by_layer"], strict=True):
            row = {"clt": name, "layer": layer, "CLT L0": b["l0"], "CLT FVU": b["fvu"],
                   "CLT delta loss alone": b["delta_loss_alone"]}  # fmt: skip
            for kind in kinds:
                near = _nearest(df[(df["site"] == kind) & (df["layer"] == layer)],
                                b["l0"])  # fmt: skip
                for col, key in (("L0", "l0"), ("FVU", "fvu"),
                                 ("delta loss", "delta_loss")):  # fmt: skip
                    row[f"{kind} {col}"] = None if near is None else near[key]
            layers.append(row)
        total = {"clt": name, "layers": len(ident["layers"]), "CLT total L0": m["l0"],
                 "CLT FVU": m["fvu"], "replacement delta loss": m.get("delta_loss"),
                 "replacement KL": m.get("kl"),
                 "loss recovered": m.get("loss_recovered")}  # fmt: skip
        per = m["l0"] / len(ident["layers"])
        for kind in kinds:
            picked = [_nearest(df[(df["site"] == kind) & (df["layer"] == L)], per)
                      for L in ident["layers"]]  # fmt: skip
            full = all(p is not None for p in picked)
            total[f"{kind} set total L0"] = (
                sum(p["l0"] for p in picked) if full else None)  # fmt: skip
            total[f"{kind} set mean FVU"] = (
                sum(p["fvu"] for p in picked) / len(picked) if full else None
            )
        totals.append(total)
    return pd.DataFrame(layers), pd.DataFrame(totals)


def by_layer_figure(rows: pd.DataFrame, model: str, name: str):
    """FVU and delta loss alone by layer: its line, each per-layer kind's points."""
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for ax, (metric, theirs) in zip(axes, (("CLT FVU", "FVU"),
                                           ("CLT delta loss alone", "delta loss")),
                                    strict=True):  # fmt: skip
        ax.plot(rows["layer"], rows[metric], "o-", label=name.split("/")[0], ms=3)
        for kind in sorted({k for ks in PER_LAYER.values() for k in ks}):
            col = f"{kind} {theirs}"
            if col not in rows:
                continue
            have = rows[rows[col].notna()]
            if not have.empty:
                ax.plot(have["layer"], have[col], "s", label=FAMILY_TITLES[kind])
        ax.set_xlabel("layer")
        ax.set_ylabel(theirs if theirs != "delta loss" else "delta loss (layer alone)")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{model} · {name}: by layer, beside the per-layer dictionaries "
                 "of its sites (nearest L0)")  # fmt: skip
    return fig


def write_clt_report(
    df: pd.DataFrame,
    clt_evals: list[str | Path],
    model: str,
    figures_dir: str | Path,
    tables_dir: str | Path,
) -> list[str]:
    """The CLT table and figures of one model; the figure keys written."""
    evals = [read_json(p) for p in clt_evals]
    evals = [e for e in evals if e["identity"]["model"] == model]
    if not evals:
        return []
    layers, totals = clt_frames(df, evals)
    for name, frame, what in (("clt", totals, "all layers at once"),
                              ("clt_layers", layers, "by layer")):  # fmt: skip
        with atomic_path(Path(tables_dir) / f"{name}.html") as tmp:
            title = f"{model}: cross-layer transcoders, {what}"
            tmp.write_text(html_table(frame, title), encoding="utf-8")
    keys = []
    for name, rows in layers.groupby("clt", sort=True):
        kind, rest = name.split("/", 1)
        key = f"{kind}/by_layer_" + rest.replace("/", "_")
        fig = by_layer_figure(rows, model, name)
        save_svg(fig, Path(figures_dir) / f"{key}.svg")
        save_png(fig, Path(figures_dir) / f"{key}.png")
        keys.append(key)
    return keys
