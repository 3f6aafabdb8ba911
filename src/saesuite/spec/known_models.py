"""Shapes of well-known models, so a suite can be planned without downloading them.

Used by `saesuite.spec.config` (to expand `layers: all` offline) and by the planner.
Values are from the models' published `config.json` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_mlp: int
    n_params: float  # total parameters, for FLOP estimates
    vocab: int  # the unembedding's rows (the dashboards' logit effects)

    def site_width(self, kind: str) -> int:
        return site_width(kind, self.d_model, self.n_heads, self.head_dim)


def site_width(kind: str, d_model: int, n_heads: int, head_dim: int | None) -> int:
    """d_in of a dictionary at this kind of site: heads × head_dim for `att` (the
    concatenated head outputs; head_dim defaults to d_model / heads, as in configs
    that leave it out), d_model for the others."""
    if kind != "att":
        return d_model
    return n_heads * (head_dim or d_model // n_heads)


def text_site_width(text_config: Any, kind: str) -> int:
    """The same from a Hugging Face text config (any object with its attributes)."""
    return site_width(
        kind,
        text_config.hidden_size,
        text_config.num_attention_heads,
        getattr(text_config, "head_dim", None),
    )


KNOWN: dict[str, ModelShape] = {
    "gemma-2-2b": ModelShape(26, 2304, 8, 256, 9216, 2.61e9, 256000),
    "gemma-2-9b": ModelShape(42, 3584, 16, 256, 14336, 9.24e9, 256000),
    "gemma-2-27b": ModelShape(46, 4608, 32, 128, 36864, 27.2e9, 256000),
    "gemma-3-270m": ModelShape(18, 640, 4, 256, 2048, 0.268e9, 262144),
    "gemma-3-1b": ModelShape(26, 1152, 4, 256, 6912, 1.0e9, 262144),
    "gemma-3-4b": ModelShape(34, 2560, 8, 256, 10240, 3.88e9, 262208),
    "gemma-3-12b": ModelShape(48, 3840, 16, 256, 15360, 11.8e9, 262208),
    "gemma-3-27b": ModelShape(62, 5376, 32, 128, 21504, 27.0e9, 262208),
}

EMBEDDED_NAME = "gemma-3-270m"


def known_name(source: str) -> str | None:
    """The KNOWN key of `source` ("embedded", a Hub id, a path), if it is known."""
    if source == "embedded":
        return EMBEDDED_NAME
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    # Longest key first so "gemma-2-27b" is not taken for "gemma-2-2b".
    for key in sorted(KNOWN, key=len, reverse=True):
        if name == key or name.startswith(key + "-") or name.startswith(key + "_"):
            return key
    return None


def known_shape(source: str) -> ModelShape | None:
    """The shape of `source` ("embedded", a Hub id, a path) if it is a known model."""
    key = known_name(source)
    return None if key is None else KNOWN[key]
