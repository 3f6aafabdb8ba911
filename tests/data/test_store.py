"""The activation store: chunk writing, manifest, the bucket-shuffling reader, file
checks, and the normalisation scalar."""

from __future__ import annotations

import math

import pytest
import torch

from saesuite.data.reader import ActivationReader, normalization_scalars
from saesuite.data.store import ChunkWriter, StoreError, write_chunk, write_manifest
from saesuite.spec.io import read_json, sha256_file

D = 6


def make_store(tmp_path, n_chunks=3, n_tokens=50, dtype=torch.float32):
    """Chunks whose site 'layer_0.res' row r of chunk c holds the value 1000c + r in
    every column, so every activation identifies itself; every 5th token is masked."""
    infos = []
    for c in range(n_chunks):
        rows = torch.arange(n_tokens, dtype=torch.float32) + 1000 * c
        mask = torch.arange(n_tokens) % 5 != 0
        tensors = {
            "layer_0.res": rows[:, None].repeat(1, D).to(dtype),
            "input_ids": torch.arange(n_tokens, dtype=torch.int32),
            "mask": mask,
        }
        base = tmp_path / f"chunk_{c:05d}"
        write_chunk(f"{base}.safetensors", f"{base}.json", tensors, {"chunk": c})
        infos.append(f"{base}.json")
    write_manifest(infos, tmp_path / "manifest.json", {"model": "fake"})
    return tmp_path / "manifest.json"


def expected_ids(n_chunks=3, n_tokens=50):
    return sorted(
        1000 * c + r for c in range(n_chunks) for r in range(n_tokens) if r % 5 != 0
    )


def test_one_epoch_visits_every_unmasked_activation_once(tmp_path):
    man = make_store(tmp_path)
    reader = ActivationReader(man, "layer_0.res", batch_size=10, bucket=25, seed=1)
    assert reader.n_valid == 120
    seen = torch.cat([reader.batch(j) for j in range(12)])
    assert seen.shape == (120, D)
    assert (seen == seen[:, :1]).all()
    assert sorted(seen[:, 0].long().tolist()) == expected_ids()
    # shuffled, not in file order
    assert seen[:, 0].tolist() != sorted(seen[:, 0].tolist())


def test_stream_is_a_function_of_seed_and_batch_index(tmp_path):
    man = make_store(tmp_path)
    a = ActivationReader(man, "layer_0.res", batch_size=7, bucket=30, seed=4)
    b = ActivationReader(man, "layer_0.res", batch_size=7, bucket=30, seed=4)
    first = [x.clone() for _, x in zip(range(40), a.batches())]  # > 2 epochs
    resumed = [x for _, x in zip(range(15), b.batches(start=25))]
    for x, y in zip(first[25:], resumed):
        assert torch.equal(x, y)
    other = ActivationReader(man, "layer_0.res", batch_size=7, bucket=30, seed=5)
    assert not torch.equal(other.batch(0), first[0])
    # epoch 1 is a different permutation of the same activations
    stream = torch.cat([a.batch(j) for j in range(35)])[:, 0]
    e0, e1 = stream[:120], stream[120:240]
    assert sorted(e1.long().tolist()) == sorted(e0.long().tolist()) == expected_ids()
    assert not torch.equal(e0, e1)


def test_bucket_bounds_the_mixing(tmp_path):
    man = make_store(tmp_path, n_chunks=2, n_tokens=100)
    reader = ActivationReader(man, "layer_0.res", batch_size=16, bucket=16, seed=0)
    # with buckets of one batch, each batch holds 16 rows adjacent in the epoch order
    ids = reader.batch(0)[:, 0].long()
    chunk = ids // 1000
    assert (chunk == chunk[0]).all()
    assert int(ids.max() - ids.min()) < 25


def test_scale_divides(tmp_path):
    man = make_store(tmp_path)
    plain = ActivationReader(man, "layer_0.res", batch_size=8, bucket=40, seed=0)
    scaled = ActivationReader(
        man, "layer_0.res", batch_size=8, bucket=40, seed=0, scale=4.0
    )
    torch.testing.assert_close(scaled.batch(3), plain.batch(3) / 4.0)


def test_normalization_scalar_matches_direct_computation(tmp_path):
    man = make_store(tmp_path, dtype=torch.bfloat16)
    out = normalization_scalars(man, ["layer_0.res"])
    vals = torch.tensor(expected_ids(), dtype=torch.float32).to(torch.bfloat16).double()
    want = math.sqrt(float((vals**2 * D).mean()))
    assert out["tokens"] == 120
    assert out["scale"]["layer_0.res"] == pytest.approx(want, rel=1e-9)
    reader = ActivationReader(
        man, "layer_0.res", batch_size=120, bucket=120, seed=0, scale=want
    )
    assert float(reader.batch(0).double().pow(2).sum(1).mean()) == pytest.approx(1.0)


