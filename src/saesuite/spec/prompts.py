"""The prompts the chat rollouts start from (transfer.prompts)."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts.txt"


def load_prompts(path: str | Path | None) -> list[str]:
    """Prompts from a .txt file (one per line) or .jsonl ("prompt" field); None = the
    set shipped with saesuite."""
    path = Path(path) if path else PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"config key 'transfer.prompts': no file {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i}: not JSON ({err.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise ValueError(
                        f"config key 'transfer.prompts': {path}:{i}: no string "
                        "field 'prompt'"
                    )
                prompts.append(row["prompt"])
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"config key 'transfer.prompts': {path} holds no prompts")
    return prompts
