"""A dictionary's dashboard folder (saesuite.eval.dashboards) opened from file:// in
headless Chromium: the index pages in each sort order and a latent's page with its
top context and highlighted token, no console error; and the data files read back
as written."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import chromium_dom

from saesuite.eval.dashboards import (
    PAGE,
    SHARD,
    latent_records,
    read_js,
    write_dashboard,
)
from saesuite.eval.latents import LatentStats, logit_effects

WIDTH, B, T = 600, 6, 24  # more latents than a shard and a page hold


def build(folder):
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(B, T, WIDTH, generator=g) - 1.5)
    acts[..., 7] = 0.0  # a dead latent
    ids = torch.randint(0, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    st = LatentStats(WIDTH, k=5, half_window=4, samples=4, seed=0)
    st.update(acts, ids, mask, first_seq=0)
    strings = {t: f"tok{t}" for t in range(50)}
    effects = logit_effects(
        torch.randn(WIDTH, 8, generator=g), torch.randn(50, 8, generator=g), n=5
    )
    records = latent_records(st, effects, strings)
    text = {
        "ids": ids.tolist(),
        "mask": mask.int().tolist(),
        "strings": {str(t): s for t, s in strings.items()},
    }
    info = {
        "model": "m",
        "layer": 3,
        "dictionary": "layer_3/res/width_600/l0_9",
        "input_site": "layer_3.res",
        "output_site": "layer_3.res",
        "width": WIDTH,
        "tokens": int(mask.sum()),
        "sequences": B,
        "top_k": 5,
        "window": 4,
        "samples": 4,
        "shard_size": SHARD,
        "n_shards": -(-WIDTH // SHARD),
    }
    write_dashboard(folder, st, records, text, info)
    return st, records, ids


def dom(page, tmp_path, name: str) -> str:
    return chromium_dom(page, tmp_path / name)


def test_the_data_files_read_back_as_written(tmp_path):
    st, records, _ = build(tmp_path / "d")
    shards = sorted((tmp_path / "d" / "shards").iterdir())
    assert len(shards) == 3  # 600 latents, 256 a shard
    got = [r for f in shards for r in read_js(f)[1]]
    assert got == records
    (page,) = read_js(tmp_path / "d" / "order" / "frequency_00000.js")[2:]
    assert len(page) == PAGE
    freqs = [row[1] for row in page]
    assert freqs == sorted(freqs, reverse=True)
    assert page[0][0] == int(torch.argmax(st.frequency))


def test_a_latents_page_renders_its_top_context_from_file(tmp_path):
    st, records, ids = build(tmp_path / "d")
    c = max(range(WIDTH), key=lambda i: len(records[i]["top"]))
    seq, pos, value, _ = records[c]["top"][0]
    index = (tmp_path / "d" / "index.html").resolve().as_uri()
    html = dom(f"{index}#latent/{c}", tmp_path, "p1")
    assert f'data-latent="{c}"' in html
    first = html.split('class="ctx"', 1)[1]
    assert f'data-seq="{seq}" data-pos="{pos}"' in first.split(">", 1)[0]
    peak = first.split('class="tok peak"', 1)[1].split(">", 1)[1].split("<", 1)[0]
    assert peak == f"tok{int(ids[seq, pos])}"
    assert '<pre id="errors"></pre>' in html
    for s, _ in records[c]["pos"]:
        assert f"&quot;{s}&quot;" in html or f'"{s}"' in html
    # its histogram: one bar per non-empty bin over [0, max], counts as recorded
    bars = [int(x.split('"', 1)[0]) for x in html.split('data-count="')[1:]]
    assert bars == [n for n in records[c]["hist"] if n] and len(bars) >= 3
    # the index, by max activation: the top row is the latent with the largest max
    html = dom(f"{index}#list/max/0", tmp_path, "p2")
    first_row = html.split('href="#latent/', 2)[1].split('"', 1)[0]
    assert int(first_row) == int(torch.argmax(st.max))
    assert "page 1 of 2" in html
    # a dead latent says so
    html = dom(f"{index}#latent/7", tmp_path, "p3")
    assert "never fires on these tokens" in html


def kept(ours, theirs) -> bool:
    """Everything we wrote is in what the client gives back (it adds its defaults)."""
    if isinstance(ours, dict):
        return all(k in theirs and kept(v, theirs[k]) for k, v in ours.items())
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(kept, ours, theirs))
    return ours == theirs


def test_the_neuronpedia_export_loads_with_its_own_code(tmp_path):
    """Issue 17, item 4: batch files that SAEDashboard's own Neuronpedia dataclasses
    accept (their constructors reject unknown keys) and give back unchanged, whose
    activations and features neuronpedia's pydantic models accept; the top bin holds
    the top contexts with their tokens and values, the sample bins the sample."""
    from helpers import client_module

    from saesuite.eval.dashboards import neuronpedia_batches

    _, records, ids = build(tmp_path / "d")
    batches = neuronpedia_batches(
        tmp_path / "d", tmp_path / "np", model_id="m", source="3-res-ss", batch_size=250
    )
    # the command line writes the same files
    from saesuite.cli import main

    main(
        [
            "neuronpedia",
            str(tmp_path / "d"),
            "--model-id",
            "m",
            "--source",
            "3-res-ss",
            "--out",
            str(tmp_path / "cli"),
            "--batch-size",
            "250",
        ]
    )
    for p in batches:
        assert (tmp_path / "cli" / p.name).read_bytes() == p.read_bytes()
    assert [p.name for p in batches] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    sd = client_module(
        "sae-dashboard",
        "sae-dashboard==0.8.0",
        "sae_dashboard/neuronpedia/neuronpedia_dashboard.py",
    )
    act_mod = client_module(
        "neuronpedia", "neuronpedia==1.2.1", "neuronpedia/types/common/activation.py"
    )
    feat_mod = client_module(
        "neuronpedia", "neuronpedia==1.2.1", "neuronpedia/types/common/feature.py"
    )
    seen = []
    for path in batches:
        raw = json.loads(path.read_text())
        batch = sd.NeuronpediaDashboardBatch(**raw)
        assert kept(raw, batch.to_dict())  # every key known, nothing lost
        for f in batch.features:
            feat_mod.NPFeature(
                model=batch.model_id, source=batch.sae_set, index=f.feature_index
            )
            for a in f.activations:
                act_mod.NPActivation(tokens=a.tokens, values=a.values)
                assert len(a.tokens) == len(a.values)
            seen.append(f)
    assert [f.feature_index for f in seen] == list(range(WIDTH))
    c = max(range(WIDTH), key=lambda i: len(records[i]["top"]))
    f, r = seen[c], records[c]
    top = [a for a in f.activations if a.bin_min == -1]
    assert len(top) == len(r["top"]) and top[0].bin_max == r["max"]
    seq, pos, value, _ = r["top"][0]
    at = top[0].values.index(max(top[0].values))
    assert (
        top[0].values[at] == value and top[0].tokens[at] == f"tok{int(ids[seq, pos])}"
    )
    assert len(f.activations) == len(r["top"]) + len(r["sample"])
    # the activation histogram: bar centres over [0, max], the dashboard's counts
    n = len(r["hist"])
    assert f.freq_hist_data_bar_heights == [float(x) for x in r["hist"]]
    assert f.freq_hist_data_bar_values == pytest.approx(
        [(b + 0.5) * r["max"] / n for b in range(n)]
    )
    assert f.pos_str == [s for s, _ in r["pos"]] and f.frac_nonzero == r["freq"]
    with pytest.raises(TypeError):  # the dataclasses do reject unknown keys
        sd.NeuronpediaDashboardFeature(feature_index=1, bogus=2)


def test_a_transcoders_dashboard_leaves_out_its_targets_outlier_tokens_too():
    """shown_tokens: a dictionary trained without its outlier tokens shows neither
    those of its input nor, a transcoder's, those of its target (each above the
    multiple × the median norm of the batch's valid tokens), nor masked ones; one
    trained on every token (multiple None) shows every valid token."""
    from saesuite.eval.dashboards import shown_tokens

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    x, y = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    x[0, 0] *= 100  # masked: never an outlier, never shown
    x[0, 3] *= 100  # an input-side sink
    y[1, 2] *= 100  # a target-side sink, its input ordinary
    want = mask.clone()
    want[0, 3] = want[1, 2] = False
    assert torch.equal(shown_tokens(mask, x, y, 5.0), want)
    assert torch.equal(shown_tokens(mask, x, y, None), mask)
