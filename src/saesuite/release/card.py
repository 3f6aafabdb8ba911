"""The model card (README.md with Hub metadata) and Pareto plot of a release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from saesuite.eval.plots import pareto_axes, pareto_series, save_png, subplots
from saesuite.spec import paths
from saesuite.spec.dictionary import KINDS
from saesuite.spec.sparsity import sparsity_label

# each layout's weights file (spec.paths) and the keys the card lists in it
WEIGHTS = {
    layout: (paths.RELEASE_WEIGHTS[layout], keys)
    for layout, keys in (
        ("saelens", "W_enc, W_dec, b_enc, b_dec, threshold"),
        ("gemma-scope-2", "w_enc, w_dec, b_enc, b_dec, threshold"),
        ("gemma-scope", "W_enc, W_dec, b_enc, b_dec, threshold"),
    )
}


def loading_snippet(
    layout: str,
    repo: str,
    path: str,
    overrides: dict[str, Any] | None,
    transcoders: bool = False,
) -> str:
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


# a skip-transcoder's skip term, as each layout stores the matrix
SKIP_LINES = {
    "gemma-scope-2": "y_hat += x @ affine_skip_connection   # skip-transcoders",
    "saelens": "y_hat += x @ W_skip.T   # skip-transcoders (W_skip is [d_out, d_in])",
}
KIND_WORDS = {
    "sae": "SAEs",
    "transcoder": "transcoders",
    "skip_transcoder": "skip-transcoders (affine skip connection)",
}


def _family(r: dict[str, Any]) -> str:
    """An index row's series: its site for an SAE, its kind for a transcoder."""
    kind = r.get("kind", "sae")
    return r["site"] if kind == "sae" else kind


def circuit_tracer_snippet(repo: str, name: str) -> str:
    """The lines that compute an attribution graph from one transcoder set of a
    copy of this release (tests/release/test_circuit_tracer.py calls the same
    function on a local folder; the Hub download itself is not tested)."""
    return (
        "# in circuit-tracer's environment (docs/loading.md, circuit-tracer)\n"
        "from circuit_tracer import attribute\n"
        "from huggingface_hub import snapshot_download\n"
        "from saesuite.release.circuit_tracer import replacement_model\n\n"
        f'release = snapshot_download("{repo}")\n'
        f'model = replacement_model(release, "{name}", model_dir="<the model>")\n'
        'graph = attribute("The capital of France is", model)'
    )


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def model_card(
    repo: str,
    layout: str,
    index: list[dict[str, Any]],
    meta: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    circuit_tracer_sets: list[str] | tuple[str, ...] = (),
) -> str:
    """The release's README.md: Hub metadata, what it holds, loading, circuits,
    hook points, evaluation and training, one section each."""
    kinds: dict[str, int] = {}
    for r in index:
        kinds[r.get("kind", "sae")] = kinds.get(r.get("kind", "sae"), 0) + 1
    dashboards = any(r.get("dashboard") for r in index)
    lines = _front(repo, layout, index, meta, kinds)
    lines += _loading(repo, layout, index, overrides, kinds, dashboards)
    if circuit_tracer_sets:
        lines += _circuits(repo, circuit_tracer_sets)
    lines += _hooks(index)
    lines += _evaluation(index, meta, set(kinds) != {"sae"}, dashboards)
    lines += _training(meta)
    return "\n".join(lines)


def _front(
    repo: str,
    layout: str,
    index: list[dict[str, Any]],
    meta: dict[str, Any],
    kinds: dict[str, int],
) -> list[str]:
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
        ],
    }
    datasets = [s["id"] for s in meta["data"]["sources"] if s["type"] == "hub"]
    if datasets:
        header["datasets"] = datasets
    sites = sorted({r["site"] for r in index})
    layers = sorted({r["layer"] for r in index})
    widths = sorted({r["width"] for r in index})
    what = " and ".join(f"{n} {KIND_WORDS[k]}" for k, n in sorted(kinds.items()))
    where = (
        "each predicting an MLP's output (after its post-norm) from its input "
        "(after its pre-norm) at layers"
        if set(kinds) != {"sae"}
        else f"on sites {', '.join(sites)} of layers"
    )
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {repo}",
        "",
        f"JumpReLU dictionaries on **{meta['hub_model']}** — {what}, {where} "
        f"{', '.join(map(str, layers))}, widths "
        f"{', '.join(map(str, widths))} — trained with "
        "saesuite (a Snakemake workflow) following the Gemma Scope recipe, in the "
        f"`{layout}` layout. Every SAE takes raw activations (the normalisation "
        "scalar is folded into its weights).",
        "",
    ]
    if meta.get("source_note"):
        lines += [f"> {meta['source_note']}", ""]
    return lines


