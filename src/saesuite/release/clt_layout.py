"""A cross-layer transcoder in the two layouts its clients read.

Gemma Scope 2's (`write_gemma_scope_2_clt`), as google/gemma-scope-2-*/clt/<name>/
holds it: one `params_layer_<i>.safetensors` per encoder layer with w_enc (d_in,
width), b_enc, threshold, b_dec (layer i's output bias) and w_dec (width, n_layers,
d_out), its blocks for the layers before i zero. SAELens's `gemma_3` loader reads one
such file as a transcoder of layer i (its decoder summed over the output layers:
for latent activations, not reconstruction); circuit-tracer's `load_gemma_scope_2_clt`
stacks them. Both read layer i's MLP input (`pre_feedforward_layernorm`'s output):
SAELens by the folder name (hook_mlp_in), circuit-tracer by the `feature_input_hook`
its configs for these repos set (mlp.hook_in), over its own default hook_resid_mid.

circuit-tracer's own CLT format (its `load_clt`, and
`to_safetensors` writes the same): per encoder layer i, `W_enc_i.safetensors` with
W_enc_i (width, d_model), b_enc_i, b_dec_i (layer i's output bias) and threshold_i,
and `W_dec_i.safetensors` with W_dec_i (width, n_layers − i, d_model), block j − i
the write into layer j; `config.yaml` names the kind and the hooks it reads and
writes (`model_kind: cross_layer_transcoder`, circuit-tracer's `load_transcoder_from_
hub` keys). The tensors are in raw units: fold the training scalars first
(`CrossLayerTranscoder.fold_normalization`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors.torch import save

from saesuite.spec.io import atomic_open
from saesuite.spec.sites import CIRCUIT_TRACER_HOOKS

if TYPE_CHECKING:
    from saesuite.sae.clt import CrossLayerTranscoder

GEMMA_SCOPE_2_FILE = "params_layer_{i}.safetensors"
ENCODER_FILE = "W_enc_{i}.safetensors"
DECODER_FILE = "W_dec_{i}.safetensors"
CONFIG_FILE = "config.yaml"
INPUT_HOOK, OUTPUT_HOOK = CIRCUIT_TRACER_HOOKS  # the MLP's input and output


def _write_layers(
    clt: CrossLayerTranscoder,
    folder: str | Path,
    files: Callable[[int, torch.Tensor], dict[str, dict[str, torch.Tensor]]],
) -> list[Path]:
    """Write each encoder layer i's `files(i, its decoder blocks (width, L − i,
    d_out))` ({file name: tensors}) under `folder`, atomically; the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    L, w, d = clt.n_layers, clt.width, clt.d_out
    written = []
    for i in range(L):
        blocks = clt.W_dec[i].detach().view(w, L - i, d)
        for name, tensors in files(i, blocks).items():
            path = folder / name
            with atomic_open(path, "wb") as f:
                f.write(save({k: v.contiguous() for k, v in tensors.items()}))
            written.append(path)
    return written


def write_circuit_tracer_clt(
    clt: CrossLayerTranscoder,
    folder: str | Path,
    *,
    repo_id: str,
    scan: str,
    feature_input_hook: str = INPUT_HOOK,
    feature_output_hook: str = OUTPUT_HOOK,
) -> list[Path]:
    """Write `clt` (raw units) under `folder` in circuit-tracer's CLT format; the
    files written, each atomically."""

    def files(i: int, blocks: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        enc = {
            f"W_enc_{i}": clt.W_enc[i].detach().T,
            f"b_enc_{i}": clt.b_enc[i].detach(),
            f"b_dec_{i}": clt.b_dec[i].detach(),
            f"threshold_{i}": clt.threshold[i].detach(),
        }
        return {
            ENCODER_FILE.format(i=i): enc,
            DECODER_FILE.format(i=i): {f"W_dec_{i}": blocks},
        }

    written = _write_layers(clt, folder, files)
    config = {
        "model_kind": "cross_layer_transcoder",
        "repo_id": repo_id,
        "scan": scan,
        "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook,
    }
    path = Path(folder) / CONFIG_FILE
    with atomic_open(path) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return [*written, path]


def write_gemma_scope_2_clt(
    clt: CrossLayerTranscoder, folder: str | Path
) -> list[Path]:
    """Write `clt` (raw units) under `folder` in Gemma Scope 2's CLT layout; the
    files written, each atomically."""
    L = clt.n_layers

    def files(i: int, blocks: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        w, _, d = blocks.shape
        w_dec = torch.zeros(w, L, d, dtype=blocks.dtype)
        w_dec[:, i:] = blocks  # the layers before i: zero
        tensors = {
            "w_enc": clt.W_enc[i].detach(),
            "b_enc": clt.b_enc[i].detach(),
            "threshold": clt.threshold[i].detach(),
            "b_dec": clt.b_dec[i].detach(),
            "w_dec": w_dec,
        }
        return {GEMMA_SCOPE_2_FILE.format(i=i): tensors}

    return _write_layers(clt, folder, files)
