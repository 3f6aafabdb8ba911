"""Release folders in every layout, loaded by SAELens itself: its own loader for the
saelens layout and its Gemma Scope 1 and 2 loaders for theirs, reading from a local
Hugging Face cache; SAELens's reconstruction of random activations equals ours.
Also width labels, the canonical SAE, hook points, folder collisions, the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import client, hub_cache, release_meta
from safetensors.torch import save_file

from saesuite.release.build import build_release, canonical
from saesuite.release.layouts import LAYOUTS, Entry, folder_paths
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import read_json, sha256_file
from saesuite.spec.releases import width_label
from saesuite.spec.sites import hf_hook_point

REPO = "someone/saesuite-tiny-res"


def test_width_labels_follow_gemma_scope():
    labels = {w: width_label(w) for w in (4096, 16384, 65536, 131072, 262144, 2**20)}
    assert labels == {
        4096: "4k",
        16384: "16k",
        65536: "65k",
        131072: "131k",
        262144: "262k",
        2**20: "1m",
    }


def test_hook_points():
    assert hf_hook_point("gemma3_text", 12, "res") == "model.layers.12.output"
    assert hf_hook_point("gemma2", 3, "att") == "model.layers.3.self_attn.o_proj.input"
    assert (
        hf_hook_point("gemma3_text", 5, "mlp")
        == "model.layers.5.post_feedforward_layernorm.output"
    )
    assert hf_hook_point("llama", 1, "mlp") == "model.layers.1.mlp.output"


def entry(tmp_path, layer: int, value: float, l0: float, d_in=64, width=128, seed=0):
    torch.manual_seed(seed)
    sae = JumpReLUSAE(d_in, width, apply_b_dec_to_input=False).initialize()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        sae.threshold_raw.uniform_(0.05, 0.3)
    folder = tmp_path / "trained" / f"{layer}_{value}"
    folder.mkdir(parents=True)
    save_file(sae.release_tensors(), str(folder / "sae.safetensors"))
    spec = Dictionary.of("tiny", "sae", layer, "res", width, 1000, lambda_=1.0,
                         target_l0=value)  # fmt: skip
    assert spec.path == f"layer_{layer}/res/width_{width}/l0_{value:g}"
    metrics = {
        "l0": l0,
        "fvu": 0.2,
        "delta_loss": 0.1,
        "loss_recovered": 0.9,
        "tokens": 1000,
        "loss_tokens": 100,
    }
    return Entry(spec, str(folder), metrics), sae


def meta(n_layers: int = 4) -> dict:
    return release_meta(n_layers)


def test_canonical_is_closest_to_the_target(tmp_path):
    es = [
        entry(tmp_path, 1, v, l0, seed=i)[0]
        for i, (v, l0) in enumerate([(20, 18.0), (80, 91.0), (150, 140.0)])
    ]
    es.append(entry(tmp_path, 2, 20, 30.0, seed=9)[0])
    assert canonical(es, 100) == {
        "layer_1/res/width_128/l0_80",
        "layer_2/res/width_128/l0_20",
    }
    assert canonical(es, 150) == {
        "layer_1/res/width_128/l0_150",
        "layer_2/res/width_128/l0_20",
    }


def test_saes_with_the_same_rounded_l0_get_distinct_folders(tmp_path):
    a, _ = entry(tmp_path, 1, 20, 20.4)
    b, _ = entry(tmp_path, 1, 21, 19.6, seed=1)
    c, _ = entry(tmp_path, 2, 20, 19.6, seed=2)
    out = tmp_path / "release"
    build_release(repo=REPO, layout="gemma-scope", entries=[a, b, c], meta=meta(),
                  canonical_l0=100, out_dir=out)  # fmt: skip
    paths = sorted(r["path"] for r in read_json(out / "index.json")["saes"])
    assert paths == [
        "layer_1/width_128/average_l0_20_target_20",
        "layer_1/width_128/average_l0_20_target_21",
        "layer_2/width_128/average_l0_20",
    ]
    assert not list(tmp_path.glob(".release.*"))  # the build folder is gone


def test_skip_transcoders_with_the_same_rounded_l0_keep_affine_last():
    """Gemma Scope 2 ends a skip-transcoder's folder with _affine: the sparsity
    setting that tells two apart goes before it."""
    made = [
        Entry(Dictionary.of("tiny", "skip_transcoder", 0, "mlp", 128, 1000,
                            lambda_=1.0, target_l0=v), "unused", {"l0": 21.2})
        for v in (8, 16)
    ]  # fmt: skip
    assert sorted(folder_paths("gemma-scope-2", made, True)) == [
        "transcoder_all/layer_0_width_128_l0_21_target_16_affine",
        "transcoder_all/layer_0_width_128_l0_21_target_8_affine",
    ]


def test_a_failed_build_leaves_no_folder(tmp_path):
    a, _ = entry(tmp_path, 1, 20, 20.4)
    b, _ = entry(tmp_path, 2, 20, 19.6, seed=1)
    (Path(b.sae_dir) / "sae.safetensors").unlink()  # fails after a's files exist
    out = tmp_path / "release"
    with pytest.raises(FileNotFoundError):
        build_release(repo=REPO, layout="saelens", entries=[a, b], meta=meta(),
                      canonical_l0=100, out_dir=out)  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".release.*"))
    with pytest.raises(ValueError, match="release.layout"):
        build_release(repo=REPO, layout="npz", entries=[a], meta=meta(),
                      canonical_l0=100, out_dir=out)  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saelens_loads_every_layout_and_reconstructs_like_us(
    layout, tmp_path, monkeypatch
):
    client("sae_lens")
    from sae_lens import SAE

    # SAELens's Gemma Scope 1 loader reads the model size from the repo id and only
    # knows Gemma 2's (2b, 9b, 27b); d_in comes from the registry entry's overrides.
    repo = "someone/saesuite-gemma-2-2b-res" if layout == "gemma-scope" else REPO
    made = [
        entry(tmp_path, L, v, l0, seed=i)
        for i, (L, v, l0) in enumerate([(1, 20, 21.3), (1, 80, 77.8), (2, 20, 19.6)])
    ]
    out = tmp_path / "release"
    manifest = build_release(
        repo=repo,
        layout=layout,
        entries=[e for e, _ in made],
        meta=meta(),
        canonical_l0=100,
        out_dir=out,
    )
    index = read_json(out / "index.json")["saes"]
    assert [r["canonical"] for r in index] == [False, True, True]
    assert {r["path"] for r in index} == {
        "gemma-scope": {
            "layer_1/width_128/average_l0_21",
            "layer_1/width_128/average_l0_78",
            "layer_2/width_128/average_l0_20",
        },
        "gemma-scope-2": {
            "resid_post/layer_1_width_128_l0_21",
            "resid_post/layer_1_width_128_l0_78",
            "resid_post/layer_2_width_128_l0_20",
        },
        "saelens": {
            "layer_1_res_width_128_l0_21",
            "layer_1_res_width_128_l0_78",
            "layer_2_res_width_128_l0_20",
        },
    }[layout]
    # The manifest lists every other file with its sha256.
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"release_manifest.json"}
    for name, f in manifest["files"].items():
        assert sha256_file(out / name) == f["sha256"]
    registry = yaml.safe_load((out / "pretrained_saes.yaml").read_text())
    reg = registry[repo.split("/")[1]]
    assert reg["repo_id"] == repo and len(reg["saes"]) == 3
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: saelens\n")
    assert all(r["path"] in card for r in index)

    # The model card's loading snippet, run as a user would (for each SAE's path).
    hub_cache(tmp_path, repo, out, monkeypatch)
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    shown = next(r for r in index if r["canonical"])["path"]
    x = torch.randn(50, 64) * 2
    for (e, ours), row in zip(
        made, sorted(index, key=lambda r: r["trained_as"]), strict=True
    ):
        assert row["trained_as"] == e.dictionary.path
        scope: dict = {}
        exec(snippet.replace(f'"{shown}"', f'"{row["path"]}"'), scope)
        loaded = [scope["sae"]]
        if layout == "saelens":  # and from the folder itself
            loaded.append(SAE.load_from_disk(out / row["path"]))
        for sae in loaded:
            with torch.no_grad():
                theirs = sae.decode(sae.encode(x))
                mine = ours(x)
                assert (ours.encode(x) != 0).any()
            torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)
            assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 128
    if layout == "gemma-scope-2":
        cfg = json.loads((out / index[0]["path"] / "config.json").read_text())
        assert cfg["hf_hook_point_in"] == "model.layers.1.output"


def test_a_dictionary_writing_another_site_is_not_released(tmp_path):
    """A release member's identity comes back from the rule's JSON through
    Dictionary.from_dict, which refuses sites its kind does not relate: no release
    folder can be built for it."""
    from saesuite.spec.jobs import ReleaseMember

    d = Dictionary.of("tiny", "sae", 1, "mlp", 64, 1000, lambda_=1.0, target_l0=8)
    member = ReleaseMember(d, "d", "e.json", 0).to_dict()
    member["dictionary"]["reads"] = ["layer_1.mlp_in"]
    with pytest.raises(ValueError, match=r"reads \['layer_1.mlp_in'\] and writes"):
        ReleaseMember.from_dict(member)


def transcoder_entry(tmp_path, kind: str, l0: float, seed: int, width: int = 128):
    torch.manual_seed(seed)
    tc = JumpReLUSAE(64, width, skip=kind == "skip_transcoder",
                     apply_b_dec_to_input=False).initialize()  # fmt: skip
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.1)
        tc.b_dec.normal_(0, 0.5)
        tc.threshold_raw.uniform_(0.05, 0.3)
        if tc.skip:
            tc.W_skip.normal_(0, 0.2)
    folder = tmp_path / "trained" / kind
    folder.mkdir(parents=True)
    save_file(tc.release_tensors(), str(folder / "sae.safetensors"))
    spec = Dictionary.of("tiny", kind, 1, "mlp", width, 1000, lambda_=1.0,
                         target_l0=20)  # fmt: skip
    assert spec.path == f"layer_1/{kind}/width_{width}/l0_20"
    metrics = {"l0": l0, "fvu": 0.3, "delta_loss": 0.1, "loss_recovered": 0.8,
               "tokens": 1000, "loss_tokens": 100}  # fmt: skip
    return Entry(spec, str(folder), metrics), tc


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saelens_loads_transcoders_in_every_layout_and_predicts_like_us(
    layout, tmp_path, monkeypatch
):
    """Plain and skip-transcoders (Gemma Scope 1's layout: plain only, it has no
    skip connection) released, then loaded by SAELens from a local Hub cache with the
    model card's snippet: its transcoder classes predict the MLP output as ours do,
    skip connection included, and the hook points name the MLP's input and output."""
    client("sae_lens")
    kinds = ["transcoder"] + ([] if layout == "gemma-scope" else ["skip_transcoder"])
    # SAELens's Gemma Scope 1 transcoder reader knows Gemma Scope's widths only
    width = 4096 if layout == "gemma-scope" else 128
    made = [transcoder_entry(tmp_path, k, 20.4 + i, i, width)
            for i, k in enumerate(kinds)]  # fmt: skip
    repo = ("someone/saesuite-gemma-2-2b-transcoder" if layout == "gemma-scope"
            else "someone/saesuite-tiny-transcoder")  # fmt: skip
    out = tmp_path / "release"
    build_release(repo=repo, layout=layout, entries=[e for e, _ in made],
                  meta=meta(), canonical_l0=20, out_dir=out)  # fmt: skip
    index = read_json(out / "index.json")["saes"]
    row_of = {r["kind"]: r for r in index}
    assert sorted(row_of) == sorted(kinds) and len(index) == len(kinds)
    assert all(r["canonical"] for r in index)  # one per kind
    assert {r["path"] for r in index} == {
        "gemma-scope": {"layer_1/width_4k/average_l0_20"},
        "gemma-scope-2": {"transcoder/layer_1_width_128_l0_20",
                          "transcoder/layer_1_width_128_l0_21_affine"},
        "saelens": {"layer_1_transcoder_width_128_l0_20",
                    "layer_1_skip_transcoder_width_128_l0_21"},
    }[layout]  # fmt: skip
    assert index[0]["hf_hook"] == "model.layers.1.pre_feedforward_layernorm.output"
    assert index[0]["hf_hook_out"] == (
        "model.layers.1.post_feedforward_layernorm.output"
    )
    card = (out / "README.md").read_text()
    hub_cache(tmp_path, repo, out, monkeypatch)
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    shown = next(r for r in index if r["canonical"])["path"]
    x = torch.randn(50, 64) * 2
    for e, ours in made:
        row = row_of[e.dictionary.kind]
        scope: dict = {}
        exec(snippet.replace(f'"{shown}"', f'"{row["path"]}"'), scope)
        theirs = scope["sae"]
        assert (
            type(theirs).__name__
            == {
                "transcoder": "JumpReLUTranscoder",
                "skip_transcoder": "JumpReLUSkipTranscoder",
            }[e.dictionary.kind]
        )
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
        assert (theirs.cfg.d_in, theirs.cfg.d_sae, theirs.cfg.d_out) == (64, width, 64)
    if layout == "gemma-scope-2":
        skip = row_of["skip_transcoder"]
        cfg = json.loads((out / skip["path"] / "config.json").read_text())
        assert cfg["affine_connection"] is True
        assert cfg["hf_hook_point_out"] == skip["hf_hook_out"]