def _loading(
    repo: str,
    layout: str,
    index: list[dict[str, Any]],
    overrides: dict[str, Any] | None,
    kinds: dict[str, int],
    dashboards: bool,
) -> list[str]:
    first = next((r for r in index if r["canonical"]), index[0])
    weights, keys = WEIGHTS[layout]
    transcoders = set(kinds) != {"sae"}
    return [
        "## Loading",
        "",
        "```python",
        loading_snippet(layout, repo, first["path"], overrides, transcoders),
        "```",
        "",
        f"Or without SAELens: each SAE folder holds `{weights}` with {keys} "
        "(W_enc is [d_in, d_sae], W_dec [d_sae, d_in]):",
        "",
        "```python",
        "pre = x @ W_enc + b_enc",
        "f = pre * (pre > threshold)      # JumpReLU",
        *(
            [
                "y_hat = f @ W_dec + b_dec      # the MLP's output, from its input x",
                *([SKIP_LINES[layout]] if "skip_transcoder" in kinds else []),
            ]
            if transcoders
            else ["x_hat = f @ W_dec + b_dec"]
        ),
        "```",
        "",
        *(
            [
                "Each dictionary's folder holds `dashboard/`: its latents' top "
                "contexts, activation histograms and logit effects on held-out "
                "text; open `dashboard/index.html` from disk (no server, no "
                "network).",
                "",
            ]
            if dashboards
            else []
        ),
        "`pretrained_saes.yaml` in this repo is an entry for SAELens's registry; "
        "`index.json` lists every SAE with its metrics; `release_manifest.json` the "
        "provenance and sha256 of every file.",
        "",
    ]


def _circuits(repo: str, sets: list[str] | tuple[str, ...]) -> list[str]:
    return [
        "## Circuits with circuit-tracer",
        "",
        "These transcoder sets cover every layer; each folder's `config.yaml` is "
        "circuit-tracer's own transcoder-set config: "
        + ", ".join(f"`circuit_tracer/{n}`" for n in sets)
        + ".",
        "",
        "```python",
        circuit_tracer_snippet(repo, sets[0]),
        "```",
        "",
    ]


def _hooks(index: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Hook points",
        "",
        "| layer | site | Hugging Face module | SAELens hook |",
        "|---|---|---|---|",
    ]
    hooks = {}  # one row per layer and hook point: a transcoder's input and output
    for r in index:
        reads = KINDS[r.get("kind", "sae")].reads or r["site"]
        hooks[(r["layer"], reads)] = (r["hf_hook"], r["hook"])
        if r.get("hf_hook_out"):
            hooks[(r["layer"], r["site"])] = (r["hf_hook_out"], r["hook_out"])
    for (layer, site), (hf, tl) in sorted(hooks.items()):
        lines.append(f"| {layer} | {site} | `{hf}` | `{tl}` |")
    return lines


def _evaluation(
    index: list[dict[str, Any]],
    meta: dict[str, Any],
    transcoders: bool,
    dashboards: bool,
) -> list[str]:
    ev = meta["evaluate"]
    lines = [
        "",
        "## Evaluation",
        "",
        f"On {ev['tokens']} held-out tokens ({ev['loss_tokens']} for the loss "
        "metrics), "
        "with BOS/EOS/padding masked. FVU = Σ‖x − x̂‖² / Σ‖x − mean x‖²; delta loss = "
        "next-token cross-entropy with the reconstruction spliced in minus the clean "
        "loss; canonical = the SAE whose L0 is closest to "
        f"{meta['canonical_l0']:g} for its layer, site (or kind) and width."
        + (
            " A transcoder's FVU is of the MLP's output it predicts; delta loss and "
            "loss recovered splice that prediction in for the MLP's output (loss "
            "recovered against zero-ablating the MLP)."
            if transcoders
            else ""
        ),
        "",
        "![Pareto](pareto.png)",
        "",
        "| path | layer | dictionary | width | sparsity | L0 | FVU | delta loss "
        "| loss recovered | canonical |" + (" dashboard |" if dashboards else ""),
        "|---|---:|---|---:|---|---:|---:|---:|---:|:---:|"
        + ("---|" if dashboards else ""),
    ]
    for r in index:
        spars = sparsity_label(r["penalty"], r["value"], "legend")
        link = f" [latents]({r['dashboard']}) |" if r.get("dashboard") else ""
        lines.append(
            f"| `{r['path']}` | {r['layer']} | {_family(r)} | {r['width']} | {spars} "
            f"| {_fmt(r['l0'])} | {_fmt(r['fvu'])} | {_fmt(r.get('delta_loss'))} "
            f"| {_fmt(r.get('loss_recovered'))} | {'✓' if r['canonical'] else ''} |"
            + (link or (" |" if dashboards else ""))
        )
    return lines


def _training(meta: dict[str, Any]) -> list[str]:
    d = meta["data"]
    return [
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
        *_outliers(meta["train"]),
    ]


def _outliers(train: dict[str, Any]) -> list[str]:
    """What a dictionary trained without its outlier tokens asks of its user."""
    multiple = train.get("max_norm_multiple")
    if not multiple or train.get("outlier_mode", "drop") != "drop":
        return []
    return [
        f"Tokens whose activation norm exceeds {_fmt(multiple)}× the median of their "
        "batch (attention sinks, rare tokens besides BOS) were left out of "
        "training and of the evaluation above, as BOS is: apply these dictionaries "
        "with the original activation kept at such tokens. Each evaluation JSON "
        "gives their count (`outlier_tokens`) and the FVU with them counted "
        "(`fvu_with_outliers`).",
        "",
    ]


def pareto_plot(index: list[dict[str, Any]], repo: str, out: str | Path) -> None:
    """Delta loss and FVU against L0, a series per site (or transcoder kind) × width
    × layer: plain and skip-transcoders of one layer are two curves."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in index:
        series.setdefault((_family(r), r["width"], r["layer"]), []).append(r)
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
