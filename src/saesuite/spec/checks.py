"""What the transfer checks compare, from the configuration alone (no torch): each
check's evaluations, every evaluation the workflow runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saesuite.spec.config import ConfigError
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sources import has_chat_template

PT_TO_IT = "pt->it"
FORMAT_SHIFT = "format-shift"


@dataclass(frozen=True)
class Evaluation:
    """SAEs of `trained_on`, run through model `evaluated_on`, on `data`."""

    trained_on: str
    evaluated_on: str
    data: str  # "text" (held-out split) or "chat" (rollouts)
    layers: tuple[int, ...] | None = None  # None: every layer with SAEs


@dataclass(frozen=True)
class TransferCheck:
    name: str  # folder under <output_root>/transfer/
    kind: str  # PT_TO_IT or FORMAT_SHIFT
    base: str  # the PT model whose SAEs are checked
    target: str  # the model they run through
    evaluations: tuple[Evaluation, ...]
    finetuned: str | None = None  # the key of the base's SAEs fine-tuned on target

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferCheck:
        evals = tuple(
            Evaluation(**{**e, "layers": e["layers"] and tuple(e["layers"])})
            for e in d["evaluations"]
        )
        return cls(
            d["name"], d["kind"], d["base"], d["target"], evals, d.get("finetuned")
        )


def finetuned_key(base: str, target: str) -> str:
    """Where the base's SAEs fine-tuned on `target` live, as a model key would
    (<output_root>/<key>/saes/...): no model of a config may take it."""
    return f"{base}-ft-{target}"


def with_finetuned(
    check: TransferCheck, suite: list[Dictionary], share: float
) -> TransferCheck:
    """The check with the base's SAEs fine-tuned on its target (share > 0) evaluated
    on the target's data, at the check's layers (every layer of the base's SAEs)."""
    if share <= 0:
        return check
    key = finetuned_key(check.base, check.target)
    layers = check.evaluations[0].layers or tuple(  # its evaluations share them
        sorted({s.layer for s in suite if s.model == check.base})
    )
    evals = tuple(Evaluation(key, check.target, d, layers) for d in ("text", "chat"))
    return dataclasses.replace(
        check, evaluations=check.evaluations + evals, finetuned=key
    )


def finetuned_specs(
    config: dict[str, Any], suite: list[Dictionary], checks: list[TransferCheck]
) -> list[Dictionary]:
    """The fine-tuned SAEs of every check: each of the base's SAEs at the check's
    layers under the fine-tuned key, its budget `transfer.finetune_share` of the PT
    one's (at least one batch)."""
    share = config["transfer"]["finetune_share"]
    batch = config["train"]["batch_size"]
    out = []
    for c in checks:
        if c.finetuned is None:
            continue
        layers = set(
            next(e.layers for e in c.evaluations if e.trained_on == c.finetuned)
        )
        out += [
            dataclasses.replace(
                s, model=c.finetuned, tokens=max(batch, round(share * s.tokens))
            )
            for s in suite
            if s.model == c.base and s.layer in layers
        ]
    return out


def models_with_saes(suite: list[Dictionary]) -> set[str]:
    return {s.model for s in suite}


def transfer_checks(
    config: dict[str, Any], suite: list[Dictionary]
) -> list[TransferCheck]:
    trained = models_with_saes(suite)
    checks = []
    paired = set()
    for it, m in config["models"].items():
        base = m["base"]
        if base is None or base not in trained:
            continue
        paired.add(base)
        # With SAEs of its own, the IT model is compared at its layers only (as the
        # paper did); otherwise the base's SAEs run through it at every layer.
        layers = None
        if it in trained:
            base_layers = {s.layer for s in suite if s.model == base}
            own = {s.layer for s in suite if s.model == it}
            layers = tuple(sorted(own & base_layers)) or None
        evals = [Evaluation(base, base, "text", layers)]  # PT SAEs on PT: reference
        for data in ("text", "chat"):
            evals.append(Evaluation(base, it, data, layers))
            if it in trained:
                evals.append(Evaluation(it, it, data, layers))
        checks.append(
            TransferCheck(f"{base}-to-{it}", PT_TO_IT, base, it, tuple(evals))
        )
    if config["transfer"]["format_shift"]:
        for pt in sorted(trained - paired):
            if config["models"][pt]["role"] != "pt":
                continue
            evals = (Evaluation(pt, pt, "text"), Evaluation(pt, pt, "chat"))
            checks.append(
                TransferCheck(f"{pt}-format-shift", FORMAT_SHIFT, pt, pt, evals)
            )
    share = config["transfer"]["finetune_share"]
    return [with_finetuned(c, suite, share) for c in checks]


def evaluations(config: dict[str, Any], suite: list[Dictionary]) -> list[Evaluation]:
    """Every evaluation the workflow runs: each model's SAEs on its own held-out
    split, and those the transfer checks add."""
    out = {Evaluation(m, m, "text") for m in models_with_saes(suite)}
    for check in transfer_checks(config, suite):
        # The reference (PT SAEs on PT text) is part of the full evaluation already.
        out.update(
            e
            for e in check.evaluations
            if e.trained_on != e.evaluated_on or e.data != "text"
        )
    return sorted(out, key=lambda e: (e.trained_on, e.evaluated_on, e.data))


def check_label(kind: str) -> str:
    if kind == FORMAT_SHIFT:
        return (
            "format-shift check (PT SAEs on chat-formatted text through the PT "
            "model; not PT→IT)"
        )
    return "PT→IT transfer"


def require_chat_templates(config: dict[str, Any], checks: list[TransferCheck]) -> None:
    """ConfigError, before any job, for a model that must format chat prompts and
    whose tokenizer has none (as far as the files at hand tell): the IT model of a
    PT→IT check and every `chat: true` model (remedy: its chat_template), and the PT
    model of a format-shift check (remedies: its chat_template or turning the check
    off). Most base models (Llama, Qwen, Pythia) have none."""
    need: dict[str, str] = {}
    for c in checks:
        need.setdefault(c.base if c.kind == FORMAT_SHIFT else c.target, c.kind)
    for key, m in config["models"].items():
        if m["chat"]:
            need.setdefault(key, "chat")
    for key, why in sorted(need.items()):
        if has_chat_template(config["models"][key]) is not False:
            continue
        task = {
            FORMAT_SHIFT: "the format-shift check (transfer.format_shift, on by "
            "default for a PT model with SAEs that no IT model names as base) formats "
            "its rollouts as chat",
            PT_TO_IT: "the PT→IT check generates chat rollouts with it",
            "chat": "models.{key}.chat is true",
        }[why].format(key=key)
        remedy = f"set 'models.{key}.chat_template' to a Jinja template"
        if why == FORMAT_SHIFT:
            remedy += ", or 'transfer.format_shift: false' to skip the check"
        raise ConfigError(
            f"config key 'models.{key}.source': {config['models'][key]['source']} has "
            f"no chat template, and {task}: {remedy}"
        )
