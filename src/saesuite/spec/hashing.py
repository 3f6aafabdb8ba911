"""Stable hashes and derived seeds: the one place they are computed (no torch)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, compact: bool = False) -> str:
    """16 hex digits of the sha256 of `obj` as sorted JSON (`compact`: without
    spaces, as the config hash has always been computed)."""
    seps = (",", ":") if compact else None
    blob = json.dumps(obj, sort_keys=True, separators=seps, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts joined by "/": the same parts, the same seed,
    whatever else the run holds."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
