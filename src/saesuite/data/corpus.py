"""Text sources (rule `corpus`): the offline embedded corpus, local files, and Hub
datasets streamed with `datasets`.

The embedded corpus is built on the machine from English prose that every CPython
installation ships, so it needs no download and is the same on every machine with
the same Python version:
  1. `pydoc_data.topics`: the Python Language Reference's topic texts (~465k chars);
  2. docstrings of the standard library's modules, classes and functions, parsed
     with `ast` from the sources (never imported), at least 200 characters each,
     one document per module; test suites, idlelib and lib2to3 are left out.
"""

from __future__ import annotations

import ast
import glob
import json
import random
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saesuite.spec.io import atomic_open, write_json

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"}
MIN_DOCSTRING = 200


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts) or "test" in rel.name:
            continue
        files.append(path)
    return files


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOCSTRING:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def embedded_documents() -> Iterator[str]:
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[key].strip()
    for path in _stdlib_files():
        if text := _docstrings(path):
            yield text


def file_documents(paths: list[str], text_field: str) -> Iterator[str]:
    matched = sorted({p for pattern in paths for p in glob.glob(pattern)})
    if not matched:
        raise FileNotFoundError(f"data.sources: no file matches {paths}")
    for p in matched:
        n = 0
        try:
            for doc in _one_file(p, text_field):
                if doc and doc.strip():
                    n += 1
                    yield doc
        except UnicodeDecodeError as err:
            byte = err.object[err.start]
            raise ValueError(
                f"{p}: not UTF-8 text (byte {err.start} is 0x{byte:02x}): a binary "
                "file with a text file's name?"
            ) from None
        if n == 0:
            raise ValueError(f"{p}: holds no text (an empty or blank file)")


def _one_file(p: str, text_field: str) -> Iterator[str]:
    suffix = Path(p).suffix
    if suffix == ".txt":
        yield Path(p).read_text(encoding="utf-8")
    elif suffix == ".jsonl":
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{p}:{n}: not JSON ({err.msg})") from None
                    if not isinstance(row, dict) or text_field not in row:
                        raise KeyError(f"{p}:{n}: no field '{text_field}'")
                    yield row[text_field]
    elif suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(p, columns=[text_field])
        yield from frame[text_field].astype(str)
    else:
        raise ValueError(f"{p}: unsupported file type (txt, jsonl or parquet)")


def hub_documents(src: dict[str, Any]) -> Iterator[str]:
    from datasets import load_dataset

    stream = load_dataset(
        src["id"],
        src.get("name"),
        split=src.get("split", "train"),
        revision=src.get("revision"),
        streaming=True,
    )
    for row in stream:
        yield row[src.get("text_field", "text")]


def source_documents(src: dict[str, Any]) -> Iterator[str]:
    if src["type"] == "embedded":
        docs = embedded_documents()
    elif src["type"] == "files":
        docs = file_documents(src["paths"], src.get("text_field", "text"))
    else:
        docs = hub_documents(src)
    limit = src.get("max_documents")
    for i, doc in enumerate(docs):
        if limit is not None and i >= limit:
            return
        if doc and doc.strip():
            yield doc


def build_corpus(
    sources: list[dict[str, Any]],
    out_jsonl: str | Path,
    out_info: str | Path,
    *,
    max_chars: int,
    shuffle: bool,
    seed: int,
) -> dict[str, Any]:
    """Write up to `max_chars` of documents as JSONL ({"text": ...}) and provenance."""
    docs: list[str] = []
    total = 0
    counts = []
    for si, src in enumerate(sources):
        n = 0
        try:
            for doc in source_documents(src):
                if total >= max_chars:
                    break
                docs.append(doc)
                total += len(doc)
                n += 1
        except (OSError, ValueError, KeyError) as err:
            # the same kind of error, now naming the config key too
            why = err.args[0] if len(err.args) == 1 else err
            raise type(err)(f"config key 'data.sources.{si}': {why}") from None
        if n == 0 and total < max_chars:
            raise ValueError(f"config key 'data.sources.{si}': gave no documents")
        counts.append({**src, "documents": n})
    if shuffle:
        random.Random(seed).shuffle(docs)
    with atomic_open(out_jsonl) as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    info = {
        "documents": len(docs),
        "characters": total,
        "sources": counts,
        "shuffled": shuffle,
        "seed": seed,
        "python": sys.version.split()[0],
        "embedded_provenance": (
            "pydoc_data.topics and standard-library docstrings of this Python"
        ),
    }
    write_json(out_info, info)
    return info


def read_corpus(path: str | Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
