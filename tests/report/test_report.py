"""The report's figures (saesuite.report.figures) on a synthetic evaluation table: which
figures exist, what they plot (read back from the Matplotlib objects), and the
choice of SAE per layer; the end-to-end report is built in test_workflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saesuite.report.figures import (
    figures,
    health_frame,
    nearest_l0_rows,
    representative_layer,
)
from saesuite.spec.metrics import health_warnings, nearest_l0


def frame() -> pd.DataFrame:
    rows = []
    for layer in (0, 1, 2):
        for width in (16, 64) if layer == 1 else (16,):
            for target in (10, 40, 160):
                l0 = target * (1 + 0.01 * layer)
                rows.append({
                    "model": "m", "layer": layer, "site": "res", "width": width,
                    "penalty": "target_l0", "value": target, "l0": l0,
                    "fvu": 1 / l0 + layer / 100, "delta_loss": 2 / l0 + width / 1e3,
                    "path": f"layer_{layer}/res/width_{width}/l0_{target}",
                })  # fmt: skip
    return pd.DataFrame(rows)


def side_files(df):
    sae_jsons, logs = {}, {}
    for _, r in df.iterrows():
        hist = {"counts": [0, 3, 5, 0], "edges": [-4, -3, -2, -1, 0]}
        sae_jsons[r["path"]] = {"metrics": {
            "l0": r["l0"], "dead": 2, "log10_frequency_histogram": hist,
            "mse_by_position": [1.0, 2.0, 3.0],
            "delta_loss_by_position": [0.1, 0.2, 0.3],
        }}  # fmt: skip
        logs[r["path"]] = [{"tokens": t, "l0": 100 / t, "fvu": 1 / t} for t in (1, 10)]
    return sae_jsons, logs


def test_figures_per_site_width_and_layer():
    df = frame()
    sae_jsons, logs = side_files(df)
    read = []

    def sae_json(path):
        read.append(path)
        return sae_jsons[path]

    figs = dict(figures(df, sae_json, logs.__getitem__, "m", 40))
    # per-SAE files are read for the middle layer only (a suite has thousands)
    assert sorted(read) == sorted(df[df.layer == 1]["path"])
    assert sorted(figs) == sorted([
        "res/pareto_delta_loss_width_16", "res/pareto_fvu_width_16",
        "res/pareto_delta_loss_width_64", "res/pareto_fvu_width_64",
        "res/layers_width_16", "res/layers_width_64",
        "res/frequency_layer_1_width_16", "res/frequency_layer_1_width_64",
        "res/position_layer_1_width_16", "res/position_layer_1_width_64",
        "res/training_layer_1_width_16", "res/training_layer_1_width_64",
        # the layer with the most widths gets one line per width
        "res/pareto_delta_loss_layer_1", "res/pareto_fvu_layer_1",
    ])  # fmt: skip
    ax = figs["res/pareto_delta_loss_width_16"].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "layer 0",
        "layer 1",
        "layer 2",
    ]
    x, y = ax.get_lines()[2].get_data()
    want = df[(df.layer == 2) & (df.width == 16)].sort_values("l0")
    assert np.allclose(x, want["l0"]) and np.allclose(y, want["delta_loss"])
    assert ax.get_xscale() == "log" and "L0" in ax.get_xlabel()
    assert "m · residual stream · width 16" in ax.get_title()
    by_width = figs["res/pareto_fvu_layer_1"].axes[0]
    assert [line.get_label() for line in by_width.get_lines()] == [
        "width 16",
        "width 64",
    ]
    assert by_width.get_yscale() == "log"
    bars = figs["res/layers_width_16"].axes[0].patches
    want = nearest_l0_rows(df[df.width == 16], 40).sort_values("layer")
    assert [b.get_height() for b in bars] == pytest.approx(list(want["delta_loss"]))
    assert list(want["value"]) == [40, 40, 40]


def test_the_bars_show_the_releases_canonical_sae_and_the_middle_layer():
    """One rule, one key: the report's per-layer bars pick what the release marks
    canonical (absolute gap to release.canonical_l0, SAELens's rule)."""
    df = pd.DataFrame({"layer": [0, 0], "site": ["res"] * 2, "width": [8, 8],
                       "l0": [20.0, 190.0]})  # fmt: skip
    # |20 − 100| = 80 < |190 − 100| = 90 (in log ratio 190 would be nearer)
    assert nearest_l0_rows(df, 100)["l0"].tolist() == [20.0]
    assert nearest_l0([20.0, 190.0], 100) == 0 and nearest_l0([90.0, 110.0], 100) == 0
    assert representative_layer([5, 1, 9, 3]) == 3
    assert representative_layer([7]) == 7


def test_transcoders_are_compared_with_the_mlp_saes_of_their_layer():
    """Issue 16, item 8: at each layer with transcoders, one plot holds the MLP-output
    SAEs, the transcoders and the skip-transcoders, each its own line."""
    rows = []
    for site in ("mlp", "transcoder", "skip_transcoder"):
        for layer in (1, 2) if site != "mlp" else (1,):
            for k, target in enumerate((10, 40)):
                l0 = target + k + layer
                rows.append(
                    {
                        "model": "m",
                        "layer": layer,
                        "site": site,
                        "width": 16,
                        "penalty": "target_l0",
                        "value": target,
                        "l0": l0,
                        "fvu": 1 / l0,
                        "delta_loss": len(site) / l0,
                        "path": f"layer_{layer}/{site}/width_16/l0_{target}",
                    }
                )
    df = pd.DataFrame(rows)
    sae_jsons, logs = side_files(df)
    figs = dict(figures(df, sae_jsons.__getitem__, logs.__getitem__, "m", 40))
    compared = sorted(k for k in figs if "/compare_" in k)
    assert compared == sorted(
        f"transcoder/compare_{m}_layer_{L}_width_16"
        for L in (1, 2)
        for m in ("delta_loss", "fvu")
    )
    ax = figs["transcoder/compare_delta_loss_layer_1_width_16"].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [
        "MLP output",
        "transcoder (MLP input → output)",
        "skip-transcoder (MLP input → output)",
    ]
    for line, site in zip(ax.get_lines(), ("mlp", "transcoder", "skip_transcoder")):
        want = df[(df.site == site) & (df.layer == 1)].sort_values("l0")
        x, y = line.get_data()
        assert np.allclose(x, want["l0"]) and np.allclose(y, want["delta_loss"])
    # layer 2 has no MLP SAEs: its plot has the two transcoder lines only
    ax2 = figs["transcoder/compare_fvu_layer_2_width_16"].axes[0]
    assert len(ax2.get_lines()) == 2


def test_health_warnings_name_what_is_wrong():
    assert health_warnings(100, 50, 0.2) == []  # half dead is not more than half
    assert health_warnings(100, 51, -0.25) == [
        "worse than zero-ablation (loss recovered -0.25)",
        "51 of 100 latents dead",
    ]
    assert health_warnings(100, None, None) == []
    assert health_warnings(100, 0, 0.5, 37.1, 20) == [
        "held-out L0 37.1 misses its target 20 by over 25%"
    ]
    assert health_warnings(100, 0, 0.5, 24.9, 20) == []  # within ±25 %
    assert health_warnings(100, 0, 0.5, 14.9, 20) != []
    assert health_warnings(100, 0, 0.5, 37.1, None) == []  # a λ ladder: no target


def test_health_table_flags_the_saes_a_researcher_should_distrust():
    df = frame()
    df["dead"], df["dense_latents"], df["loss_recovered"] = 1, 0, 0.5
    df.loc[0, "loss_recovered"] = -1.3  # worse than zero-ablating the site
    df.loc[1, "dead"] = 9  # of 16
    logs = {p: [{"step": 0, "tokens": 1, "fvu": 123.0, "dead": 0, "dense": 2000},
                {"step": 8, "tokens": 9, "fvu": 0.4, "dead": 3, "dense": 1}]
            for p in df["path"]}  # fmt: skip
    h = health_frame(df, logs.__getitem__)
    assert len(h) == len(df) and list(h["initial FVU"].unique()) == [123.0]
    assert list(h["dense (training)"].unique()) == [1]
    assert h.loc[0, "warnings"] == "worse than zero-ablation (loss recovered -1.30)"
    assert h.loc[1, "warnings"] == "9 of 16 latents dead"
    assert (h.loc[2:, "warnings"] == "").all()
    assert (h["target L0"] == df["value"]).all() and (
        h["L0 (held-out)"] == df["l0"]
    ).all()
    df.loc[3, "l0"] = 2 * df.loc[3, "value"]  # twice its target
    h = health_frame(df, logs.__getitem__)
    assert "misses its target" in h.loc[3, "warnings"]
    p = df.loc[2, "path"]
    logs[p] = [{"step": s, "tokens": s, "fvu": f, "dead": 0, "dense": 0}
               for s, f in ((0, 9.0), (50, 0.5), (100, 1.2), (150, 0.4))]  # fmt: skip
    h = health_frame(df, logs.__getitem__)
    assert h.loc[2, "warnings"] == (
        "training FVU 1.2 at step 100, over 2× the best before it (0.5)"
    )


def test_a_training_fvu_spike_is_one_after_the_first_fifth_of_the_steps():
    """Issue 36: after the first 20 % of the logged steps, an FVU over twice the
    best so far; the early fall from a bad start is none, nor is a rise under 2×."""
    from saesuite.spec.metrics import fvu_spike

    def log(*fvus):
        return [{"step": 10 * i, "fvu": f} for i, f in enumerate(fvus)]

    assert fvu_spike(log(30.0, 0.5, 0.9, 0.4)) is None  # 0.9 < 2 × 0.5
    assert fvu_spike(log(0.3, 0.9, 0.5, 0.4, 0.4, 0.4, 0.4)) is None  # 10 < 20 % of 60
    # the 2026-12 default run's layer-9 residual SAE at target 20
    logged = ((0, 1.0), (50, 0.9), (100, 0.73), (150, 2.9), (200, 22.9), (291, 0.56))
    run = [{"step": s, "fvu": f} for s, f in logged]
    assert fvu_spike(run) == (200, 22.9, 0.73)
    assert fvu_spike([]) is None


def test_the_training_figure_plots_dead_and_dense_latents_as_logged():
    from saesuite.report.figures import training

    logs = {
        "target L0 10": [{"tokens": 1, "l0": 9, "fvu": 2.0, "dead": None},
                         {"tokens": 10, "l0": 5, "fvu": 1.0, "dead": 40, "dense": 7},
                         {"tokens": 99, "l0": 4, "fvu": 0.5, "dead": 12, "dense": 2}],
        "target L0 40": [{"tokens": 10, "l0": 50, "fvu": 0.4, "dead": 3, "dense": 0}],
    }  # fmt: skip
    fig = training(logs, "m", "res", 64, 1)
    ax = fig.axes[2]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    # unlogged counts (None: the steps between log lines) are left out
    assert [list(ln.get_data()[0]) for ln in solid] == [[10, 99], [10]]
    assert [list(ln.get_data()[1]) for ln in solid] == [[40, 12], [3]]
    assert [list(ln.get_data()[1]) for ln in dashed] == [[7, 2], [0]]
    assert "64" in ax.get_ylabel()
