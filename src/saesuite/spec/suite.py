"""The suite's expansion (no torch): a validated config → every Dictionary of the
suite, the layers and sites each model needs, and the data's sizes in sequences and
chunks. Planning, the paths and the jobs read the suite from here.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

from saesuite.spec.dictionary import KINDS, Dictionary
from saesuite.spec.errors import ConfigError
from saesuite.spec.known_models import known_shape
from saesuite.spec.sites import Site


def has_dashboards(config: dict[str, Any], layer: int) -> bool:
    """Whether the dictionaries at `layer` get dashboards (dashboards.enabled and
    dashboards.layers)."""
    d = config["dashboards"]
    return d["enabled"] and (d["layers"] is None or layer in d["layers"])


def n_layers(config: dict[str, Any], model_key: str) -> int | None:
    """Decoder layer count: from the config, the known-model table, or config.json."""
    m = config["models"][model_key]
    if m["n_layers"]:
        return m["n_layers"]
    shape = known_shape(m["source"])
    if shape:
        return shape.n_layers
    local = Path(m["source"])
    cfg_json = local / "config.json" if local.is_dir() else None
    if cfg_json and cfg_json.is_file():
        cfg = json.loads(cfg_json.read_text())
        cfg = cfg.get("text_config", cfg)
        return int(cfg["num_hidden_layers"])
    return None


def known_site_width(config: dict[str, Any], model_key: str, kind: str) -> int:
    """d_in of a site from the known-model table (4096 if the model is unknown: only
    used for resource estimates)."""
    shape = known_shape(config["models"][model_key]["source"])
    if shape is None:
        return 4096
    return shape.site_width(kind)


def group_layers(config: dict[str, Any], gi: int, model_key: str) -> list[int]:
    spec = config["suite"][gi]["layers"]
    if spec == "all":
        n = n_layers(config, model_key)
        if n is None:
            raise ConfigError(
                f"config key 'suite.{gi}.layers' is 'all' but the layer count of model "
                f"'{model_key}' is unknown offline: set 'models.{model_key}.n_layers'"
            )
        return list(range(n))
    if isinstance(spec, dict):
        return list(range(spec["start"], spec["stop"], spec.get("step", 1)))
    return sorted(spec)


def group_models(config: dict[str, Any], gi: int) -> list[str]:
    return config["suite"][gi]["models"] or list(config["models"])


def model_layers(config: dict[str, Any], model_key: str) -> list[int]:
    """The layers of the model's per-layer dictionaries (a CLT's layers are its own:
    `expand_spanning`)."""
    layers: set[int] = set()
    for gi, g in enumerate(config["suite"]):
        if KINDS[group_kind(g)].spans:
            continue
        if model_key in group_models(config, gi):
            layers.update(group_layers(config, gi, model_key))
    return sorted(layers)


def default_tokens(width: int) -> int:
    """Gemma Scope's budget: 4B tokens for 16.4K latents, 16B for 1M, 8B otherwise."""
    if width <= 2**14:
        return 4 * 10**9
    if width >= 2**20:
        return 16 * 10**9
    return 8 * 10**9


def _ladder(group: dict[str, Any]) -> list[tuple[float, float | None]]:
    """A group's rungs: (λ, target L0 or None)."""
    sp = group["sparsity"]
    if "lambdas" in sp:
        return [(lam, None) for lam in sp["lambdas"]]
    return [(sp["lambda"], l0) for l0 in sp["target_l0"]]


def expand_suite(config: dict[str, Any]) -> list[Dictionary]:
    """Every per-layer dictionary of the suite (SAEs and transcoders),
    deduplicated and sorted; the spanning ones (CLTs) are `expand_spanning`'s."""
    out: set[Dictionary] = set()
    for gi, g in enumerate(config["suite"]):
        ladder = _ladder(g)
        kind = group_kind(g)
        if KINDS[kind].spans:
            continue
        for mk in group_models(config, gi):
            for layer, site, width in itertools.product(
                group_layers(config, gi, mk), g["sites"], g["widths"]
            ):
                tokens = g["tokens"] or default_tokens(width)
                for lam, l0 in ladder:
                    out.add(
                        Dictionary.of(
                            mk,
                            kind,
                            layer,
                            site,
                            width,
                            tokens,
                            lambda_=lam,
                            target_l0=l0,
                        )
                    )
    return sorted(out)


def expand_spanning(config: dict[str, Any]) -> list[Dictionary]:
    """Every dictionary of a spanning kind (a CLT: one over its group's layers, per
    model × width × rung), deduplicated and sorted."""
    out: set[Dictionary] = set()
    for gi, g in enumerate(config["suite"]):
        kind = group_kind(g)
        if not KINDS[kind].spans:
            continue
        for mk in group_models(config, gi):
            layers = group_layers(config, gi, mk)
            for width in g["widths"]:  # per layer; Gemma Scope's budget by all
                tokens = g["tokens"] or default_tokens(width * len(layers))
                for lam, l0 in _ladder(g):
                    out.add(
                        Dictionary.spanning(
                            mk, kind, layers, width, tokens, lambda_=lam, target_l0=l0
                        )
                    )
    return sorted(out)


def group_kind(group: dict[str, Any]) -> str:
    """The KINDS key of a suite group's dictionaries (its `kind` and `skip`)."""
    kind = group.get("kind", "sae")
    if kind == "transcoder" and group.get("skip") == "affine":
        return "skip_transcoder"
    return kind


def model_sites(config: dict[str, Any], model_key: str) -> list[Site]:
    """Every site the model's activation cache must hold: what its dictionaries read
    and what they write."""
    every = expand_suite(config) + expand_spanning(config)
    mine = [d for d in every if d.model == model_key]
    return sorted({x for d in mine for x in (*d.reads, *d.writes)})


def sequences(config: dict[str, Any], split: str) -> int:
    """Number of whole sequences in a split ("train" or "eval")."""
    data = config["data"]
    return data[f"{split}_tokens"] // data["context_size"]


def seqs_per_chunk(config: dict[str, Any]) -> int:
    ctx = config["data"]["context_size"]
    return max(1, config["activations"]["chunk_tokens"] // ctx)


def n_chunks(config: dict[str, Any]) -> int:
    return math.ceil(sequences(config, "train") / seqs_per_chunk(config))


def output_root(config: dict[str, Any]) -> Path:
    return Path(config["output_root"])


def cache_root(config: dict[str, Any]) -> Path:
    return Path(config["cache_root"] or Path(config["output_root"]) / "cache")