def test_the_card_tells_how_to_apply_a_dictionary_trained_without_its_sinks():
    """A release whose dictionaries dropped their outlier tokens in training says
    which tokens to keep their original activation at; one that trained on every
    token (off, or clipped) says nothing of it."""
    from saesuite.release.card import _outliers

    text = " ".join(_outliers({"max_norm_multiple": 5, "outlier_mode": "drop"}))
    assert "exceeds 5× the median" in text and "outlier_tokens" in text
    assert _outliers({"max_norm_multiple": 5, "outlier_mode": "clip"}) == []
    assert _outliers({"max_norm_multiple": None, "outlier_mode": "drop"}) == []


def test_saelens_reads_a_gemma_scope_2_clt_layer_as_its_transcoder(
    tmp_path, monkeypatch
):
    """SAELens's own Gemma Scope 2 loader (`gemma_3`) reads one layer of a CLT in
    Gemma Scope 2's layout as a transcoder at that layer's MLP input: its latents are
    the CLT's layer-i latents, its decoder the sum of that layer's blocks over every
    output layer (SAELens's reading, for latent activations), both computed here from
    the CLT's tensors."""
    client("sae_lens")
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import gemma_3_sae_huggingface_loader

    from saesuite.release.clt_layout import write_gemma_scope_2_clt
    from saesuite.sae.clt import CrossLayerTranscoder

    L, d, w = 4, 16, 32
    g = torch.Generator().manual_seed(5)
    clt = CrossLayerTranscoder(L, d, w).initialize(g)
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.1, generator=g)
        clt.b_dec.normal_(0, 0.5, generator=g)
        clt.threshold_raw.uniform_(0.05, 0.3, generator=g)
    repo = "someone/gemma-scope-2-270m-pt"
    out = tmp_path / "release"
    write_gemma_scope_2_clt(clt, out / "clt" / "width_32_l0_20")
    hub_cache(tmp_path, repo, out, monkeypatch)
    x = torch.randn(64, d, generator=g)
    for i in range(L):
        folder = f"clt/width_32_l0_20/params_layer_{i}"
        sae = SAE.from_pretrained(release=repo, sae_id=folder,
                                  converter=gemma_3_sae_huggingface_loader)  # fmt: skip
        assert sae.cfg.metadata.hook_name == f"blocks.{i}.hook_mlp_in"
        pre = x @ clt.W_enc[i].detach() + clt.b_enc[i].detach()
        f = pre * (pre > clt.threshold[i].detach())
        summed = clt.W_dec[i].detach().view(w, L - i, d).sum(1)
        with torch.no_grad():
            theirs = sae.encode(x)
            torch.testing.assert_close(theirs, f, rtol=1e-5, atol=1e-5)
            assert (f != 0).any() and (f == 0).any()
            torch.testing.assert_close(sae.decode(theirs),
                                       f @ summed + clt.b_dec[i].detach(),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
