"""The model card (README.md with Hub metadata) and Pareto plot of a release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from saesuite.eval.plots import pareto_axes, pareto_series, save_png, subplots
from saesuite.spec.sparsity import sparsity_label

WEIGHTS = {
    "saelens": ("sae_weights.safetensors", "W_enc, W_dec, b_enc, b_dec, threshold"),
    "gemma-scope-2": ("params.safetensors", "w_enc, w_dec, b_enc, b_dec, threshold"),
    "gemma-scope": ("params.npz", "W_enc, W_dec, b_enc, b_dec, threshold"),
}


def loading_snippet(
    layout: str, repo: str, path: str, overrides: dict[str, Any] | None,
    transcoders: bool = False,
) -> str:  # fmt: skip
    """Python that loads one SAE (or transcoder) of the release with SAELens (tests
    run it)."""
    gs1 = "gemma_2_transcoder" if transcoders else "gemma_2_sae"
    if layout == "saelens":
        return (
            f'from sae_lens import SAE\n\nsae = SAE.from_pretrained("{repo}", "{path}")'
        )
    if layout == "gemma-scope-2":
        return (
            "from sae_lens import SAE\n"
            "from sae_lens.loading.pretrained_sae_loaders import "
            "gemma_3_sae_huggingface_loader\n\n"
            f'sae = SAE.from_pretrained("{repo}", "{path}", '
            "converter=gemma_3_sae_huggingface_loader)"
        )
    return (
        "from sae_lens import SAE\n"
        "from sae_lens.loading.pretrained_sae_loaders import "
        f"{gs1}_huggingface_loader\n\n\n"
        "def converter(**kw):  # SAELens infers these for Gemma 2 repos only\n"
        '    kw["cfg_overrides"] = {**(kw["cfg_overrides"] or {}), '
        f"**{overrides!r}}}\n"
        f"    return {gs1}_huggingface_loader(**kw)\n\n\n"
        f'sae = SAE.from_pretrained("{repo}", "{path}", converter=converter)'
    )


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def model_card(
    repo: str,
    layout: str,
    index: list[dict[str, Any]],
    meta: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> str:
    header = {
        "license": meta["license"],
        "library_name": "saelens",
        "base_model": meta["hub_model"],
        "tags": [
            "sparse-autoencoder",
            "jumprelu",
            "interpretability",
            "saesuite",
            "gemma-scope",
        ],  # fmt: skip
    }
    datasets = [s["id"] for s in meta["data"]["sources"] if s["type"] == "hub"]
    if datasets:
        header["datasets"] = datasets
    first = next((r for r in index if r["canonical"]), index[0])
    weights, keys = WEIGHTS[layout]
    sites = sorted({r["site"] for r in index})
    layers = sorted({r["layer"] for r in index})
    widths = sorted({r["width"] for r in index})
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo}",
        "",
        f"JumpReLU sparse autoencoders on **{meta['hub_model']}** — {len(index)} SAEs "
        f"on sites {', '.join(sites)} of layers {', '.join(map(str, layers))}, widths "
        f"{', '.join(map(str, widths))} — trained with "
        "saesuite (a Snakemake workflow) following the Gemma Scope recipe, in the "
        f"`{layout}` layout. Every SAE takes raw activations (the normalisation "
        "scalar is folded into its weights).",
        "",
    ]
    if meta.get("source_note"):
        lines += [f"> {meta['source_note']}", ""]
    lines += [
        "## Loading",
        "",
        "```python",
        loading_snippet(
            layout,
            repo,
            first["path"],
            overrides,
            any(r.get("kind", "sae") != "sae" for r in index),
        ),
        "```",
        "",
        f"Or without SAELens: each SAE folder holds `{weights}` with {keys} "
        "(W_enc is [d_in, d_sae], W_dec [d_sae, d_in]):",
        "",
        "```python",
        "pre = x @ W_enc + b_enc",
        "f = pre * (pre > threshold)      # JumpReLU",
        "x_hat = f @ W_dec + b_dec",
        "```",
        "",
        "`pretrained_saes.yaml` in this repo is an entry for SAELens's registry; "
        "`index.json` lists every SAE with its metrics; `release_manifest.json` the "
        "provenance and sha256 of every file.",
        "",
        "## Hook points",
        "",
        "| layer | site | Hugging Face module | SAELens hook |",
        "|---|---|---|---|",
    ]
    hooks = {(r["layer"], r["site"]): r for r in index}  # one row per layer and site
    for (layer, site), row in sorted(hooks.items()):
        lines.append(f"| {layer} | {site} | `{row['hf_hook']}` | `{row['hook']}` |")
    ev = meta["evaluate"]
    lines += [
        "",
        "## Evaluation",
        "",
        f"On {ev['tokens']} held-out tokens ({ev['loss_tokens']} for the loss "
        "metrics), "
        "with BOS/EOS/padding masked. FVU = Σ‖x − x̂‖² / Σ‖x − mean x‖²; delta loss = "
        "next-token cross-entropy with the reconstruction spliced in minus the clean "
        "loss; canonical = the SAE whose L0 is closest to "
        f"{meta['canonical_l0']:g} for its layer, site and width.",
        "",
        "![Pareto](pareto.png)",
        "",
        "| path | layer | site | width | sparsity | L0 | FVU | delta loss "
        "| loss recovered | canonical |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|:---:|",
    ]  # fmt: skip
    for r in index:
        spars = sparsity_label(r["penalty"], r["value"], "legend")
        lines.append(
            f"| `{r['path']}` | {r['layer']} | {r['site']} | {r['width']} | {spars} "
            f"| {_fmt(r['l0'])} | {_fmt(r['fvu'])} | {_fmt(r.get('delta_loss'))} "
            f"| {_fmt(r.get('loss_recovered'))} | {'✓' if r['canonical'] else ''} |"
        )
    d = meta["data"]
    lines += [
        "",
        "## Training",
        "",
        f"Data: {', '.join(s.get('id', s['type']) for s in d['sources'])}; context "
        f"{d['context_size']} tokens; {d['train_tokens']} cached training tokens; seed "
        f"{meta['seed']}. Config hash `{meta['config_hash']}`, code "
        f"`{meta['code']}`.",
        "",
        "```yaml",
        yaml.safe_dump({"train": meta["train"]}, sort_keys=True).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def pareto_plot(index: list[dict[str, Any]], repo: str, out: str | Path) -> None:
    """Delta loss and FVU against L0, a series per site × width."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in index:
        series.setdefault((r["site"], r["width"], r["layer"]), []).append(r)
    for i, ((site, width, layer), rows) in enumerate(sorted(series.items())):
        for ax, metric in zip(axes, ("delta_loss", "fvu"), strict=True):
            ys = [r.get(metric) for r in rows]
            label = f"L{layer} {site} {width}"
            pareto_series(
                ax, [r["l0"] for r in rows], ys, label=label, color=f"C{i % 10}"
            )
    for ax, metric in zip(axes, ("delta_loss", "fvu"), strict=True):
        pareto_axes(ax, metric)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(repo, fontsize=9)
    fig.tight_layout()
    save_png(fig, out)
