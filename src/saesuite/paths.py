"""Where every artefact of a run lives, relative to `output_root`. The rules
(rules/common.smk), the CLI and the tests all take paths from here."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from saesuite.config import model_sites, seqs_per_chunk

CHARS_PER_TOKEN_BUDGET = 10  # corpus text kept per needed token: ~2.5× typical BPE


def corpus(root: str) -> dict[str, str]:
    return {
        "jsonl": f"{root}/corpus/corpus.jsonl",
        "info": f"{root}/corpus/corpus.json",
    }


def model_info(root: str, model: str) -> str:
    return f"{root}/{model}/model.json"


def tokens(root: str, model: str) -> dict[str, str]:
    base = f"{root}/{model}/tokens"
    return {
        "train": f"{base}/train.safetensors",
        "eval": f"{base}/eval.safetensors",
        "info": f"{base}/tokens.json",
    }


def chunk(root: str, model: str, index: int | str) -> dict[str, str]:
    idx = index if isinstance(index, str) else f"{index:05d}"
    base = f"{root}/{model}/activations/chunk_{idx}"
    return {"data": f"{base}.safetensors", "info": f"{base}.json"}


def manifest(root: str, model: str) -> str:
    return f"{root}/{model}/activations/manifest.json"


def normalization(root: str, model: str) -> str:
    return f"{root}/{model}/activations/normalization.json"


def activation_identity(config: dict[str, Any], model: str) -> dict[str, Any]:
    """What determines a model's activation cache; its hash is stored in every chunk."""
    ident = {
        "model": model,
        "model_config": config["models"][model],
        "data": config["data"],
        "seed": config["seed"],
        "dtype": config["activations"]["dtype"],
        "seqs_per_chunk": seqs_per_chunk(config),
        "sites": [s.name for s in model_sites(config, model)],
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return {**ident, "hash": hashlib.sha256(blob).hexdigest()[:16]}


def corpus_chars(config: dict[str, Any]) -> int:
    data = config["data"]
    return (data["train_tokens"] + data["eval_tokens"]) * CHARS_PER_TOKEN_BUDGET