def test_truncated_chunk_is_named(tmp_path):
    man = make_store(tmp_path)
    path = tmp_path / "chunk_00001.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    reader = ActivationReader(man, "layer_0.res", batch_size=120, bucket=120, seed=0)
    with pytest.raises(StoreError, match="chunk_00001.safetensors: truncated"):
        reader.batch(0)


def test_garbage_file_is_named(tmp_path):
    man = make_store(tmp_path)
    (tmp_path / "chunk_00002.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"
    )
    with pytest.raises(StoreError, match="chunk_00002.safetensors"):
        normalization_scalars(man, ["layer_0.res"])


def test_wrong_shape_or_dtype_is_named(tmp_path):
    man = make_store(tmp_path)
    bad = {
        "layer_0.res": torch.zeros(50, D + 1),
        "input_ids": torch.zeros(50, dtype=torch.int32),
        "mask": torch.ones(50, dtype=torch.bool),
    }
    from safetensors.torch import save_file

    save_file(bad, str(tmp_path / "chunk_00000.safetensors"))
    with pytest.raises(
        StoreError, match=r"chunk_00000.safetensors: tensor 'layer_0.res'"
    ):
        normalization_scalars(man, ["layer_0.res"])
    bad["layer_0.res"] = torch.zeros(50, D, dtype=torch.float16)
    save_file(bad, str(tmp_path / "chunk_00000.safetensors"))
    with pytest.raises(StoreError, match="float16"):
        normalization_scalars(man, ["layer_0.res"])


def test_non_finite_values_are_named(tmp_path):
    man = make_store(tmp_path, n_chunks=1)
    x = torch.ones(50, D)
    x[7, 2] = float("nan")
    base = tmp_path / "chunk_00000"
    tensors = {
        "layer_0.res": x,
        "input_ids": torch.zeros(50, dtype=torch.int32),
        "mask": torch.arange(50) % 5 != 0,
    }  # written as extraction writes it: its checksums match, the NaN is caught
    write_chunk(f"{base}.safetensors", f"{base}.json", tensors, {"chunk": 0})
    with pytest.raises(StoreError, match="chunk_00000.safetensors: non-finite"):
        normalization_scalars(man, ["layer_0.res"])


def flip_byte(path, offset: int) -> None:
    """One byte of `path` inverted in place, size and modification time kept."""
    import os

    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_flipped_byte_in_a_chunk_is_caught_naming_it(tmp_path, monkeypatch, dtype):
    """Issue 18, item 1: one byte flipped in the data region of a chunk (a finite
    value still) stops the reader with the chunk, the rows and what to do; an intact
    cache reads the same as without verification. Blocks are small here (4 rows) so
    that the flip sits in a middle block."""
    import json
    import struct

    import saesuite.data.store as store

    monkeypatch.setattr(store, "CHECKSUM_BLOCK_BYTES", 4 * D * dtype.itemsize)
    man = make_store(tmp_path, n_chunks=2, dtype=dtype)
    info = read_json(tmp_path / "chunk_00001.json")
    assert info["checksums"]["block_rows"]["layer_0.res"] == 4
    assert len(info["checksums"]["blocks"]["layer_0.res"]) == 13  # ceil(50 / 4)
    assert "checksums" not in read_json(man)["chunks"][1]  # sidecars only
    clean = ActivationReader(man, "layer_0.res", 10, 1000, seed=3).batch(7)

    path = tmp_path / "chunk_00001.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    start = 8 + n + header["layer_0.res"]["data_offsets"][0]
    row_bytes = D * dtype.itemsize
    flip_byte(path, start + 21 * row_bytes)  # row 21: block 5, a low mantissa byte
    with pytest.raises(StoreError) as err:
        for j in range(12):  # one epoch: 80 unmasked rows in batches of 10
            ActivationReader(man, "layer_0.res", 10, 1000, seed=3).batch(j)
    msg = str(err.value)
    assert "chunk_00001.safetensors: rows 20..24 of 'layer_0.res'" in msg
    assert "xxh3_64" in msg and "Delete that chunk" in msg
    with pytest.raises(StoreError, match="rows 20..24"):
        normalization_scalars(man, ["layer_0.res"])
    flip_byte(path, start + 21 * row_bytes)  # restored: reads as before
    again = ActivationReader(man, "layer_0.res", 10, 1000, seed=3).batch(7)
    assert torch.equal(again, clean)


