"""The report's figures and tables for one model (rule `report_figures`), read by
`snakemake --report` from `<output_root>/<model>/report/`:

- `figures/<site>/<name>.png` (and `.svg`), one per (site, width) and kind:
  Pareto curves of delta loss and FVU against L0 (one line per layer; and one line
  per width at the layer with the most widths), per-layer bars at the L0 nearest
  `release.canonical_l0`, and, at that site's representative layer, latent-frequency
  histograms, metrics by sequence position and training curves;
- `figures/<transcoder kind>/compare_<metric>_layer_<L>_width_<W>.png`, at each layer
  and width with transcoders: its MLP-output SAEs, transcoders and skip-transcoders
  on one Pareto plot (the MLP's output is what all three reconstruct);
- `tables/<name>.html`: the evaluation table, and with dashboards the middle layer's
  latents (saesuite.report.dashboards);
- with CLTs, `figures/clt/` and `tables/clt*.html` (saesuite.report.clt).

Every function takes the evaluation table (`tables.eval_frame`) or the files it
names, and returns figures; `write_report` writes them atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from saesuite.eval.plots import (
    METRICS,
    pareto_axes,
    pareto_series,
    save_png,
    save_svg,
    subplots,
)
from saesuite.eval.tables import html_table
from saesuite.report.clt import write_clt_report
from saesuite.report.dashboards import dashboards_table
from saesuite.spec import paths
from saesuite.spec.dictionary import FAMILY_TITLES
from saesuite.spec.io import atomic_path, read_json
from saesuite.spec.metrics import (
    SPIKE_FACTOR,
    fvu_spike,
    health_warnings,
    nearest_l0,
)
from saesuite.spec.releases import width_label
from saesuite.spec.sparsity import sparsity_label

log = logging.getLogger(__name__)


def _title(model: str, site: str, rest: str) -> str:
    return f"{model} · {FAMILY_TITLES.get(site, site)} · {rest}"


def _key(layer: int, width: int) -> str:
    return f"layer_{layer}_width_{width}"


def _at(layer: int, width: int) -> str:
    return f"layer {layer}, width {width_label(width)}"


def representative_layer(layers: list[int]) -> int:
    """The middle one: the paper's single-layer figures use a middle layer."""
    return sorted(layers)[(len(layers) - 1) // 2]


def nearest_l0_rows(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per (layer, site, width) the SAE whose L0 is nearest `target`: the release's
    canonical SAE (spec.metrics.nearest_l0, at release.canonical_l0)."""
    picks = [
        g.index[nearest_l0(g["l0"].tolist(), target)]
        for _, g in df.groupby(["layer", "site", "width"], sort=True)
    ]
    return df.loc[picks]


def pareto(df: pd.DataFrame, model: str, site: str, metric: str, by: str, at: int):
    """`metric` against L0, one line per layer (at width `at`: by="layer") or per
    width (at layer `at`: by="width")."""
    fixed = "width" if by == "layer" else "layer"
    sub = df[(df["site"] == site) & (df[fixed] == at)]
    fig, ax = subplots(figsize=(6.4, 4.4))
    groups = sorted(sub[by].unique())
    colours = _colours(len(groups))
    for colour, g in zip(colours, groups, strict=True):
        line = sub[sub[by] == g]
        label = f"layer {g}" if by == "layer" else f"width {width_label(g)}"
        pareto_series(
            ax, list(line["l0"]), list(line[metric]), label=label, color=colour, ms=4
        )
    what = f"width {width_label(at)}" if by == "layer" else f"layer {at}"
    title = _title(model, site, f"{what}: {metric.replace('_', ' ')} vs L0")
    pareto_axes(ax, metric, log_y=metric == "fvu", title=title)
    ax.legend(fontsize="small", ncol=1 + len(groups) // 12, title=by)
    return fig


# What a layer's MLP-output SAEs and transcoders reconstruct is the same tensor.
COMPARED = ("mlp", "transcoder", "skip_transcoder")


def compare(df: pd.DataFrame, model: str, metric: str, layer: int, width: int):
    """`metric` against L0 at one layer and width: a line per family of COMPARED."""
    sub = df[(df["layer"] == layer) & (df["width"] == width)]
    fig, ax = subplots(figsize=(6.4, 4.4))
    for colour, family in zip(_colours(len(COMPARED)), COMPARED, strict=True):
        line = sub[sub["site"] == family]
        pareto_series(
            ax,
            list(line["l0"]),
            list(line[metric]),
            label=FAMILY_TITLES[family],
            color=colour,
            ms=4,
        )
    title = (
        f"{model} · MLP output: SAEs and transcoders · {_at(layer, width)}: "
        f"{metric.replace('_', ' ')} vs L0"
    )
    pareto_axes(ax, metric, log_y=metric == "fvu", title=title)
    ax.legend(fontsize="small")
    return fig


def layer_bars(df: pd.DataFrame, model: str, site: str, width: int, target: float):
    """Delta loss and FVU per layer, each layer's SAE at the L0 nearest `target`."""
    sub = nearest_l0_rows(df[(df["site"] == site) & (df["width"] == width)], target)
    sub = sub.sort_values("layer")
    fig, axes = subplots(2, 1, figsize=(7.2, 5.6), sharex=True)
    x = np.arange(len(sub))
    for ax, metric in zip(axes, METRICS, strict=True):
        bars = ax.bar(x, sub[metric], color="tab:blue", label=f"L0 nearest {target:g}")
        if metric == "delta_loss":
            ax.bar_label(bars, [f"L0 {v:.0f}" for v in sub["l0"]], fontsize=7)
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize="small")
    axes[1].set_xticks(x, [str(v) for v in sub["layer"]])
    axes[1].set_xlabel("layer")
    axes[0].set_title(
        _title(model, site, f"width {width_label(width)}: per layer at L0 ≈ {target:g}")
    )
    return fig


def frequency(
    saes: list[dict[str, Any]], model: str, site: str, width: int, layer: int
):
    """Histograms of log10 latent firing frequency, one line per SAE (L0 variant);
    latents that never fired are counted in the legend (they have no log)."""
    fig, ax = subplots(figsize=(6.4, 4.4))
    lo = 0.0
    for colour, sae in zip(_colours(len(saes)), saes, strict=True):
        h = sae["metrics"]["log10_frequency_histogram"]
        label = f"L0 {sae['metrics']['l0']:.0f} ({sae['metrics']['dead']} dead)"
        ax.stairs(h["counts"], h["edges"], color=colour, label=label)
        nz = np.flatnonzero(h["counts"])
        if len(nz):
            lo = min(lo, h["edges"][nz[0]] - 0.5)
    ax.set_xlim(lo, 0)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("log10 firing frequency (fraction of tokens)")
    ax.set_ylabel("latents")
    ax.set_title(_title(model, site, f"{_at(layer, width)}: latent frequency"))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def by_position(
    saes: list[dict[str, Any]], model: str, site: str, width: int, layer: int
):
    """Reconstruction MSE and delta loss against the token's position."""
    fig, axes = subplots(2, 1, figsize=(7.2, 5.6), sharex=True)
    for colour, sae in zip(_colours(len(saes)), saes, strict=True):
        m = sae["metrics"]
        label = f"L0 {m['l0']:.0f}"
        axes[0].plot(
            np.arange(len(m["mse_by_position"])),
            m["mse_by_position"],
            color=colour,
            label=label,
        )
        dl = m["delta_loss_by_position"]
        axes[1].plot(np.arange(len(dl)), dl, color=colour, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("MSE (activation units², log)")
    axes[1].set_ylabel("delta loss (nats/token)")
    axes[1].set_xlabel("position in sequence (tokens)")
    axes[0].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title(_title(model, site, f"{_at(layer, width)}: by position"))
    return fig


def training(
    logs: dict[str, list[dict[str, Any]]], model: str, site: str, width: int, layer: int
):
    """L0 and FVU of the training batches against tokens seen, and the dead (solid)
    and dense (dashed) latents each logged step counts, one colour per SAE."""
    fig, axes = subplots(3, 1, figsize=(7.2, 7.8), sharex=True)
    for colour, (label, rows) in zip(_colours(len(logs)), logs.items(), strict=True):
        tokens = [r["tokens"] for r in rows]
        axes[0].plot(tokens, [r["l0"] for r in rows], color=colour, label=label)
        axes[1].plot(tokens, [r["fvu"] for r in rows], color=colour, label=label)
        counted = [r for r in rows if r.get("dead") is not None]  # older logs lack it
        t = [r["tokens"] for r in counted]
        axes[2].plot(t, [r["dead"] for r in counted], color=colour, label=label)
        axes[2].plot(
            t, [r.get("dense") or 0 for r in counted], color=colour, linestyle="--"
        )
    axes[0].set_ylabel("L0 (training batch)")
    axes[1].set_ylabel("FVU (training batch)")
    axes[2].set_ylabel(f"latents of {width}: dead —, dense - -")
    axes[2].set_xlabel("training tokens (log scale)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:2]:
        ax.set_yscale("log")
    axes[0].legend(fontsize="small")
    axes[0].set_title(_title(model, site, f"{_at(layer, width)}: training"))
    return fig


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def _sae_label(identity: dict[str, Any]) -> str:
    return sparsity_label(identity["penalty"], identity["value"], "legend")


def figures(
    df: pd.DataFrame,
    sae_json: Callable[[str], dict[str, Any]],
    train_log: Callable[[str], list[dict[str, Any]]],
    model: str,
    target_l0: float,
) -> Iterator[tuple[str, Any]]:
    """Every figure of one model's report as (`<site>/<name>`, figure), one at a
    time (the caller saves and closes each). `sae_json` and `train_log` give an SAE's
    evaluation JSON and training log by its path (Dictionary.path); only the SAEs of a
    site's middle layer are read."""
    df = df[df["model"] == model]
    for site in sorted(df["site"].unique()):
        s = df[df["site"] == site]
        for width in sorted(s["width"].unique()):
            w = s[s["width"] == width]
            for metric in METRICS:
                yield (
                    f"{site}/pareto_{metric}_width_{width}",
                    pareto(df, model, site, metric, "layer", width),
                )
            yield (
                f"{site}/layers_width_{width}",
                layer_bars(df, model, site, width, target_l0),
            )
            layer = representative_layer(list(w["layer"].unique()))
            rows = w[w["layer"] == layer].sort_values("l0")
            saes = [sae_json(p) for p in rows["path"]]
            at = _key(layer, width)
            yield f"{site}/frequency_{at}", frequency(saes, model, site, width, layer)
            yield f"{site}/position_{at}", by_position(saes, model, site, width, layer)
            logs = {_sae_label(r): train_log(r["path"]) for _, r in rows.iterrows()}
            yield f"{site}/training_{at}", training(logs, model, site, width, layer)
        n_widths = s.groupby("layer")["width"].nunique()
        if n_widths.max() > 1:
            widest = [int(v) for v in n_widths[n_widths == n_widths.max()].index]
            layer = representative_layer(widest)
            for metric in METRICS:
                yield (
                    f"{site}/pareto_{metric}_layer_{layer}",
                    pareto(df, model, site, metric, "width", layer),
                )
    kinds = [k for k in COMPARED[1:] if k in set(df["site"])]
    if kinds:  # beside the MLP's SAEs, in the first transcoder kind's folder
        tc = df[df["site"].isin(kinds)]
        for layer, width in sorted(set(zip(tc["layer"], tc["width"], strict=True))):
            for metric in METRICS:
                yield (
                    f"{kinds[0]}/compare_{metric}_{_key(layer, width)}",
                    compare(df, model, metric, int(layer), int(width)),
                )


def health_frame(
    df: pd.DataFrame, train_log: Callable[[str], list[dict[str, Any]]]
) -> pd.DataFrame:
    """Training health per SAE (issue 19): FVU on the first and last training
    batches, dead and dense latents at the end of training (logged) and on the
    held-out split, loss recovered, the held-out L0 beside its target, and the
    warnings of `health_warnings` (an L0 off its target by over 25 % among them)
    and a spike of its training FVU (`fvu_spike`)."""
    rows = []
    for _, r in df.iterrows():
        lines = train_log(r["path"])  # not `log`: the module's logger
        first, last = lines[0], lines[-1]
        target = r["value"] if r["penalty"] == "target_l0" else None
        spike = fvu_spike(lines)
        spiked = (
            [f"training FVU {spike[1]:.3g} at step {spike[0]}, over "
             f"{SPIKE_FACTOR:g}× the best before it ({spike[2]:.3g})"]
            if spike else []
        )  # fmt: skip
        rows.append(
            {
                "layer": r["layer"],
                "site": r["site"],
                "width": r["width"],
                "sparsity": sparsity_label(r["penalty"], r["value"], "legend"),
                "initial FVU": first["fvu"],
                "final FVU": last["fvu"],
                "dead (training)": last.get("dead"),
                "dense (training)": last.get("dense"),
                "dead (held-out)": r["dead"],
                "dense (held-out)": r["dense_latents"],
                "loss recovered": r.get("loss_recovered"),
                "target L0": target,
                "L0 (held-out)": r["l0"],
                "warnings": "; ".join(
                    health_warnings(
                        int(r["width"]),
                        int(r["dead"]),
                        r.get("loss_recovered"),
                        r["l0"],
                        target,
                    )
                    + spiked
                ),
            }
        )
    return pd.DataFrame(rows)


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def write_report(
    table_csv: str | Path,
    layer_jsons: list[str | Path],
    site_summaries: list[str | Path],
    model: str,
    target_l0: float,
    figures_dir: str | Path,
    tables_dir: str | Path,
    dashboard_layers: list[str | Path] = (),
    clt_evals: list[str | Path] = (),
) -> list[str]:
    """Write one model's figures (PNG + SVG) and tables; return the figure keys.
    With `dashboard_layers` (the dashboards jobs' summaries), also the table of the
    middle layer's latents, linked to their dashboards; with `clt_evals` (the
    evaluate_clt jobs' JSON), the CLTs beside the per-layer transcoders
    (saesuite.report.clt)."""
    df = pd.read_csv(table_csv)
    df = df[(df["trained_on"] == model) & (df["evaluated_on"] == model)]
    df = df[df["data"] == "text"]
    if df.empty:
        raise ValueError(f"{table_csv}: no evaluations of '{model}' on its own text")
    eval_json = {  # the model's own SAEs (the jobs may hold fine-tuned ones too)
        entry["path"]: entry["json"]
        for layer_json in layer_jsons
        for entry in read_json(layer_json)["saes"]
        if entry["trained_on"] == model
    }
    log_path = {
        sae["path"]: paths.sae_file(paths.sae_dir_beside(summary, sae["path"]), "log")
        for summary in site_summaries
        for sae in read_json(summary)["saes"]
    }
    keys = []
    for key, fig in figures(
        df,
        lambda p: read_json(eval_json[p]),
        lambda p: read_train_log(log_path[p]),
        model,
        target_l0,
    ):
        save_svg(fig, Path(figures_dir) / f"{key}.svg")
        save_png(fig, Path(figures_dir) / f"{key}.png")  # closes it
        keys.append(key)
    cols = [c for c in df.columns if c not in ("trained_on", "evaluated_on", "data")]
    with atomic_path(Path(tables_dir) / "evaluation.html") as tmp:
        tmp.write_text(html_table(df[cols], f"{model}: evaluation of every SAE"))
    health = health_frame(df, lambda p: read_train_log(log_path[p]))
    flagged = health[health["warnings"] != ""]
    for _, r in flagged.iterrows():
        log.warning(
            "%s layer %s %s (%s): %s",
            model,
            r["layer"],
            r["site"],
            r["sparsity"],
            r["warnings"],
        )
    title = f"{model}: training health ({len(flagged)} of {len(health)} SAEs flagged)"
    with atomic_path(Path(tables_dir) / "health.html") as tmp:
        tmp.write_text(html_table(health, title), encoding="utf-8")
    if dashboard_layers:
        by_layer = {read_json(p)["layer"]: p for p in dashboard_layers}
        middle = by_layer[representative_layer(list(by_layer))]
        with atomic_path(Path(tables_dir) / "latents.html") as tmp:
            tmp.write_text(dashboards_table(middle, model), encoding="utf-8")
    keys += write_clt_report(df, list(clt_evals), model, figures_dir, tables_dir)
    return sorted(keys)
