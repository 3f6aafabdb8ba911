"""A repo of cross-layer transcoders or of crosscoders (rule `release` for a repo of
spanning dictionaries), whatever `release.layout` says of the per-layer dictionaries
(those layouts have no multi-layer form):

- Gemma Scope 2's layout (`release.clt_layout.write_gemma_scope_2_clt`, one
  `params_layer_<k>.safetensors` per input layer k) in
  `clt/width_{W}_l0_{K}/` for a CLT, read per layer by SAELens's `gemma_3` loader
  and whole by circuit-tracer's `load_gemma_scope_2_clt`, and in
  `crosscoder/layer_{a}_{b}_{c}_{d}_width_{W}_l0_{K}/` for a crosscoder (no client
  reads those yet), each with Gemma Scope 2's `config.json` (its hook points, total
  width, L0, type); W counts every layer's latents, as Gemma Scope 2's names do, and
  K is the measured mean L0 per layer on the held-out split;
- for a CLT also circuit-tracer's own format (`circuit_tracer/clt_width_{W}_l0_{K}/`:
  `W_enc_<i>`, `W_dec_<i>`, config.yaml), read by its `load_clt`;

beside index.json (each dictionary, its layers and metrics), README.md (the card)
and release_manifest.json (provenance and every file's sha256), written last. A CLT
spanning fewer than all of the model's layers has its span in its name
(`clt/layers_4-9_width_…`), and its files k are its k-th layer's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from saesuite.release.build import code_version, source_note, write_manifest
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
    swap_in,
    versions,
    write_json,
)
from saesuite.spec.jobs import ReleaseJob
from saesuite.spec.releases import hub_model_id, width_label
from saesuite.spec.sites import hf_hook_point
from saesuite.spec.sparsity import sparsity_label

GEMMA_SCOPE_2_DIR = "clt"
CIRCUIT_TRACER_DIR = "circuit_tracer"


def clt_name(d: Dictionary, n_layers: int, l0_per_layer: float | None) -> str:
    """Its Gemma Scope 2 folder: clt/width_{16k}_l0_{K} (its span first unless it
    spans every layer) or crosscoder/layer_{a}_{b}_…_width_{16k}_l0_{K}; K its
    measured L0 per layer, or with `l0_per_layer` None (two of a repo measure alike)
    target_{L0*} (or lambda_{λ}); the width all its layers' latents."""
    if l0_per_layer is None:
        sparsity = sparsity_label(d.penalty, d.value, "release")
    else:
        sparsity = f"l0_{round(l0_per_layer)}"
    name = f"width_{width_label(d.width * len(d.layers))}_{sparsity}"
    if d.kind == "crosscoder":
        return f"crosscoder/layer_{'_'.join(map(str, d.layers))}_{name}"
    if d.layers != tuple(range(n_layers)):
        name = f"{d.span}_{name}"
    return f"{GEMMA_SCOPE_2_DIR}/{name}"


def gemma_scope_2_config(d: Dictionary, model_type: str, hub_model: str,
                         n_layers: int) -> dict[str, Any]:  # fmt: skip
    """Gemma Scope 2's config.json of a CLT or crosscoder folder: its hook points
    over its layers ("{all}" for every layer, else "{a,b,…}"), total width, L0
    (its target, else its λ), kind."""
    every = d.layers == tuple(range(n_layers))
    layers = "{all}" if every and d.kind == "clt" else "{" + ",".join(
        map(str, d.layers)) + "}"  # fmt: skip

    def hook(site: str) -> str:
        return hf_hook_point(model_type, 0, site).replace(
            ".0.", f".{layers}.", 1)  # fmt: skip

    return {
        "hf_hook_point_in": hook(d.reads[0].kind),
        "hf_hook_point_out": hook(d.writes[0].kind),
        "width": d.width * len(d.layers),
        "model_name": hub_model,
        "architecture": "jump_relu",
        "l0": d.value,
        "affine_connection": False,
        "type": d.kind,
    }


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
        hub_model = hub_model_id(job.model_cfg)
        for m, ev, gs2 in zip(job.members, evals, names, strict=True):
            d = m.dictionary
            clt = load_clt(m.sae_dir)
            write_gemma_scope_2_clt(clt, tmp / gs2)
            cfg = gemma_scope_2_config(d, info["model_type"], hub_model,
                                       info["n_layers"])  # fmt: skip
            write_json(tmp / gs2 / "config.json", cfg)
            ct = None
            if d.kind == "clt":  # circuit-tracer reads CLTs, not crosscoders
                ct = f"{CIRCUIT_TRACER_DIR}/clt_{gs2.split('/', 1)[1]}"
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
            "kind": job.members[0].dictionary.kind,
            "model": job.model,
            "base_model": hub_model,
            "n_layers": info["n_layers"],
            "source_note": source_note(job.model_cfg),
        }
        write_json(tmp / "index.json", {**meta, "dictionaries": rows})
        with atomic_open(tmp / "README.md") as f:
            f.write(clt_card(meta, rows, job.license))
        manifest = write_manifest(tmp, {
            "repo_id": job.repo,
            "layout": "gemma-scope-2-clt",
            "config_hash": config_hash,
            "code": code_version(),
            "versions": versions(("sae-lens", "huggingface_hub")),
            "data": job.data,
            "seed": job.seed,
        })  # fmt: skip
        swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


