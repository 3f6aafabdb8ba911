"""The three release layouts SAELens reads, for one dictionary (rule `release`,
through `release.build`): its folder's name in each layout (`sae_path`,
`folder_paths`) and its files there (`write_sae`); `Entry`, a release's dictionary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from saesuite.spec import paths
from saesuite.spec.dictionary import KINDS, Dictionary
from saesuite.spec.io import (
    atomic_path,
    write_json,
)
from saesuite.spec.releases import width_label
from saesuite.spec.sites import (
    SITE_KINDS,
    hf_hook_point,
)
from saesuite.spec.sparsity import sparsity_label

LAYOUTS = ("gemma-scope-2", "gemma-scope", "saelens")
PARAMS = paths.RELEASE_WEIGHTS  # each layout's weights file

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One SAE of a release: what it is, where it was trained, how it measured."""

    dictionary: Dictionary
    sae_dir: str
    metrics: dict[str, Any]  # scalar metrics on the held-out split
    dashboard: str = ""  # its dashboard folder, copied in as dashboard/ when given

    @property
    def l0_label(self) -> int:
        return int(round(self.metrics["l0"]))

    @property
    def identity(self) -> dict[str, Any]:
        """What the index says the dictionary is (its suite site, not its family)."""
        d = self.dictionary
        return {
            "layer": d.layer,
            "site": d.site,
            "width": d.width,
            "penalty": d.penalty,
            "value": d.value,
        }


def sae_path(layout: str, e: Entry, all_layers: bool) -> str:
    """The SAE's folder inside the repo."""
    d = e.dictionary
    L, w = d.layer, width_label(d.width)
    if layout == "gemma-scope":
        return f"layer_{L}/width_{w}/average_l0_{e.l0_label}"
    if layout == "gemma-scope-2":
        # Gemma Scope 2 keeps plain and skip-transcoders in one folder, the latter
        # suffixed _affine (SAELens's loader reads the kind from the folder name)
        own = KINDS[d.kind].release_site
        top = own or SITE_KINDS[d.site].gs2_folder
        top += "_all" if all_layers else ""
        affine = "_affine" if d.skip else ""
        return f"{top}/layer_{L}_width_{w}_l0_{e.l0_label}{affine}"
    return f"layer_{L}_{d.family}_width_{w}_l0_{e.l0_label}"


def sparsity_suffix(e: Entry) -> str:
    return sparsity_label(e.dictionary.penalty, e.dictionary.value, "release")


def folder_paths(
    layout: str, entries: list[Entry], all_layers: bool
) -> dict[str, Entry]:
    """Each SAE's folder. SAEs that measure the same rounded L0 at the same layer,
    site and width (a ladder that missed its targets) would share one: all of them
    then get their sparsity setting appended (…_l0_34_target_8, …_l0_34_target_16;
    …_l0_34_target_8_affine for skip-transcoders)."""
    by_path: dict[str, list[Entry]] = {}
    for e in entries:
        by_path.setdefault(sae_path(layout, e, all_layers), []).append(e)
    out: dict[str, Entry] = {}
    for p, group in by_path.items():
        if len(group) == 1:
            out[p] = group[0]
            continue
        log.warning("%d SAEs measure the same L0 at %s: suffixing", len(group), p)
        for e in group:
            # before Gemma Scope 2's _affine, which stays last as in its repos
            stem, affine = (
                (p[: -len("_affine")], "_affine") if p.endswith("_affine") else (p, "")
            )
            q = f"{stem}_{sparsity_suffix(e)}{affine}"
            if q in out:
                raise ValueError(
                    f"SAEs {out[q].dictionary.path} and {e.dictionary.path} both map "
                    f"to {q}"
                )
            out[q] = e
    return out


def write_sae(layout: str, e: Entry, folder: Path, meta: dict[str, Any]) -> None:
    """Write one SAE's files in `layout` into `folder`."""
    t = load_file(str(paths.sae_file(e.sae_dir, "weights")))
    t = {k: v.float().contiguous() for k, v in t.items()}
    d = e.dictionary
    L, site, in_site = d.layer, d.output_site.kind, d.input_site.kind
    hook = hf_hook_point(meta["model_type"], L, in_site)
    hook_out = hf_hook_point(meta["model_type"], L, site)
    tc = d.paired
    if layout == "gemma-scope":
        with atomic_path(folder / PARAMS[layout]) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in t.items()})
    elif layout == "gemma-scope-2":
        names = {
            "W_enc": "w_enc",
            "W_dec": "w_dec",
            "b_enc": "b_enc",
            "b_dec": "b_dec",
            "threshold": "threshold",
            "W_skip": "affine_skip_connection",
        }  # (d_in, d_out), as ours
        with atomic_path(folder / PARAMS[layout]) as tmp:
            save_file({names[k]: v for k, v in t.items()}, str(tmp))
        write_json(
            folder / "config.json",
            {
                "architecture": "jump_relu",
                "model_name": meta["hub_model"],
                "hf_hook_point_in": hook,
                **(
                    {"hf_hook_point_out": hook_out, "affine_connection": d.skip}
                    if tc
                    else {}
                ),
                "width": d.width,
                "l0": e.metrics["l0"],
            },
        )
    else:
        if "W_skip" in t:  # SAELens holds it as (d_out, d_in)
            t["W_skip"] = t["W_skip"].T.contiguous()
        with atomic_path(folder / PARAMS[layout]) as tmp:
            save_file(t, str(tmp))
        d_in, d_sae = t["W_enc"].shape
        write_json(
            folder / "cfg.json",
            {
                "architecture": KINDS[d.kind].saelens,
                "d_in": int(d_in),
                "d_sae": int(d_sae),
                **({"d_out": int(t["W_dec"].shape[1])} if tc else {}),
                "dtype": "float32",
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "reshape_activations": "none",
                "metadata": {
                    "model_name": meta["hub_model"],
                    "hook_name": SITE_KINDS[in_site].tl_hook.format(L=L),
                    "hf_hook_name": hook,
                    **(
                        {
                            "hook_name_out": SITE_KINDS[site].tl_hook.format(L=L),
                            "hf_hook_name_out": hook_out,
                        }
                        if tc
                        else {}
                    ),
                    "context_size": meta["context_size"],
                    "prepend_bos": True,
                    "sae_lens_training_version": None,
                    "saesuite_version": meta["versions"].get("saesuite"),
                },
            },
        )
