"""Which release folders a suite makes, and each one's job (no torch)."""

from __future__ import annotations

from typing import Any

from saesuite.spec.dictionary import Dictionary

EMBEDDED_HUB_ID = "google/gemma-3-270m"


def width_label(width: int) -> str:
    """Gemma Scope's width names: 16384 → 16k, 65536 → 65k, 2^20 → 1m."""
    if width >= 2**20 and width % 2**20 == 0:
        return f"{width // 2**20}m"
    return f"{width // 1000}k" if width >= 1000 else str(width)


def hub_model_id(model_cfg: dict[str, Any]) -> str:
    source = model_cfg["source"]
    return EMBEDDED_HUB_ID if source == "embedded" else source


def repo_id(config: dict[str, Any], model: str, site: str) -> str:
    rel = config["release"]
    fields = {"org": rel["org"], "prefix": rel["prefix"], "model": model, "site": site}
    return rel["repo"].format(**fields)


def release_groups(
    config: dict[str, Any], suite: list[Dictionary]
) -> dict[str, list[Dictionary]]:
    """Dictionaries by the repo they are released in: a site's SAEs, or a model's
    transcoders, plain and skip together, as {site} = "transcoder" (Gemma Scope's
    transcoder repos)."""
    groups: dict[str, list[Dictionary]] = {}
    for spec in suite:
        repo = repo_id(config, spec.model, spec.release_site)
        groups.setdefault(repo, []).append(spec)
    return groups


def folder_name(repo: str) -> str:
    """A repo id as one path component (org/name → org--name)."""
    return repo.replace("/", "--")
