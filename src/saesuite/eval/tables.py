"""Evaluation tables (rule `eval_table`): one row per SAE × evaluation, with the SAE's
identity and every scalar metric; the by-position curves and frequency histograms
stay in each SAE's JSON."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from saesuite.spec.io import atomic_path, read_json
from saesuite.spec.metrics import scalar_metrics

IDENTITY = ["model", "layer", "site", "width", "penalty", "value", "coefficient"]
EVALUATION = ["trained_on", "evaluated_on", "data"]


def eval_frame(
    layer_jsons: Iterable[str | Path],
    evaluations: Iterable[tuple[str, str, str]] | None = None,
) -> pd.DataFrame:
    """Rows of the SAEs listed in the given evaluate-job summaries, sorted; with
    `evaluations` ((trained_on, evaluated_on, data) triples) only theirs: a job holds
    every dictionary run through its model on its data at its layer."""
    keep = None if evaluations is None else {tuple(e) for e in evaluations}
    rows = []
    for layer_json in dict.fromkeys(layer_jsons):
        for entry in read_json(layer_json)["saes"]:
            sae = read_json(entry["json"])
            ev = {k: sae["evaluation"][k] for k in EVALUATION}
            if keep is not None and tuple(ev[k] for k in EVALUATION) not in keep:
                continue
            scalars = scalar_metrics(sae["metrics"])
            rows.append({**ev, **sae["identity"], **scalars})
    if not rows:
        raise ValueError("no evaluated SAEs to tabulate")
    df = pd.DataFrame(rows)
    keys = EVALUATION + ["layer", "site", "width", "penalty", "value"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def write_table(df: pd.DataFrame, csv: str | Path, parquet: str | Path) -> None:
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(parquet) as tmp:
        df.to_parquet(tmp, index=False)


def html_table(df: pd.DataFrame, title: str) -> str:
    title = html.escape(title)
    body = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    style = (
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body><h3>{title}</h3>{body}</body></html>\n"
    )
