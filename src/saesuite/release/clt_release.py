"""A repo of cross-layer transcoders (rule `release` for a CLT repo): every CLT in
both layouts its clients read (`release.clt_layout`), whatever `release.layout` says
of the per-layer dictionaries (those layouts have no CLT form):

- `clt/width_{16k}_l0_{K}/params_layer_<i>.safetensors`: Gemma Scope 2's layout,
  read per layer by SAELens's `gemma_3` loader and whole by circuit-tracer's
  `load_gemma_scope_2_clt`; K is the CLT's mean L0 per layer on the held-out split;
- `circuit_tracer/clt_width_{16k}_l0_{K}/`: circuit-tracer's own CLT format
  (`W_enc_<i>`, `W_dec_<i>`, config.yaml), read by its `load_clt`;

beside index.json (each CLT, its layers and metrics), README.md (the card) and
release_manifest.json (provenance and every file's sha256), written last. A CLT
spanning fewer than all of the model's layers has its span in its name
(`clt/layers_4-9_width_…`), and its layer i files are its i-th layer's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from saesuite.release.build import code_version, source_note
from saesuite.release.clt_layout import (
    GEMMA_SCOPE_2_FILE,
    write_circuit_tracer_clt,
    write_gemma_scope_2_clt,
)
from saesuite.sae.clt_train import load_clt
from saesuite.spec import paths
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import (
    atomic_open,
    new_dir_beside,
    read_json,
    sha256_file,
    swap_in,
    versions,
    write_json,
)
from saesuite.spec.jobs import ReleaseJob
from saesuite.spec.releases import hub_model_id, width_label
from saesuite.spec.sparsity import sparsity_label

GEMMA_SCOPE_2_DIR = "clt"
CIRCUIT_TRACER_DIR = "circuit_tracer"


def clt_name(d: Dictionary, n_layers: int, l0_per_layer: float | None) -> str:
    """width_{16k}_l0_{K} (K its measured L0 per layer), or with `l0_per_layer`
    None (two CLTs of a repo measure alike) width_{16k}_target_{L0*} (or
    _lambda_{λ}); its span first unless it spans every layer."""
    if l0_per_layer is None:
        sparsity = sparsity_label(d.penalty, d.value, "release")
    else:
        sparsity = f"l0_{round(l0_per_layer)}"
    name = f"width_{width_label(d.width)}_{sparsity}"
    return name if d.layers == tuple(range(n_layers)) else f"{d.span}_{name}"


def make_clt_release(
    job: ReleaseJob,
    *,
    model_info: str | Path,
    config_hash: str,
    out_dir: str | Path,
) -> dict[str, Any]:
    """The whole folder; it appears at `out_dir` complete or not at all."""
    info = read_json(model_info)
    out_dir = Path(out_dir)
    tmp = new_dir_beside(out_dir)
    try:
        rows = []
        evals = [read_json(m.eval)["metrics"] for m in job.members]
        names = [
            clt_name(m.dictionary, info["n_layers"], ev["l0_per_layer"])
            for m, ev in zip(job.members, evals, strict=True)
        ]
        if len(set(names)) < len(names):  # two measured L0s round alike
            names = [
                clt_name(m.dictionary, info["n_layers"], None) for m in job.members
            ]
        for m, ev, name in zip(job.members, evals, names, strict=True):
            d = m.dictionary
            clt = load_clt(m.sae_dir)
            gs2 = f"{GEMMA_SCOPE_2_DIR}/{name}"
            ct = f"{CIRCUIT_TRACER_DIR}/clt_{name}"
            write_gemma_scope_2_clt(clt, tmp / gs2)
            write_circuit_tracer_clt(clt, tmp / ct, repo_id=job.repo,
                                     scan=f"{job.repo}/{ct}")  # fmt: skip
            trained = read_json(paths.sae_file(m.sae_dir, "info"))
            rows.append(
                {
                    "path": gs2,
                    "circuit_tracer": ct,
                    "kind": d.kind,
                    "layers": list(d.layers),
                    "width": d.width,
                    "penalty": d.penalty,
                    "value": d.value,
                    "train_tokens": d.tokens,
                    "trained_as": d.path,
                    "max_norm_multiple": trained["train"]["max_norm_multiple"],
                    "metrics": {k: v for k, v in ev.items() if k != "by_layer"},
                    "by_layer": ev["by_layer"],
                }
            )
        meta = {
            "repo_id": job.repo,
            "model": job.model,
            "base_model": hub_model_id(job.model_cfg),
            "n_layers": info["n_layers"],
            "source_note": source_note(job.model_cfg),
        }
        write_json(tmp / "index.json", {**meta, "clts": rows})
        with atomic_open(tmp / "README.md") as f:
            f.write(clt_card(meta, rows, job.license))
        files = {
            str(f.relative_to(tmp)): {
                "sha256": sha256_file(f),
                "bytes": f.stat().st_size,
            }
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        manifest = {
            "repo_id": job.repo,
            "layout": "gemma-scope-2-clt",
            "config_hash": config_hash,
            "code": code_version(),
            "versions": versions(("sae-lens", "huggingface_hub")),
            "data": job.data,
            "seed": job.seed,
            "files": files,
        }
        write_json(tmp / paths.RELEASE_MANIFEST, manifest)
        swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def clt_card(meta: dict[str, Any], rows: list[dict[str, Any]], license: str) -> str:
    """The README.md of a CLT repo: what it holds, how to load it, its numbers."""
    repo = meta["repo_id"]
    first = rows[0]
    lines = [
        "---",
        f"license: {license}",
        f"base_model: {meta['base_model']}",
        "library_name: saelens",
        "tags: [sparse-autoencoder, cross-layer-transcoder, interpretability]",
        "---",
        "",
        f"# {repo}",
        "",
        f"Cross-layer transcoders (CLTs) of {meta['base_model']}: layer i's latents "
        "read layer i's MLP input (after `pre_feedforward_layernorm`) and predict the "
        "MLP outputs (after `post_feedforward_layernorm`) of every layer j ≥ i, "
        "ŷ_j = Σ_{i≤j} W_dec,i→j f_i + b_dec,j, as Gemma Scope 2's CLTs. Weights are "
        "in raw activation units (no normalisation to apply).",
    ]
    if meta["source_note"]:
        lines += ["", meta["source_note"]]
    lines += [
        "",
        "## Loading",
        "",
        "Each CLT is here twice: Gemma Scope 2's layout under `clt/` and "
        "circuit-tracer's under `circuit_tracer/`.",
        "",
        "```python",
        "# circuit-tracer: the whole CLT as a replacement model",
        "from circuit_tracer import ReplacementModel",
        "from circuit_tracer.transcoder.cross_layer_transcoder import load_clt",
        f'clt = load_clt("<local copy of {repo}>/{first["circuit_tracer"]}",',
        '               feature_input_hook="mlp.hook_in",',
        '               feature_output_hook="hook_mlp_out")',
        "# SAELens: layer i alone, as a transcoder (its decoder summed over the",
        "# layers it writes: for its latents, not for reconstruction)",
        "from sae_lens import SAE",
        "from sae_lens.loading.pretrained_sae_loaders import "
        "gemma_3_sae_huggingface_loader",
        f'sae = SAE.from_pretrained(release="{repo}",',
        f'                          sae_id="{first["path"]}/'
        f'{GEMMA_SCOPE_2_FILE.format(i=0).removesuffix(".safetensors")}",',
        "                          converter=gemma_3_sae_huggingface_loader)",
        "```",
    ]
    if first["max_norm_multiple"]:
        lines += [
            "",
            "Trained without the tokens whose MLP input or output at any layer has "
            f"a norm above {first['max_norm_multiple']}× that site's median over "
            "its batch (attention sinks; BOS among them): keep their original MLP "
            "outputs when splicing.",
        ]
    lines += [
        "",
        "## Evaluation",
        "",
        "On the held-out split. *All layers*: every MLP replaced at once, each "
        "layer's encoder reading the replaced model's own MLP input; loss recovered "
        "against zero-ablating every MLP the CLT spans. L0: active latents per token "
        "over all layers.",
        "",
        "| CLT | layers | width | target L0 | L0 | L0 per layer | FVU | delta loss "
        "| KL | loss recovered |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        span = f"{r['layers'][0]}–{r['layers'][-1]}"
        lines.append(
            f"| `{r['path']}` | {span} | {r['width']} | {_num(r['value'])} | "
            f"{_num(m['l0'])} | {_num(m['l0_per_layer'])} | {_num(m['fvu'])} | "
            f"{_num(m.get('delta_loss'))} | {_num(m.get('kl'))} | "
            f"{_num(m.get('loss_recovered'))} |"
        )
    lines += [
        "",
        "Per layer (open loop: clean inputs; *alone*: that layer's MLP output alone "
        "replaced by the CLT's prediction):",
        "",
        "| CLT | layer | L0 | FVU | delta loss alone | KL alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for layer, b in zip(r["layers"], r["by_layer"], strict=True):
            lines.append(
                f"| `{r['path']}` | {layer} | {_num(b['l0'])} | {_num(b['fvu'])} | "
                f"{_num(b['delta_loss_alone'])} | {_num(b['kl_alone'])} |"
            )
    return "\n".join(lines) + "\n"
