"""The report's table of latents (issue 17, item 5): per dictionary of a model's
middle layer, a link to its dashboard and its top latents by max activation, each
with its top context inline (the activating token marked), read from the dashboard
folders the `dashboards` rule wrote."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from saesuite.eval.dashboards import read_js
from saesuite.spec.io import read_json

STYLE = (
    "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
    "th,td{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd;"
    "vertical-align:top}mark{background:#f5b041;font-weight:bold}"
    "code{white-space:pre-wrap}"
)


def context_html(ctx: list[Any], text: dict[str, Any], half: int) -> str:
    """A context's tokens, the activating one marked."""
    seq, pos, _, _ = ctx
    ids, strings = text["ids"][seq], text["strings"]
    parts = []
    for p in range(max(0, pos - half), min(len(ids), pos + half + 1)):
        s = html.escape(strings[str(ids[p])])
        parts.append(f"<mark>{s}</mark>" if p == pos else s)
    return "<code>" + "".join(parts) + "</code>"


def dashboards_table(layer_json: str | Path, model: str, n_latents: int = 5) -> str:
    """The HTML page of one layer's dashboards (one dashboards job's summary)."""
    summary = read_json(layer_json)
    rows = []
    for d in summary["dashboards"]:
        folder = Path(d["dir"])
        (info,) = read_js(folder / "info.js")
        (text,) = read_js(folder / "text.js")
        records = [
            r
            for shard in sorted((folder / "shards").glob("shard_*.js"))
            for r in read_js(shard)[1]
        ]
        best = sorted((r for r in records if r["top"]), key=lambda r: -r["max"])
        link = (folder / "index.html").resolve().as_uri()
        cells = "".join(
            f"<li><a href='{link}#latent/{r['i']}'>#{r['i']}</a> max {r['max']:.3g}, "
            f"frequency {r['freq']:.2g}: {context_html(r['top'][0], text, 6)}</li>"
            for r in best[:n_latents]
        )
        rows.append(
            f"<tr><td><a href='{link}'>{html.escape(d['key'])}</a><br>"
            f"{d['dead']} of {info['width']} latents never fire</td>"
            f"<td><ul>{cells}</ul></td></tr>"
        )
    title = html.escape(f"{model} layer {summary['layer']}: latents")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h3>{title}</h3><table>"
        "<tr><th>dictionary (its dashboard)</th><th>top latents by max activation, "
        "each with its top context</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )
