"""The activation store: chunk writing, manifest, the bucket-shuffling reader, file
checks, and the normalisation scalar."""

from __future__ import annotations

import math

import pytest
import torch

from saesuite.data.store import (
    ActivationReader,
    ChunkWriter,
    StoreError,
    normalization_scalars,
    write_chunk,
    write_manifest,
)
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
    from safetensors.torch import save_file

    save_file(
        {
            "layer_0.res": x,
            "input_ids": torch.zeros(50, dtype=torch.int32),
            "mask": torch.arange(50) % 5 != 0,
        },
        str(tmp_path / "chunk_00000.safetensors"),
    )
    with pytest.raises(StoreError, match="chunk_00000.safetensors: non-finite"):
        normalization_scalars(man, ["layer_0.res"])


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