WHAT = {
    "clt": (
        "Cross-layer transcoders (CLTs) of {model}: layer i's latents read layer i's "
        "MLP input (after `pre_feedforward_layernorm`) and predict the MLP outputs "
        "(after `post_feedforward_layernorm`) of every layer j ≥ i, "
        "ŷ_j = Σ_{{i≤j}} W_dec,i→j f_i + b_dec,j, as Gemma Scope 2's CLTs."
    ),
    "crosscoder": (
        "Weakly causal crosscoders of {model}: the latents of a crosscoder's k-th "
        "layer read that layer's residual stream and reconstruct the residual "
        "streams of its k-th and later layers, x̂_j = Σ_{{k≤j}} W_dec,k→j f_k + "
        "b_dec,j, as Gemma Scope 2's crosscoders (each file params_layer_k holds "
        "layer k's encoder and its decoder into every layer, the earlier ones zero)."
    ),
}


def _loading(first: dict[str, Any], repo: str) -> list[str]:
    if first["kind"] == "crosscoder":
        return [
            "```python",
            "# no client library reads Gemma Scope 2's crosscoders yet: the files",
            "from safetensors.torch import load_file",
            f'k0 = load_file("<local copy of {repo}>/{first["path"]}/'
            f'{GEMMA_SCOPE_2_FILE.format(i=0)}")',
            "# w_enc (d, width), b_enc, threshold, b_dec (layer 0's), w_dec (width,",
            "# layers, d): f = x·w_enc + b_enc where above threshold, else 0",
            "```",
        ]
    return [
        "Each CLT is here twice: Gemma Scope 2's layout under `clt/` and "
        "circuit-tracer's under `circuit_tracer/`.",
        "",
        "```python",
        "# circuit-tracer: the whole CLT as a replacement model",
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


def clt_card(meta: dict[str, Any], rows: list[dict[str, Any]], license: str) -> str:
    """The README.md of a repo of CLTs or crosscoders: what it holds, how to load
    it, its numbers."""
    repo = meta["repo_id"]
    first = rows[0]
    tag = "cross-layer-transcoder" if first["kind"] == "clt" else "crosscoder"
    lines = [
        "---",
        f"license: {license}",
        f"base_model: {meta['base_model']}",
        "library_name: saelens",
        f"tags: [sparse-autoencoder, {tag}, interpretability]",
        "---",
        "",
        f"# {repo}",
        "",
        WHAT[first["kind"]].format(model=meta["base_model"])
        + " Weights are in raw activation units (no normalisation to apply).",
    ]
    if meta["source_note"]:
        lines += ["", meta["source_note"]]
    lines += ["", "## Loading", "", *_loading(first, repo)]
    if first["max_norm_multiple"]:
        lines += [
            "",
            "Trained without the tokens whose input or output at any layer has a "
            f"norm above {first['max_norm_multiple']}× that site's median over its "
            "batch (attention sinks; BOS among them): keep their original "
            "activations when splicing.",
        ]
    lines += [
        "",
        "## Evaluation",
        "",
        "On the held-out split. *All layers*: every site it writes replaced at "
        "once, each layer's encoder reading the replaced model's own activation; "
        "loss recovered against zero-ablating those sites at once. L0: active "
        "latents per token over all layers.",
        "",
        "| dictionary | layers | width per layer | target L0 | L0 | L0 per layer | FVU "
        "| delta loss "
        "| KL | loss recovered |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        a, b = r["layers"][0], r["layers"][-1]
        every = r["layers"] == list(range(a, b + 1))
        span = f"{a}–{b}" if every else ", ".join(map(str, r["layers"]))
        lines.append(
            f"| `{r['path']}` | {span} | {r['width']} | {_num(r['value'])} | "
            f"{_num(m['l0'])} | {_num(m['l0_per_layer'])} | {_num(m['fvu'])} | "
            f"{_num(m.get('delta_loss'))} | {_num(m.get('kl'))} | "
            f"{_num(m.get('loss_recovered'))} |"
        )
    lines += [
        "",
        "Per layer (open loop: clean inputs; *alone*: that layer's site alone "
        "replaced by the prediction):",
        "",
        "| dictionary | layer | L0 | FVU | delta loss alone | KL alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for layer, b in zip(r["layers"], r["by_layer"], strict=True):
            lines.append(
                f"| `{r['path']}` | {layer} | {_num(b['l0'])} | {_num(b['fvu'])} | "
                f"{_num(b['delta_loss_alone'])} | {_num(b['kl_alone'])} |"
            )
    return "\n".join(lines) + "\n"
