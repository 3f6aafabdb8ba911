"""The activation store: chunk files, their manifest, a bucket-shuffling reader, and
the per-site normalisation scalar C.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import safe_open

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


class _Chunk:
    """One open, checked chunk; slices of a site are read lazily from the mmap, and
    each block of rows is verified against its checksum the first time it is read."""

    def __init__(
        self, info: ChunkInfo, site: str | tuple[str, ...], verify: bool = True
    ):
        """`site`: one site, or several whose rows are read side by side (a
        transcoder's input and target), concatenated along the features."""
        self.sites = (site,) if isinstance(site, str) else tuple(site)
        want = {x: info.tensors[x] for x in self.sites}
        check_chunk(info.path, {**want, "mask": info.tensors["mask"]})
        self.info = info
        self.file = safe_open(str(info.path), framework="pt")
        self.sums = self._checksums() if verify else None
        self.verified: set[tuple[str, int]] = set()
        mask = self.file.get_tensor("mask")
        if self.sums is not None:
            self._verify("mask", 0, mask)
        self.valid = torch.nonzero(mask).squeeze(1)
        if len(self.valid) != info.n_valid:
            raise StoreError(
                f"{info.path}: {len(self.valid)} unmasked tokens, manifest says "
                f"{info.n_valid}"
            )

    def _checksums(self) -> dict[str, Any] | None:
        if self.info.info_file is None:  # a manifest from before block checksums
            return None
        sums = read_json(self.info.info_file).get("checksums")
        if sums is not None and sums["algorithm"] != CHECKSUM:
            raise StoreError(
                f"{self.info.info_file}: checksums '{sums['algorithm']}', this version "
                f"reads '{CHECKSUM}'"
            )
        return sums

    def _verify(self, name: str, first: int, rows: torch.Tensor) -> None:
        """Check rows first.. of tensor `name` (whole blocks, or the tensor's tail)."""
        assert self.sums is not None
        per = self.sums["block_rows"][name]
        want = self.sums["blocks"][name]
        raw = rows.contiguous().view(torch.uint8).reshape(-1).numpy()
        row_bytes = raw.nbytes // max(len(rows), 1)
        for k in range(first // per, -(-(first + len(rows)) // per)):
            if (name, k) in self.verified:
                continue
            a = (k * per - first) * row_bytes
            if block_digest(raw[a : a + per * row_bytes].data) != want[k]:
                hi = min((k + 1) * per, self.info.n_tokens)
                raise StoreError(
                    f"{self.info.path}: rows {k * per}..{hi} of '{name}' differ from "
                    f"the {CHECKSUM} checksum written when the chunk was extracted "
                    f"(block {k} of {len(want)}): the file changed on disk since"
                )
            self.verified.add((name, k))

    def rows(self, a: int, b: int) -> torch.Tensor:
        """Unmasked activations a..b (in unmasked-row numbering) as float32, the
        sites side by side."""
        parts = [self._site_rows(site, a, b) for site in self.sites]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _site_rows(self, site: str, a: int, b: int) -> torch.Tensor:
        idx = self.valid[a:b]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if self.sums is not None:  # read whole checksum blocks
            per = self.sums["block_rows"][site]
            lo, hi = lo // per * per, min(-(-hi // per) * per, self.info.n_tokens)
        block = self.file.get_slice(site)[lo:hi]
        if self.sums is not None:
            self._verify(site, lo, block)
        x = block[idx - lo].float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x).all(dim=1)).nonzero()[0]) + a
            raise StoreError(
                f"{self.info.path}: non-finite values in '{site}' (unmasked row {bad})"
            )
        return x


