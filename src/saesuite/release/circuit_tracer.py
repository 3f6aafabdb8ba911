"""A release's transcoders in circuit-tracer (the client researchers compute
attribution graphs with), and the one home of the workarounds its 0.5 release needs.

Run in circuit-tracer's own environment (it pins transformers<=4.57.3 and
huggingface-hub<1.0, unlike saesuite): envs/circuit-tracer.txt, docs/loading.md.
This module imports nothing of saesuite's, so that environment needs
only this file on its path (`pip install --no-deps saesuite`, or PYTHONPATH=src).

What it works around, each seen with circuit-tracer 0.5.0 (2026-12-01):
1. circuit-tracer picks its Gemma Scope readers only when the repo id contains
   "gemma-scope-2" / "gemma-scope": `transcoder_set` picks by the release's layout
   (index.json) instead, and reads a local folder (a `snapshot_download` of the repo
   is one), so nothing downloads.
2. Its loaders want a `torch.device`, not a string.
3. nnsight 0.8 breaks its import (`nnsight.intervention.tracing`): pin nnsight 0.7.0.
4. Its nnsight backend builds token vectors from the raw embedding matrix, without
   Gemma's √d_model embedding scale, so every token node's edges come out
   √d_model times too small (25.3× for gemma-3-270m): `replacement_model` scales them
   as the model's own embedding module does.
5. That backend needs `architectures` in the model's config.json (saesuite's GGUF
   conversion writes it; other folders are checked here, with a clear error).
6. transformers 5 (saesuite's) saves tokenizers as "TokenizersBackend", a class
   transformers 4.57 (circuit-tracer's) does not know: `client_model_dir` gives it a
   view of the model folder (links to its files) naming PreTrainedTokenizerFast.
Its TransformerLens backend is not used: it gives every layer the last layer's rotary
tables, so Gemma 3's local-attention layers get the wrong base and the replacement
model's logits are not the model's.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

SETS_DIR = "circuit_tracer"  # release.build.CIRCUIT_TRACER_DIR
READERS = {"gemma-scope-2": "gemma-scope-2", "gemma-scope": "gemma-scope"}


def set_config(release: str | Path, name: str) -> dict[str, Any]:
    """The set's config.yaml, its hf:// transcoder paths mapped into `release`."""
    release = Path(release)
    path = release / SETS_DIR / name / "config.yaml"
    if not path.is_file():
        sets = sorted(p.name for p in (release / SETS_DIR).glob("*/config.yaml"))
        raise FileNotFoundError(
            f"{path}: no such transcoder set in {release} (it has: "
            f"{', '.join(p.split('/')[0] for p in sets) or 'none'})"
        )
    cfg = yaml.safe_load(path.read_text())
    index = json.loads((release / "index.json").read_text())
    prefix = f"hf://{index['repo_id']}/"
    local = []
    for uri in cfg["transcoders"]:
        if not uri.startswith(prefix):
            raise ValueError(f"{path}: {uri} is not a file of {index['repo_id']}")
        local.append(str(release / uri.removeprefix(prefix)))
    return {**cfg, "transcoders": local, "layout": index["layout"]}


