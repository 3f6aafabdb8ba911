"""What a model `source` names, and whether its chat prompts can be formatted from
the files at hand (no download, no torch): the checks `check_config` runs on models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from saesuite.spec.known_models import known_name

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def source_kind(src: str) -> str:
    """What a model `source` names: "embedded", "gguf" (an existing .gguf file),
    "local" (an existing directory) or "hub" (an org/name id); FileNotFoundError
    naming the source otherwise. Relative paths are from the working directory."""
    if src == "embedded":
        return "embedded"
    if src.endswith(".gguf"):
        if not Path(src).is_file():
            raise FileNotFoundError(f"GGUF file {src} does not exist")
        return "gguf"
    if Path(src).is_dir():
        return "local"
    if src.startswith((".", "/", "~")) or not HUB_ID.fullmatch(src):
        raise FileNotFoundError(
            f"model source '{src}' is neither an existing directory, a .gguf file, "
            "'embedded', nor a Hub id of the form org/name"
        )
    return "hub"


TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def has_chat_template(model_cfg: dict[str, Any]) -> bool | None:
    """Whether the model's chat prompts can be formatted, from the files at hand (no
    download): True with `chat_template` set, for a Gemma model (Gemma's turn format
    is built in: saesuite.data.models.chat_template) or a tokenizer that has one;
    False for a local or cached model whose tokenizer has none; None when that is
    not known offline (a Hub model not in the local cache, a GGUF file)."""
    if model_cfg.get("chat_template"):
        return True
    src = model_cfg["source"]
    if (known_name(src) or "").startswith("gemma"):
        return True
    kind = source_kind(src)
    if kind == "local":
        files = {
            n: Path(src) / n
            for n in ("config.json", "tokenizer_config.json", *TEMPLATE_FILES)
        }
    elif kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        files = {}
        for n in ("config.json", "tokenizer_config.json", *TEMPLATE_FILES):
            hit = try_to_load_from_cache(src, n, revision=model_cfg.get("revision"))
            if isinstance(hit, str):
                files[n] = Path(hit)
        if "tokenizer_config.json" not in files:
            return None
    else:
        return None
    present = {n: f for n, f in files.items() if f.is_file()}
    if "config.json" in present:
        hf = json.loads(present["config.json"].read_text())
        if str(hf.get("model_type", "")).startswith("gemma"):
            return True
    if any(n in present for n in TEMPLATE_FILES):
        return True
    tok = present.get("tokenizer_config.json")
    return tok is not None and bool(json.loads(tok.read_text()).get("chat_template"))