def test_a_flipped_mask_byte_is_caught(tmp_path):
    import json
    import struct

    man = make_store(tmp_path, n_chunks=1)
    path = tmp_path / "chunk_00000.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    flip_byte(path, 8 + n + header["mask"]["data_offsets"][0] + 3)
    with pytest.raises(StoreError, match="rows 0..50 of 'mask'"):
        ActivationReader(man, "layer_0.res", 10, 1000).batch(0)


def test_checksums_of_rows_written_out_of_order_equal_streamed_ones(tmp_path):
    """The writer checksums rows as they stream in; rows written out of order are
    checksummed from the file: both give the same digests."""
    import saesuite.data.store as store

    x = torch.randn(50, D)
    specs = {"s": ((50, D), torch.float32), "mask": ((50,), torch.bool)}
    infos = []
    for name, order in (("a", [0, 20, 40]), ("b", [40, 0, 20])):
        with ChunkWriter(tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json",
                         specs, {}) as w:  # fmt: skip
            for r in order:
                w.write("s", r, x[r : r + 20])
            w.write("mask", 0, torch.ones(50, dtype=torch.bool))
        infos.append(w.info["checksums"])
    assert infos[0] == infos[1]
    per = infos[0]["block_rows"]["s"]
    want = [
        store.block_digest(x[i : i + per].numpy().tobytes()) for i in range(0, 50, per)
    ]
    assert infos[0]["blocks"]["s"] == want


def test_missing_site_and_missing_file(tmp_path):
    man = make_store(tmp_path)
    with pytest.raises(StoreError, match="layer_3.att"):
        ActivationReader(man, "layer_3.att", batch_size=4, bucket=8)
    (tmp_path / "chunk_00000.safetensors").unlink()
    with pytest.raises(StoreError, match="chunk_00000.safetensors: missing"):
        normalization_scalars(man, ["layer_0.res"])


def test_manifest_lists_chunks_relative(tmp_path):
    from saesuite.spec.io import read_json

    man = read_json(make_store(tmp_path))
    assert [c["file"] for c in man["chunks"]] == [
        f"chunk_{i:05d}.safetensors" for i in range(3)
    ]
    assert man["n_valid"] == 120 and man["n_tokens"] == 150
    assert all(len(c["sha256"]) == 64 for c in man["chunks"])


def test_chunk_written_row_by_row_reads_back_with_safetensors(tmp_path):
    """ChunkWriter's own header and layout, written in out-of-order row blocks, is what
    the safetensors library reads; its sidecar counts come from the mask."""
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 7, generator=g).bfloat16()  # odd width: alignment matters
    ids = torch.arange(40, dtype=torch.int32)
    mask = torch.rand(40, generator=g) > 0.3
    specs = {
        "mask": ((40,), torch.bool),
        "layer_1.res": ((40, 7), torch.bfloat16),
        "input_ids": ((40,), torch.int32),
    }
    out = tmp_path / "c.safetensors"
    with ChunkWriter(out, tmp_path / "c.json", specs, {"chunk": 3}) as w:
        for r0 in (24, 0, 8, 16, 32):
            w.write("layer_1.res", r0, acts[r0 : r0 + 8])
        w.write("mask", 0, mask)
        w.write("input_ids", 0, ids)
    back = load_file(str(out))
    assert torch.equal(back["layer_1.res"], acts)
    assert torch.equal(back["input_ids"], ids) and torch.equal(back["mask"], mask)
    info = read_json(tmp_path / "c.json")
    assert info["n_valid"] == int(mask.sum()) and info["n_tokens"] == 40
    assert info["tensors"]["layer_1.res"] == {"shape": [40, 7], "dtype": "bfloat16"}
    assert info["sha256"] == sha256_file(out) and info["chunk"] == 3