def transcoder_set(
    release: str | Path,
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """circuit-tracer's TranscoderSet of the release's set `name` (a folder under
    circuit_tracer/), read by circuit-tracer's own Gemma Scope readers."""
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    cfg = set_config(release, name)
    if cfg["layout"] not in READERS:
        raise ValueError(
            f"{release}: layout '{cfg['layout']}' has no circuit-tracer reader "
            f"(one of {sorted(READERS)})"
        )
    return load_transcoder_set(
        dict(enumerate(cfg["transcoders"])),
        scan=cfg["scan"],
        feature_input_hook=cfg["feature_input_hook"],
        feature_output_hook=cfg["feature_output_hook"],
        device=torch.device(device),
        dtype=dtype,
        special_load_fn=READERS[cfg["layout"]],
        lazy_encoder=False,
        lazy_decoder=False,
    )


def _embedding_scale(model: Any) -> float:
    """What the model's embedding module multiplies looked-up rows by (Gemma's
    √d_model; 1 for Llama), measured on the module itself, on its longest row (the
    padding row may be zero)."""
    embed = model._model.get_input_embeddings()
    with torch.no_grad():
        ids = embed.weight.norm(dim=-1).argmax().reshape(1)
        return float((embed(ids).norm() / embed.weight[ids].norm()).item())


def client_model_dir(model_dir: str | Path) -> Path:
    """`model_dir` as transformers 4.57 reads it: the folder itself, or a temporary
    view of it (links to its files, removed at exit) whose tokenizer_config.json
    names PreTrainedTokenizerFast instead of transformers 5's TokenizersBackend."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if not config.get("architectures"):
        raise ValueError(
            f"{model_dir / 'config.json'}: no 'architectures' (circuit-tracer's "
            "nnsight backend picks its mapping by it): add e.g. "
            '"architectures": ["Gemma3ForCausalLM"]'
        )
    tok_path = model_dir / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text()) if tok_path.is_file() else {}
    if tok.get("tokenizer_class") != "TokenizersBackend":
        return model_dir
    view = Path(tempfile.mkdtemp(prefix="saesuite-circuit-tracer-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for f in model_dir.iterdir():
        if f.name != tok_path.name:
            (view / f.name).symlink_to(f.resolve())
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (view / tok_path.name).write_text(json.dumps(tok))
    return view


def cross_layer_transcoder(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """circuit-tracer's CrossLayerTranscoder of a folder in its own CLT format
    (saesuite.release.clt_layout), read by its own `load_clt` with the hooks its
    config.yaml names."""
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    folder = Path(folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    if cfg.get("model_kind") != "cross_layer_transcoder":
        raise ValueError(
            f"{folder / 'config.yaml'}: model_kind {cfg.get('model_kind')!r}, "
            "not 'cross_layer_transcoder'"
        )
    return load_clt(
        str(folder),
        feature_input_hook=cfg["feature_input_hook"],
        feature_output_hook=cfg["feature_output_hook"],
        scan=cfg["scan"],
        device=torch.device(device),
        dtype=dtype,
        lazy_decoder=False,
    )


def gemma_scope_2_clt(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """circuit-tracer's CrossLayerTranscoder of a folder in Gemma Scope 2's CLT
    layout (params_layer_<i>.safetensors), read by its own `load_gemma_scope_2_clt`
    at the MLP's input and output (where SAELens reads these folders; circuit-tracer's
    own default input is hook_resid_mid: docs/loading.md).

    Its 0.5 loader reads layers range(max(paths)), one fewer than it is given, and
    then fails on the decoders' shapes: the paths it gets carry one key past the last
    layer (never read), so that it reads every layer."""
    from circuit_tracer.transcoder.cross_layer_transcoder import (
        load_gemma_scope_2_clt,
    )

    files = sorted(Path(folder).glob("params_layer_*.safetensors"))
    paths = {int(f.stem.removeprefix("params_layer_")): str(f) for f in files}
    if sorted(paths) != list(range(len(paths))) or not paths:
        raise FileNotFoundError(
            f"{folder}: want params_layer_0..N.safetensors, found "
            f"{sorted(paths) or 'none'}"
        )
    paths[len(paths)] = paths[0]  # the key past the last layer; never read
    return load_gemma_scope_2_clt(
        paths,
        feature_input_hook="mlp.hook_in",
        feature_output_hook="hook_mlp_out",
        device=torch.device(device),
        dtype=dtype,
    )


def clt(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """circuit-tracer's CrossLayerTranscoder of a CLT folder in either layout:
    Gemma Scope 2's (`gemma_scope_2_clt`) or circuit-tracer's own
    (`cross_layer_transcoder`)."""
    gs2 = any(Path(folder).glob("params_layer_*.safetensors"))
    read = gemma_scope_2_clt if gs2 else cross_layer_transcoder
    return read(folder, device=device, dtype=dtype)


def replacement_model(
    release: str | Path,
    name: str | None,
    *,
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """circuit-tracer's replacement model of the local model at `model_dir` with the
    release's transcoder set `name` (nnsight backend, token vectors scaled); with
    `name` None, `release` is a CLT folder in either layout (`clt`)."""
    from circuit_tracer import ReplacementModel

    if name is None:
        transcoders = clt(release, device=device, dtype=dtype)
    else:
        transcoders = transcoder_set(release, name, device=device, dtype=dtype)
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(client_model_dir(model_dir)),
        transcoders,
        backend="nnsight",
        device=torch.device(device),
        dtype=dtype,
    )
    scale = _embedding_scale(model)
    setup = model.setup_attribution

    def setup_attribution(inputs: Any) -> Any:
        ctx = setup(inputs)
        ctx.token_vectors = ctx.token_vectors * scale
        return ctx

    model.setup_attribution = setup_attribution
    return model
