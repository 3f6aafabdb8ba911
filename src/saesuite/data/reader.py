"""Reading the activation store (rule `normalize`, the trainer): a chunk's rows
memory-mapped and verified block by block the first time a job reads them, a
bucket-shuffling reader of one site (or a row-aligned pair of sites), and the per-site
normalisation scalar C. Chunks and their manifest are written by `data.store`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saesuite.data.store import (
    CHECKSUM,
    READ_ROWS,
    ChunkInfo,
    StoreError,
    block_digest,
    check_chunk,
    load_manifest,
)
from saesuite.spec.io import read_json, write_json


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
        *,
        more_sites: Sequence[tuple[str, float]] = (),
    ):
        """`verify=False` skips the block checksums (benchmarks/store.py measures
        what they cost). `more_sites`: further (site, scale) pairs after the target's
        (`of_sites`)."""
        _, infos = load_manifest(manifest)
        pairs = [(site, scale)]
        if target_site is not None:
            pairs.append((target_site, target_scale))
        pairs += list(more_sites)
        sites = tuple(name for name, _ in pairs)
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
        self.scales = tuple(c for _, c in pairs)
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
        self.widths = tuple(infos[0].tensors[s]["shape"][1] for s in sites)
        self.d_in = self.widths[0]
        self.d_out = self.widths[1] if len(sites) > 1 else self.widths[0]
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
        if len(self.sites) == 1:
            if self.scale != 1.0:
                data /= self.scale
        else:  # each site's columns by its own scalar
            lo = 0
            for w, c in zip(self.widths, self.scales, strict=True):
                data[:, lo : lo + w] /= c
                lo += w
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

    @classmethod
    def of_sites(
        cls,
        manifest: str | Path,
        sites: Sequence[tuple[str, float]],
        batch_size: int,
        bucket: int,
        seed: int = 0,
        verify: bool = True,
    ) -> ActivationReader:
        """Row-aligned batches of any number of sites (a cross-layer dictionary's
        inputs and outputs), each divided by its own scalar: (site, scale) pairs, in
        the order of their columns (`split`). One site reads as the plain reader
        does and two as a transcoder's, bit for bit."""
        (first, c0), *rest = sites
        target, c1 = rest[0] if rest else (None, 1.0)
        return cls(manifest, first, batch_size, bucket, seed, c0, verify, target, c1,
                   more_sites=rest[1:])  # fmt: skip

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A batch's columns, one tensor per site (views)."""
        return tuple(batch.split(list(self.widths), dim=1))

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
