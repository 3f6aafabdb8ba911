"""Atomic writes, hashing and provenance: every file saesuite writes goes through here,
so an interrupted job never leaves a half-written file that looks finished."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from saesuite.spec.code_versions import CODE_VERSIONS

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from others
    try:
        yield Path(tmp)
        # Again: a writer may have replaced the file (safetensors' save_file writes a
        # new one, mode 0600).
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def new_dir_beside(path: str | Path) -> Path:
    """An empty folder next to `path` to build a directory output in, with the
    umask's mode (mkdtemp's 0700 would hide it from the group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def swap_in(built: Path, path: str | Path) -> None:
    """Put the finished folder `built` at `path`. A folder already there is moved
    aside first and removed only once the new one is in place, so a failure (a
    parent that is not writable, say) leaves the old folder whole."""
    path = Path(path)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.rename(path, old / path.name)
    try:
        os.rename(built, path)
    except OSError:
        if old is not None:
            os.rename(old / path.name, path)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def versions(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions of Python, the packages whose behaviour shapes our outputs, and the
    code versions of the rules (saesuite.spec.code_versions)."""
    names = (
        "saesuite",
        "torch",
        "transformers",
        "safetensors",
        "snakemake",
        "numpy",
        "tokenizers",
        "gguf",
    ) + packages
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return {**out, "code_versions": dict(CODE_VERSIONS)}