class ActivationReader:
    """Batches of one site's unmasked activations, shuffled in buckets; with a
    `target_site` (a transcoder's), row-aligned pairs of two sites' activations from
    the same chunks, each divided by its own scalar (`pair`).

    The stream is a pure function of (seed, batch index): epoch e visits the chunks in
    a seeded order, cuts their unmasked rows into buckets of `bucket` activations and
    permutes each bucket with its own seeded generator. A trainer resumes at batch j
    with `batches(start=j)` without reading what came before. Memory: one bucket.
    """

    def __init__(
        self,
        manifest: str | Path,
        site: str,
        batch_size: int,
        bucket: int,
        seed: int = 0,
        scale: float = 1.0,
        verify: bool = True,
        target_site: str | None = None,
        target_scale: float = 1.0,
    ):
        """`verify=False` skips the block checksums (benchmarks/store.py measures
        what they cost)."""
        _, infos = load_manifest(manifest)
        sites = (site,) if target_site is None else (site, target_site)
        for name in sites:
            missing = [i.path.name for i in infos if name not in i.tensors]
            if missing:
                raise StoreError(
                    f"{manifest}: site '{name}' not in chunks {missing[:3]}",
                    "The cache was made for other sites: run Snakemake again (the "
                    "cache identity changed, so it re-extracts)",
                )
        self.infos = infos
        self.site = site
        self.sites = sites
        self.target_site = target_site
        self.target_scale = target_scale
        self.batch_size = batch_size
        self.bucket = max(bucket, batch_size)
        self.seed = seed
        self.scale = scale
        self.verify = verify
        self.n_valid = sum(i.n_valid for i in infos)
        if self.n_valid == 0:
            raise StoreError(f"{manifest}: no unmasked activations for '{site}'")
        self.d_in = infos[0].tensors[site]["shape"][1]
        self.d_out = infos[0].tensors[target_site or site]["shape"][1]
        self._open: dict[int, _Chunk] = {}
        self._cached: tuple[int, int, torch.Tensor] | None = None

    def _chunk(self, i: int) -> _Chunk:
        if i not in self._open:
            self._open[i] = _Chunk(self.infos[i], self.sites, self.verify)
        return self._open[i]

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.infos), generator=g).tolist()

    def _bucket(self, epoch: int, k: int) -> torch.Tensor:
        """Bucket k of epoch e: unmasked rows [k·B, (k+1)·B) of the epoch, permuted."""
        if self._cached and self._cached[:2] == (epoch, k):
            return self._cached[2]
        lo, hi = k * self.bucket, min((k + 1) * self.bucket, self.n_valid)
        parts, start = [], 0
        for ci in self._order(epoch):
            n = self.infos[ci].n_valid
            a, b = max(lo - start, 0), min(hi - start, n)
            if a < b:
                parts.append(self._chunk(ci).rows(a, b))
            start += n
            if start >= hi:
                break
        data = torch.cat(parts) if len(parts) > 1 else parts[0]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + k)
        data = data[torch.randperm(len(data), generator=g)]
        if self.target_site is None:
            if self.scale != 1.0:
                data /= self.scale
        else:
            data[:, : self.d_in] /= self.scale
            data[:, self.d_in :] /= self.target_scale
        self._cached = (epoch, k, data)
        return data

    def _range(self, p0: int, p1: int) -> torch.Tensor:
        """Rows p0..p1 of the endless stream (epochs back to back)."""
        parts = []
        while p0 < p1:
            epoch, pos = divmod(p0, self.n_valid)
            k, off = divmod(pos, self.bucket)
            data = self._bucket(epoch, k)
            take = min(p1 - p0, len(data) - off)
            parts.append(data[off : off + take])
            p0 += take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def batch(self, j: int) -> torch.Tensor:
        """Batch j (batch_size, d_in), float32; with a target site, (batch_size,
        d_in + d_out), the two sites side by side (`pair` splits them)."""
        return self._range(j * self.batch_size, (j + 1) * self.batch_size)

    def pair(self, j: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch j as (input, target): the target is None without a target site."""
        b = self.batch(j)
        if self.target_site is None:
            return b, None
        return b[:, : self.d_in], b[:, self.d_in :]

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        j = start
        while True:
            yield self.batch(j)
            j += 1


def normalization_scalars(manifest: str | Path, sites: list[str]) -> dict[str, Any]:
    """C per site with E‖x/C‖² = 1 over the unmasked training activations."""
    _, infos = load_manifest(manifest)
    sums = dict.fromkeys(sites, 0.0)
    count = 0
    for info in infos:
        for site in sites:
            chunk = _Chunk(info, site)
            for a in range(0, info.n_valid, READ_ROWS):
                x = chunk.rows(a, min(a + READ_ROWS, info.n_valid)).double()
                sums[site] += float(x.pow(2).sum())
        count += info.n_valid
    return {
        "tokens": count,
        "scale": {s: math.sqrt(sums[s] / count) for s in sites},
        "mean_squared_norm": {s: sums[s] / count for s in sites},
    }


def write_normalization(manifest: str | Path, sites: list[str], out: str | Path):
    result = normalization_scalars(manifest, sites)
    write_json(out, result)
    return result
