"""The activation store: chunk files and their manifest (reading them, the
bucket-shuffling reader and the normalisation scalar C: `data.reader`).

A chunk is one safetensors file holding, for a contiguous range of training
sequences flattened to tokens, one tensor per site `layer_L.kind` (n_tokens, d_in),
plus `input_ids` (n_tokens,) and `mask` (n_tokens,) (False at BOS/EOS/pad and chat
user-prefix positions). Readers memory-map the files and never load a whole site.
Rules: `extract` writes chunks, `manifest` lists them, `normalize` computes C; the
trainer reads through `ActivationReader`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from saesuite.spec.io import atomic_path, read_json, sha256_file, write_json

SAFETENSORS_DTYPES = {
    "F32": "float32",
    "BF16": "bfloat16",
    "F16": "float16",
    "BOOL": "bool",
    "I32": "int32",
    "I64": "int64",
}
READ_ROWS = 1 << 16  # rows per slice when scanning a chunk: bounds memory
# Each tensor of a chunk is checksummed in blocks of whole rows of about this many
# bytes (xxh3_64, ~17 GB/s here), written by the extraction job and verified as the
# rows are read, once per block per job: a bit flipped on disk after extraction is an
# error naming the chunk, not a silently different SAE. Whole-file hashes (the
# sha256 in each sidecar) cost a full extra read of a cache of hundreds of TB.
CHECKSUM_BLOCK_BYTES = 16 << 20
CHECKSUM = "xxh3_64"


def block_rows(row_bytes: int) -> int:
    return max(1, CHECKSUM_BLOCK_BYTES // max(row_bytes, 1))


def block_digest(data: Any) -> str:
    return f"{xxhash.xxh3_64_intdigest(data):016x}"


REDO = (
    "Delete that chunk (.safetensors and .json) and run Snakemake again: only it is "
    "extracted again"
)


class StoreError(RuntimeError):
    """A chunk file is missing, truncated, malformed or holds non-finite values; the
    message ends with what to do about it."""

    def __init__(self, message: str, remedy: str = REDO):
        super().__init__(f"{message}. {remedy}")


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The header of a safetensors file, checking the file is not truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise StoreError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", raw)
            if 8 + n > size:
                raise StoreError(f"{path}: truncated inside its header")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path}: not a safetensors file ({err})") from None
    end = max(
        (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
        default=0,
    )
    if 8 + n + end > size:
        raise StoreError(f"{path}: truncated ({size} bytes, expected {8 + n + end})")
    return header


def check_chunk(path: str | Path, expect: dict[str, dict[str, Any]]) -> None:
    """Raise StoreError naming the file if a tensor's shape or dtype differs."""
    header = safetensors_header(path)
    for name, want in expect.items():
        got = header.get(name)
        if got is None:
            raise StoreError(f"{path}: no tensor '{name}'")
        dtype = SAFETENSORS_DTYPES.get(got["dtype"], got["dtype"])
        if list(got["shape"]) != list(want["shape"]) or dtype != want["dtype"]:
            raise StoreError(
                f"{path}: tensor '{name}' is {dtype}{got['shape']}, expected "
                f"{want['dtype']}{want['shape']}"
            )


TORCH_TO_SAFETENSORS = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.bool: "BOOL",
    torch.int32: "I32",
    torch.int64: "I64",
}


