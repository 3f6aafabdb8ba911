"""Training one cross-layer transcoder from a cache (issue 37, item 1): on synthetic
activations whose MLP outputs are sparse maps of the inputs of their own and earlier
layers it learns (held-out FVU per layer well under that of its first step); its
released weights take raw activations and predict what the trained state predicts
on scaled ones, scaled back; a stop at any step resumes bit for bit; a checkpoint of
another config is not resumed; a per-layer dictionary is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saesuite.data.reader import write_normalization
from saesuite.data.store import write_chunk, write_manifest
from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.sae.clt_train import Preempted, load_clt, train_clt
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import read_json
from saesuite.spec.jobs import TrainJob
from saesuite.spec.sections import TrainConfig

L, D, N = 3, 12, 4096
TRAIN = TrainConfig.defaults({
    "batch_size": 128, "lr": 1e-2, "lr_warmup_steps": 0, "lr_decay": "cosine",
    "lambda_warmup_steps": 0, "checkpoint_every": 7, "log_every": 5,
    "device": "cpu", "encoder_init_scale": 1.0, "max_norm_multiple": 5,
})  # fmt: skip


def sites(kind: str) -> list[str]:
    return [f"layer_{i}.{kind}" for i in range(L)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """x_i: sparse mixes of 3 of 24 atoms per layer (scale 2 + i, so every site has
    its own scalar); y_j = Σ_{i≤j} x_i M_ij / (j + 1)."""
    root = tmp_path_factory.mktemp("clt_store")
    g = torch.Generator().manual_seed(0)
    acts = {}
    for i in range(L):
        atoms = torch.nn.functional.normalize(torch.randn(24, D, generator=g), dim=1)
        codes = (torch.rand(N, 24, generator=g) < 3 / 24) * torch.rand(
            N, 24, generator=g
        )
        acts[f"layer_{i}.mlp_in"] = (2.0 + i) * codes @ atoms
    maps = torch.randn(L, L, D, D, generator=g) / D**0.5
    for j in range(L):
        y = sum(acts[f"layer_{i}.mlp_in"] @ maps[i, j] for i in range(j + 1))
        acts[f"layer_{j}.mlp"] = y / (j + 1)
    for i in range(L):  # residual streams for a crosscoder: a sum of the inputs
        acts[f"layer_{i}.res"] = sum(acts[f"layer_{k}.mlp_in"] for k in range(i + 1))
    mask = torch.ones(N, dtype=torch.bool)
    mask[::64] = False
    write_chunk(f"{root}/chunk_00000.safetensors", f"{root}/chunk_00000.json",
                {**acts, "input_ids": torch.zeros(N, dtype=torch.int32), "mask": mask},
                {"chunk": 0})  # fmt: skip
    write_manifest([f"{root}/chunk_00000.json"], root / "manifest.json", {"model": "s"})
    write_normalization(root / "manifest.json",
                        sites("mlp_in") + sites("mlp") + sites("res"),
                        root / "norm.json")  # fmt: skip
    return root, acts


def job(store_root: Path, out: Path, tokens: int = 128 * 200, kind: str = "clt",
        **train) -> TrainJob:  # fmt: skip
    clt = Dictionary.spanning("s", kind, list(range(L)), 64, tokens, lambda_=0.01,
                              target_l0=4)  # fmt: skip
    return TrainJob(
        model="s", root=str(out), seed=3, shuffle_bucket=2048,
        train=TRAIN.replace(**train), identity={"model": "s"}, dictionaries=(clt,),
        manifest=str(store_root / "manifest.json"),
        normalization=str(store_root / "norm.json"),
        checkpoint=str(out / "ckpt.pt"),
    )  # fmt: skip


def test_a_clt_learns_the_cross_layer_map_and_releases_raw_units(store, tmp_path):
    root, acts = store
    j = job(root, tmp_path)
    info = train_clt(j)
    folder = Path(j.out_dir(j.dictionaries[0]))
    log = [__import__("json").loads(x) for x in (folder / "train_log.jsonl").read_text()
           .splitlines()]  # fmt: skip
    first, last = log[0], info["final"]
    assert all(b < 0.2 * a for a, b in zip(first["fvu_by_layer"],
                                           last["fvu_by_layer"]))  # fmt: skip
    assert all(2 < l0 < 10 for l0 in last["l0_by_layer"])  # target 4
    assert info["reads"] == sites("mlp_in") and info["writes"] == sites("mlp")
    # the release folds each site's scalar: raw in, raw out
    scale = read_json(root / "norm.json")["scale"]
    c = torch.tensor([scale[s] for s in sites("mlp_in")])
    d = torch.tensor([scale[s] for s in sites("mlp")])
    state = load_file(folder / "train_state.safetensors")
    trained = CrossLayerTranscoder(L, D, 64)
    trained.load_state_dict(state)
    x = torch.stack([acts[s][:256] for s in sites("mlp_in")], dim=1)
    with torch.no_grad():
        want = trained(x / c[:, None]) * d[:, None]
        got = load_clt(folder)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    y = torch.stack([acts[s][:256] for s in sites("mlp")], dim=1)
    fvu = (y - got).pow(2).sum((0, 2)) / (y - y.mean(0)).pow(2).sum((0, 2))
    assert (fvu < 0.2).all()
    assert not Path(j.checkpoint).exists()


def test_a_stop_at_any_step_resumes_bit_identical(store, tmp_path):
    root, _ = store
    whole = job(root, tmp_path / "whole")
    train_clt(whole)
    for stop in (3, 7, 12):
        cut = job(root, tmp_path / f"cut{stop}")
        with pytest.raises(Preempted):
            train_clt(cut, stop_at=lambda step, s=stop: step == s)
        assert Path(cut.checkpoint).exists()
        train_clt(cut)
        for name in ("train_state.safetensors", "sae.safetensors", "train_log.jsonl"):
            a = Path(whole.out_dir(whole.dictionaries[0])) / name
            b = Path(cut.out_dir(cut.dictionaries[0])) / name
            assert a.read_bytes() == b.read_bytes(), (stop, name)


def test_another_configs_checkpoint_is_not_resumed(store, tmp_path):
    root, _ = store
    a = job(root, tmp_path / "a")
    with pytest.raises(Preempted):
        train_clt(a, stop_at=lambda step: step == 5)
    b = replace(job(root, tmp_path / "a", lr=1e-3), checkpoint=a.checkpoint)
    fresh = job(root, tmp_path / "fresh", lr=1e-3)
    train_clt(b)
    train_clt(fresh)
    name = "train_state.safetensors"
    assert (Path(b.out_dir(b.dictionaries[0])) / name).read_bytes() == (
        Path(fresh.out_dir(fresh.dictionaries[0])) / name).read_bytes()  # fmt: skip


def test_a_per_layer_dictionary_is_refused(store, tmp_path):
    root, _ = store
    tc = Dictionary.of("s", "transcoder", 0, "mlp", 64, 1000, lambda_=0.01)
    with pytest.raises(ValueError, match="not a cross-layer dictionary"):
        train_clt(replace(job(root, tmp_path), dictionaries=(tc,)))


def test_a_crosscoder_trains_on_each_residual_stream_read_once(store, tmp_path):
    """A weakly causal crosscoder over the three residual streams: each site read
    once (reads and writes are the same sites), and its released weights, raw in and
    raw out, reconstruct every layer's stream from its own and earlier latents."""
    root, acts = store
    j = job(root, tmp_path, kind="crosscoder")
    info = train_clt(j)
    assert info["reads"] == info["writes"] == sites("res")
    x = torch.stack([acts[s][:256] for s in sites("res")], dim=1)
    with torch.no_grad():
        got = load_clt(Path(j.out_dir(j.dictionaries[0])))(x)
    fvu = (x - got).pow(2).sum((0, 2)) / (x - x.mean(0)).pow(2).sum((0, 2))
    assert (fvu < 0.3).all(), fvu
