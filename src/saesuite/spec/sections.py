"""Typed configuration sections (no torch): `train`, `evaluate`, `dashboards` and
`transfer` as frozen dataclasses, built once from the validated config and carried by
the jobs, so the trainer reads `cfg.lr`, never `cfg["lr"]`.

config/schema.yaml stays the one source of every key's default and description (a
key's meaning: read it there); these classes hold the types. tests/spec test that each
class has exactly its section's keys, so a key added to one side only fails.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, get_type_hints

from saesuite.spec.config import schema_defaults


class _Section:
    """Built from a validated section (`from_dict`), written back as one (`to_dict`)."""

    SECTION = ""  # its key in the config

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        extra = sorted(set(d) - set(names))
        missing = [n for n in names if n not in d]
        if extra or missing:
            raise ValueError(
                f"config section '{cls.SECTION}': unknown keys {extra}, missing "
                f"{missing} (config/schema.yaml lists its keys)"
            )
        hints = get_type_hints(cls)
        return cls(**{n: _typed(d[n], hints[n]) for n in names})

    @classmethod
    def defaults(cls, overrides: dict[str, Any] | None = None, **more: Any):
        """The section at the schema's defaults, with `overrides` (a section built by
        hand: benchmarks, tests)."""
        return cls.from_dict(schema_defaults(cls.SECTION) | (overrides or {}) | more)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _typed(value: Any, hint: Any) -> Any:
    """A JSON/YAML value as its field's type: lists as tuples, and an integer where a
    float is declared as that float (YAML reads `adam_beta1: 0` as 0, which torch's
    Adam refuses as a beta)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, list):
        return tuple(value)
    if float in args and int not in args and isinstance(value, int):
        if not isinstance(value, bool):
            return float(value)
    return value


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The `train` section: the optimiser, schedule, initialisation, penalties and
    the step's options of every dictionary a job trains."""

    SECTION = "train"

    recipe: str
    batch_size: int
    lr: float
    lr_warmup_steps: int
    lr_decay: str
    lr_decay_fraction: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    lambda_warmup_steps: int
    max_lr_warmup_fraction: float
    max_lambda_warmup_fraction: float
    max_grad_norm: float | None
    bandwidth: float
    init_threshold: float
    encoder_init_scale: float
    # a paired dictionary's encoder scale; None in a job's section (jobs.train_section
    # has set encoder_init_scale from it)
    transcoder_encoder_init_scale: float | None
    decoder_norm: str
    decoder_init_norm: float
    b_dec_init: str
    frequency_coefficient: float
    max_frequency: float
    matryoshka_fractions: tuple[float, ...]
    pre_act_coefficient: float
    pre_act_window_tokens: int
    max_norm_multiple: float | None
    outlier_mode: str
    threshold_param: str
    step: str
    sparse_density: float
    checkpoint_every: int
    log_every: int
    dead_window_tokens: int
    device: str
    nproc: int


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """The `evaluate` section."""

    SECTION = "evaluate"

    tokens: int | None
    loss_tokens: int | None
    batch_size: int
    loss_batch_size: int


@dataclass(frozen=True)
class DashboardsConfig(_Section):
    """The `dashboards` section."""

    SECTION = "dashboards"

    enabled: bool
    layers: tuple[int, ...] | None
    tokens: int
    top_k: int
    window: int
    samples: int
    logit_tokens: int
    batch_size: int


@dataclass(frozen=True)
class TransferConfig(_Section):
    """The `transfer` section."""

    SECTION = "transfer"

    format_shift: bool
    prompts: str | None
    tokens: int
    finetune_share: float
    finetune_lr_scale: float
    temperature: float
    batch_size: int


SECTIONS = (TrainConfig, EvaluateConfig, DashboardsConfig, TransferConfig)


def schema_mismatch(schema: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per section, the schema keys without a field and the fields without a schema
    key (empty when they agree): what tests/spec/test_sections.py checks."""
    out = {}
    for cls in SECTIONS:
        keys = set(schema["properties"][cls.SECTION]["properties"])
        fields = {f.name for f in dataclasses.fields(cls)}
        if keys != fields:
            out[cls.SECTION] = {
                "keys without a field": sorted(keys - fields),
                "fields without a key": sorted(fields - keys),
            }
    return out