def test_chunk_writer_refuses_bad_rows_and_leaves_nothing_on_error(tmp_path):
    specs = {"mask": ((4,), torch.bool), "x": ((4, 2), torch.float32)}
    out = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match="'x': rows 3..5 past 4"):
        with ChunkWriter(out, tmp_path / "c.json", specs, {}) as w:
            w.write("x", 0, torch.zeros(3, 2))
            w.write("x", 3, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="'x': got torch.float16"):
        with ChunkWriter(out, tmp_path / "c.json", specs, {}) as w:
            w.write("x", 0, torch.zeros(4, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"rows written \{'x': 3\}, expected"):
        with ChunkWriter(out, tmp_path / "c.json", specs, {}) as w:
            w.write("mask", 0, torch.ones(4, dtype=torch.bool))
            w.write("x", 0, torch.zeros(3, 2))  # one row never written
    assert list(tmp_path.iterdir()) == []


def test_chunk_bytes_are_reproducible(tmp_path):
    tensors = {
        "layer_0.res": torch.arange(12.0).reshape(4, 3),
        "input_ids": torch.arange(4, dtype=torch.int32),
        "mask": torch.tensor([True, False, True, True]),
    }
    for name in ("a", "b"):
        write_chunk(
            tmp_path / f"{name}.st", tmp_path / f"{name}.json", tensors, {"k": 1}
        )
    assert (tmp_path / "a.st").read_bytes() == (tmp_path / "b.st").read_bytes()


def test_a_transcoders_pairs_are_row_aligned_and_scaled_apart(tmp_path):
    """A transcoder reads its input and target site from the same chunks: row i of
    the input batch and row i of the target batch are the same token, each divided
    by its own site's scalar, in the same shuffled order as the input alone."""
    infos = []
    for c in range(3):
        ids = torch.arange(50, dtype=torch.float32) + 1000 * c
        tensors = {
            "layer_0.mlp_in": ids[:, None].repeat(1, D),
            "layer_0.mlp": -ids[:, None].repeat(1, D + 2),  # another width
            "input_ids": torch.arange(50, dtype=torch.int32),
            "mask": torch.arange(50) % 5 != 0,
        }
        base = tmp_path / f"chunk_{c:05d}"
        write_chunk(f"{base}.safetensors", f"{base}.json", tensors, {"chunk": c})
        infos.append(f"{base}.json")
    man = write_manifest(infos, tmp_path / "manifest.json", {"model": "fake"})
    assert man["n_valid"] == 120
    alone = ActivationReader(tmp_path / "manifest.json", "layer_0.mlp_in", 16, 40,
                             seed=5, scale=2.0)  # fmt: skip
    pairs = ActivationReader(tmp_path / "manifest.json", "layer_0.mlp_in", 16, 40,
                             seed=5, scale=2.0, target_site="layer_0.mlp",
                             target_scale=4.0)  # fmt: skip
    assert (pairs.d_in, pairs.d_out) == (D, D + 2)
    seen = []
    for j in range(15):  # two epochs
        x, y = pairs.pair(j)
        assert x.shape == (16, D) and y.shape == (16, D + 2)
        torch.testing.assert_close(x, alone.pair(j)[0])
        torch.testing.assert_close(-4.0 * y[:, :1], 2.0 * x[:, :1])
        seen += (2.0 * x[:, 0]).tolist()
    assert sorted(seen[:120]) == expected_ids()
    assert alone.pair(0)[1] is None


def test_a_reader_of_many_sites_serves_them_row_aligned(tmp_path):
    """ActivationReader.of_sites (a cross-layer dictionary's 2L sites): each site's
    columns are that site's own reader's batch divided by its own scalar, rows
    aligned; one and two sites read as the plain and the pair reader do."""
    infos = []
    for c in range(3):
        rows = torch.arange(50, dtype=torch.float32) + 1000 * c
        tensors = {f"layer_{k}.res": (k + 1) * rows[:, None].repeat(1, D + k)
                   for k in range(3)}  # fmt: skip
        tensors |= {"input_ids": torch.arange(50, dtype=torch.int32),
                    "mask": torch.arange(50) % 5 != 0}  # fmt: skip
        base = tmp_path / f"chunk_{c:05d}"
        write_chunk(f"{base}.safetensors", f"{base}.json", tensors, {"chunk": c})
        infos.append(f"{base}.json")
    man = tmp_path / "manifest.json"
    write_manifest(infos, man, {"model": "fake"})
    sites = [(f"layer_{k}.res", 2.0**k) for k in range(3)]
    many = ActivationReader.of_sites(man, sites, 8, 40, seed=3)
    assert many.widths == (D, D + 1, D + 2)
    for j in (0, 7, 20):  # 20: the second epoch
        parts = many.split(many.batch(j))
        for (name, scale), part in zip(sites, parts, strict=True):
            one = ActivationReader(man, name, 8, 40, seed=3, scale=scale)
            torch.testing.assert_close(part, one.batch(j))
        # rows aligned: row r of every site is the same token ((k + 1)·id / 2^k)
        torch.testing.assert_close(parts[1][:, 0], parts[0][:, 0])
        torch.testing.assert_close(parts[2][:, 0] * 4 / 3, parts[0][:, 0])
    pair = ActivationReader(man, "layer_0.res", 8, 40, seed=3, scale=1.0,
                            target_site="layer_1.res", target_scale=2.0)  # fmt: skip
    two = ActivationReader.of_sites(man, sites[:2], 8, 40, seed=3)
    assert torch.equal(two.batch(5), pair.batch(5))
    with pytest.raises(StoreError, match="'layer_9.res' not in chunks"):
        ActivationReader.of_sites(man, [*sites, ("layer_9.res", 1.0)], 8, 40)
