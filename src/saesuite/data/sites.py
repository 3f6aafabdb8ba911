"""Where each SAE site lives in a model, and one forward pass that captures (or
replaces) every requested site at once.

Sites follow Gemma Scope: `res` is the residual stream after block L; `att` the
concatenated per-head outputs before the output projection (the input of o_proj);
`mlp` the MLP output after Gemma's post-feedforward RMSNorm (what is added to the
residual); `mlp_in` the MLP input after the pre-feedforward RMSNorm (for transcoders).
Used by extraction (capture, stopping after the deepest layer) and by evaluation
(replacement).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from saesuite.spec.known_models import text_site_width
from saesuite.spec.sites import ARCHITECTURES, ArchSites, Site


def arch_sites(model: nn.Module) -> ArchSites:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"no site table for model_type '{model_type}'; known: "
            f"{sorted(ARCHITECTURES)} (add one to saesuite.spec.sites.ARCHITECTURES)"
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(arch_sites(model).layers)


def site_width(model: nn.Module, kind: str) -> int:
    """d_in of an SAE at this kind of site."""
    return text_site_width(model.config.get_text_config(), kind)


class StopForward(Exception):
    """Raised by a hook after the deepest site: the rest of the model is not needed."""


Replace = Callable[[Site, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def site_hooks(
    model: nn.Module,
    sites: list[Site],
    *,
    captured: dict[Site, torch.Tensor] | None = None,
    sink: Callable[[Site, torch.Tensor], None] | None = None,
    replace: Replace | None = None,
    stop_after_last: bool = False,
) -> Iterator[None]:
    """Hooks that store each site's activation (B, T, d) into `captured`, hand it to
    `sink` (which must copy what it keeps), and/or substitute `replace(site, act)`
    for it; with `stop_after_last`, raise StopForward as soon as the deepest
    requested layer has run."""
    arch = arch_sites(model)
    layers = decoder_layers(model)
    for s in sites:
        if not 0 <= s.layer < len(layers):
            raise ValueError(f"site {s.name}: the model has {len(layers)} layers")
    handles = []

    def handle(site: Site, act: torch.Tensor) -> torch.Tensor | None:
        new = replace(site, act) if replace is not None else None
        if captured is not None:
            captured[site] = act if new is None else new
        if sink is not None:
            sink(site, act if new is None else new)
        return new

    def out_hook(site: Site):
        def hook(_mod, _args, out):
            act = out[0] if isinstance(out, tuple) else out
            new = handle(site, act)
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    def in_hook(site: Site):
        def hook(_mod, args):
            new = handle(site, args[0])
            return None if new is None else (new, *args[1:])

        return hook

    try:
        for s in sorted(sites):
            layer = layers[s.layer]
            if s.kind == "res":
                handles.append(layer.register_forward_hook(out_hook(s)))
            elif s.kind == "att":
                mod = layer.get_submodule(arch.att)
                handles.append(mod.register_forward_pre_hook(in_hook(s)))
            else:
                mod = layer.get_submodule(getattr(arch, s.kind))
                handles.append(mod.register_forward_hook(out_hook(s)))
        if stop_after_last and sites:

            def stop(_mod, _args, _out):
                raise StopForward

            # Registered last, so the deepest layer's own `res` hook runs first.
            last = layers[max(s.layer for s in sites)]
            handles.append(last.register_forward_hook(stop))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    sites: list[Site],
    sink: Callable[[Site, torch.Tensor], None] | None = None,
) -> dict[Site, torch.Tensor]:
    """All requested sites of one batch (B, T) in one truncated forward pass.
    With a `sink`, activations are handed over as they are computed and not kept
    (the allocator can then reuse their memory, as in a plain forward pass)."""
    captured: dict[Site, torch.Tensor] = {}
    seen: set[Site] = set()

    def keep(site: Site, act: torch.Tensor) -> None:
        seen.add(site)
        if sink is None:
            captured[site] = act
        else:
            sink(site, act)

    with torch.no_grad(), site_hooks(model, sites, sink=keep, stop_after_last=True):
        try:
            model(input_ids=input_ids, use_cache=False)
        except StopForward:
            pass
    missing = [s.name for s in sites if s not in seen]
    if missing:
        raise RuntimeError(f"sites not reached by the forward pass: {missing}")
    return captured


def logits_with(
    model: nn.Module,
    input_ids: torch.Tensor,
    sites: list[Site],
    replace: Replace,
) -> torch.Tensor:
    """Logits (B, T, vocab) with `replace` applied at every site in `sites`."""
    with torch.no_grad(), site_hooks(model, sites, replace=replace):
        return model(input_ids=input_ids, use_cache=False).logits


@contextlib.contextmanager
def layer_outputs(model: nn.Module, layers: list[int], store: dict[int, Any]):
    """Keep the output (whatever the layer returns) of each decoder layer in `layers`:
    `resume_after` replays it so a later pass can skip the layers before."""
    mods = decoder_layers(model)

    def keep(index: int):
        def hook(_mod, _args, out):
            store[index] = out

        return hook

    handles = [mods[i].register_forward_hook(keep(i)) for i in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def resume_after(model: nn.Module, layer: int, output: Any):
    """Within this context a forward pass skips decoder layers 0..layer and takes
    `output` (kept by `layer_outputs` from a pass over the same input ids) as what
    layer `layer` returned. Embedding, masks and rotary tables are still computed
    (cheap); everything after runs as usual, so hooks and logit soft-capping apply."""
    mods = decoder_layers(model)

    def replay(*_args: Any, **_kwargs: Any) -> Any:
        # Every skipped layer returns the kept output, whatever its structure (a
        # tensor, or a tuple the model's loop unpacks): the last one is what counts.
        return output

    for i in range(layer + 1):
        # An instance attribute shadows the class's forward for nn.Module.__call__.
        mods[i].forward = replay
    try:
        yield
    finally:
        for i in range(layer + 1):
            del mods[i].forward


def logits_from(
    model: nn.Module,
    input_ids: torch.Tensor,
    sites: list[Site],
    replace: Replace,
    resume: tuple[int, Any] | None = None,
) -> torch.Tensor:
    """`logits_with`, starting after layer resume[0] from its kept output resume[1]
    (every site must lie after that layer)."""
    if resume is None:
        return logits_with(model, input_ids, sites, replace)
    if any(s.layer <= resume[0] for s in sites):
        raise ValueError(f"cannot resume after layer {resume[0]}: a site lies before")
    with resume_after(model, *resume):
        return logits_with(model, input_ids, sites, replace)
