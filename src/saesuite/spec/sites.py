"""The site vocabulary, its one home (no torch): each kind of site with its title and
its names in the Hub layouts, the hook points, and where each architecture keeps them.
The schema's site enums are checked against `SITES` by the tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteKind:
    name: str
    title: str  # in the report and model cards
    gs2_folder: str  # Gemma Scope 2's folder name
    tl_hook: str  # TransformerLens hook name (SAELens's `hook_name`), {L} the layer


SITE_KINDS = {
    k.name: k
    for k in (
        SiteKind("res", "residual stream", "resid_post", "blocks.{L}.hook_resid_post"),
        SiteKind("att", "attention output", "attn_out", "blocks.{L}.attn.hook_z"),
        SiteKind("mlp", "MLP output", "mlp_out", "blocks.{L}.hook_mlp_out"),
        SiteKind("mlp_in", "MLP input", "mlp_in", "blocks.{L}.ln2.hook_normalized"),
    )
}
SITES = tuple(SITE_KINDS)
SITE_NAMES = {k: v.title for k, v in SITE_KINDS.items()}
# circuit-tracer's names for those two sites (`feature_input_hook`,
# `feature_output_hook`), and the model types whose circuit-tracer mapping puts them
# where ours are: the outputs of pre_/post_feedforward_layernorm (Gemma 3), of
# post_attention_layernorm / mlp (Llama). Its Gemma 2 mapping has no mlp.hook_in (its
# ln2.hook_normalized is the norm before its weight): no set is written for Gemma 2.
CIRCUIT_TRACER_HOOKS = ("mlp.hook_in", "hook_mlp_out")
CIRCUIT_TRACER_MODEL_TYPES = ("gemma3_text", "llama")


@dataclass(frozen=True, order=True)
class Site:
    """One hook point of a model: `kind` in SITES at decoder layer `layer`."""

    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"layer_{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, name: str) -> Site:
        head, kind = name.split(".")
        return cls(int(head.removeprefix("layer_")), kind)


@dataclass(frozen=True)
class ArchSites:
    """Module paths, relative to one decoder layer, of each site's hook point."""

    layers: str  # path of the ModuleList of decoder layers, from the causal LM
    att: str = "self_attn.o_proj"  # site = the INPUT of this module
    mlp: str = "post_feedforward_layernorm"  # site = the OUTPUT of this module
    mlp_in: str = "pre_feedforward_layernorm"  # site = the OUTPUT of this module


_GEMMA = ArchSites("model.layers")
# Llama-style blocks have no post-MLP norm: the MLP's output is what is added.
_LLAMA = ArchSites("model.layers", mlp="mlp", mlp_in="post_attention_layernorm")

ARCHITECTURES: dict[str, ArchSites] = {
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gemma3": ArchSites("model.language_model.layers"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


def hf_hook_point(model_type: str, layer: int, kind: str) -> str:
    """The site as a Hugging Face module path, as Gemma Scope 2's config.json has it."""
    arch = ARCHITECTURES[model_type]
    base = f"{arch.layers}.{layer}"
    if kind == "res":
        return f"{base}.output"
    if kind == "att":
        return f"{base}.{arch.att}.input"
    return f"{base}.{getattr(arch, kind)}.output"