class ChunkWriter:
    """A chunk written in place: the safetensors header first, then each tensor's rows
    as they come (`write`), so that memory stays at one batch however large the chunk.

    Use as a context manager: on a clean exit the file is fsynced and renamed onto
    `path`, and its sidecar JSON (shapes, dtypes, token counts, sha256) is written; on
    an exception nothing is left behind. The layout is a pure function of the specs, so
    the bytes are a pure function of the specs, the metadata and the rows written.
    """

    def __init__(
        self,
        path: str | Path,
        info_path: str | Path,
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
        meta: dict[str, Any],
    ):
        self.path, self.info_path, self.meta = Path(path), Path(info_path), meta
        self.specs = specs
        self.offsets: dict[str, int] = {}
        # One metadata key, sorted: the bytes must not depend on dict order.
        blob = json.dumps(meta, sort_keys=True)
        header: dict[str, Any] = {"__metadata__": {"saesuite": blob}}
        pos = 0
        # Widest dtypes first: every tensor then starts aligned to its element size.
        for name in sorted(specs, key=lambda k: -specs[k][1].itemsize):
            shape, dtype = specs[name]
            size = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": TORCH_TO_SAFETENSORS[dtype],
                "shape": list(shape),
                "data_offsets": [pos, pos + size],
            }
            self.offsets[name] = pos
            pos += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data then starts 8-byte aligned
        self._header = struct.pack("<Q", len(raw)) + raw
        self._size = len(self._header) + pos
        self.valid = 0
        self.rows = dict.fromkeys(specs, 0)
        # Checksums stream in as rows come in order; a tensor written out of order
        # is checksummed from the file when the chunk is closed.
        self._row_bytes = {
            k: math.prod(s[1:]) * d.itemsize for k, (s, d) in specs.items()
        }
        self._block = {k: block_rows(b) * b for k, b in self._row_bytes.items()}
        self._hash = {k: xxhash.xxh3_64() for k in specs}
        self._filled = dict.fromkeys(specs, 0)
        self._digests: dict[str, list[str]] = {k: [] for k in specs}
        self._in_order = set(specs)

    def __enter__(self) -> ChunkWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._tmp = self._atomic.__enter__()
        self._f = open(tmp, "r+b")
        self._f.write(self._header)
        self._f.truncate(self._size)  # sparse until written
        return self

    def write(self, name: str, row: int, t: torch.Tensor) -> None:
        """Rows `row`.. of tensor `name` (its dtype and trailing shape)."""
        shape, dtype = self.specs[name]
        if t.dtype != dtype or tuple(t.shape[1:]) != tuple(shape[1:]):
            raise ValueError(f"'{name}': got {t.dtype}{list(t.shape)} for {shape}")
        if row + t.shape[0] > shape[0]:
            raise ValueError(
                f"'{name}': rows {row}..{row + t.shape[0]} past {shape[0]}"
            )
        if name == "mask":
            self.valid += int(t.sum())
        self.rows[name] += t.shape[0]
        row_bytes = self._row_bytes[name]
        self._f.seek(len(self._header) + self.offsets[name] + row * row_bytes)
        data = t.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy().data
        self._f.write(data)
        if name in self._in_order and row * row_bytes == self._streamed(name):
            self._stream(name, data)
        else:
            self._in_order.discard(name)

    def _streamed(self, name: str) -> int:
        return len(self._digests[name]) * self._block[name] + self._filled[name]

    def _stream(self, name: str, data: memoryview) -> None:
        block = self._block[name]
        h = self._hash[name]
        while len(data):
            take = min(len(data), block - self._filled[name])
            h.update(data[:take])
            self._filled[name] += take
            data = data[take:]
            if self._filled[name] == block:
                self._digests[name].append(f"{h.intdigest():016x}")
                h.reset()
                self._filled[name] = 0

    def _checksums(self, path: Path) -> dict[str, Any]:
        for name in self.specs:
            if name in self._in_order and self._filled[name]:
                self._digests[name].append(f"{self._hash[name].intdigest():016x}")
                self._filled[name] = 0
        with open(path, "rb") as f:
            for name in self.specs:
                if name not in self._in_order:
                    self._digests[name] = self._file_digests(f, name)
        return {
            "algorithm": CHECKSUM,
            "block_rows": {k: block_rows(b) for k, b in self._row_bytes.items()},
            "blocks": self._digests,
        }

    def _file_digests(self, f: Any, name: str) -> list[str]:
        block = self._block[name]
        start = len(self._header) + self.offsets[name]
        end = start + self.specs[name][0][0] * self._row_bytes[name]
        out = []
        for pos in range(start, end, block):
            f.seek(pos)
            out.append(block_digest(f.read(min(block, end - pos))))
        return out

    def __exit__(self, *exc: Any) -> None:
        self._f.close()
        short = {k: n for k, n in self.rows.items() if n != self.specs[k][0][0]}
        if exc[0] is None and short:
            # A chunk with rows never written would read as zeros: never rename it.
            want = {k: self.specs[k][0][0] for k in short}
            err = ValueError(f"{self.path}: rows written {short}, expected {want}")
            self._atomic.__exit__(ValueError, err, None)
            raise err
        checksums = self._checksums(self._tmp) if exc[0] is None else None
        self._atomic.__exit__(*exc)
        if exc[0] is not None:
            return
        info = {
            **self.meta,
            "n_tokens": self.specs["mask"][0][0],
            "n_valid": self.valid,
            "tensors": {
                k: {"shape": list(s), "dtype": str(d).removeprefix("torch.")}
                for k, (s, d) in self.specs.items()
            },
            "sha256": sha256_file(self.path),
            "bytes": self.path.stat().st_size,
            "checksums": checksums,
        }
        write_json(self.info_path, info)
        self.info = info


def write_chunk(
    path: str | Path,
    info_path: str | Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write a chunk held in memory (tests, small caches) through ChunkWriter."""
    specs = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    with ChunkWriter(path, info_path, specs, meta) as w:
        for k, v in tensors.items():
            w.write(k, 0, v)
    return w.info


@dataclass(frozen=True)
class ChunkInfo:
    path: Path
    n_tokens: int
    n_valid: int
    tensors: dict[str, dict[str, Any]]  # name -> {"shape", "dtype"}
    info_file: Path | None = None  # the sidecar, with the block checksums


def write_manifest(
    chunk_infos: list[str | Path], out: str | Path, identity: dict[str, Any]
) -> dict[str, Any]:
    """Collect per-chunk sidecar JSONs into one manifest (paths relative to it)."""
    out = Path(out)
    chunks = []
    for p in sorted(chunk_infos):
        info = read_json(p)
        # The block checksums stay in the sidecar, read by the job that reads the
        # chunk: at suite scale they are ~1e-6 of the cache, too much for one JSON.
        info.pop("checksums", None)
        info["file"] = os.path.relpath(Path(p).with_suffix(".safetensors"), out.parent)
        info["info_file"] = os.path.relpath(p, out.parent)
        chunks.append(info)
    manifest = {
        **identity,
        "chunks": chunks,
        "n_tokens": sum(c["n_tokens"] for c in chunks),
        "n_valid": sum(c["n_valid"] for c in chunks),
    }
    write_json(out, manifest)
    return manifest


def load_manifest(path: str | Path) -> tuple[dict[str, Any], list[ChunkInfo]]:
    path = Path(path)
    manifest = read_json(path)
    chunks = [
        ChunkInfo(
            path.parent / c["file"],
            c["n_tokens"],
            c["n_valid"],
            c["tensors"],
            path.parent / c["info_file"] if "info_file" in c else None,
        )
        for c in manifest["chunks"]
    ]
    return manifest, chunks
