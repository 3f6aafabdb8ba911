"""Transcoders end to end on the tiny Gemma 3 model (issue 16), through one real
Snakemake run: plain and skip-transcoders at every layer beside the MLP-output SAEs
of layer 1, trained from the one activation cache, evaluated spliced in for the MLP,
drawn in the report and released in Gemma Scope 2's layout with circuit-tracer's
transcoder-set configs (tests/release/test_circuit_tracer.py loads them)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    check_attribution,
    chromium_dom,
    job_counts,
    load_tiny,
    make_config,
    run_circuit_tracer,
    snakemake,
)
from safetensors.torch import load_file

from saesuite.data.sites import capture
from saesuite.eval.dashboards import read_js
from saesuite.eval.evaluate import load_released
from saesuite.release.build import make_release
from saesuite.spec import jobs, paths
from saesuite.spec.config import load_config
from saesuite.spec.io import read_json
from saesuite.spec.sites import Site
from saesuite.spec.workflow import Workflow


def load_tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


pytestmark = pytest.mark.slow
N_LAYERS = 4  # the tiny models' (helpers.tiny_hf_config)
TC_REPO = "saesuite--saesuite-tiny-transcoder"


def transcoder_config(model_dir: Path) -> dict:
    cfg = make_config(model_dir, output_root="results")
    base = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    every = {**base, "layers": list(range(N_LAYERS)), "kind": "transcoder"}
    cfg["suite"] = [base, every, {**every, "skip": "affine"}]
    cfg["transfer"] = {"format_shift": False}
    cfg["dashboards"] = {"enabled": True, "top_k": 5, "window": 3, "samples": 3,
                         "logit_tokens": 5}  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def tc_run(tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("tc")
    (work / "config.yaml").write_text(yaml.safe_dump(transcoder_config(
        tiny_models["gemma3"])))  # fmt: skip
    plan = snakemake(work, "-n")
    assert plan.returncode == 0, plan.stderr
    done = snakemake(work, "--cores", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "results", job_counts(plan.stdout + plan.stderr)


def test_transcoders_train_and_evaluate_beside_the_mlps_saes(tc_run):
    """Both MLP sites are extracted once; each layer's plain and skip-transcoders
    train in one job from that cache; evaluation splices them in for the MLP beside
    the MLP's SAEs."""
    root, counts = tc_run
    assert counts["train"] == 1 + N_LAYERS and counts["evaluate"] == N_LAYERS
    assert counts["release"] == 2 and counts["dashboards"] == N_LAYERS
    manifest = read_json(root / "tiny" / "activations" / "manifest.json")
    tensors = set(manifest["chunks"][0]["tensors"])
    assert tensors - {"input_ids", "mask"} == {f"layer_{L}.{s}" for L in range(N_LAYERS)
                       for s in ("mlp", "mlp_in")}  # fmt: skip
    metrics = {}
    for family, layers in (("mlp", [1]), ("transcoder", range(N_LAYERS)),
                           ("skip_transcoder", range(N_LAYERS))):  # fmt: skip
        for layer in layers:
            for label in ("l0_8", "l0_16"):
                key = f"layer_{layer}/{family}/width_128/{label}"
                info = read_json(root / "tiny" / "saes" / key / "sae.json")
                ev = read_json(paths.sae_eval(str(root), "tiny", "tiny", "text", key))
                metrics[key] = m = ev["metrics"]
                assert math.isfinite(m["fvu"]) and math.isfinite(m["delta_loss"])
                assert 0 < m["l0"] < 128
                if family != "mlp":
                    assert info["output_site"] == f"layer_{layer}.mlp"
                    assert info["site"] == f"layer_{layer}.mlp_in"
                    w = load_file(root / "tiny" / "saes" / key / "sae.safetensors")
                    assert ("W_skip" in w) == (family == "skip_transcoder")
    print("\n".join(f"{k}: FVU {m['fvu']:.3f}, delta loss {m['delta_loss']:.4f}, "
                    f"L0 {m['l0']:.1f}" for k, m in metrics.items()))  # fmt: skip
    figures = Path(paths.report_dirs(str(root), "tiny")["figures"])
    assert (figures / "transcoder").is_dir() and (figures / "skip_transcoder").is_dir()


def test_transcoders_are_released_with_circuit_tracer_sets(tc_run):
    """Every layer: Gemma Scope 2's transcoder_all/ folders, plain and _affine side
    by side, and one circuit-tracer config per kind × setting listing each layer's
    params.safetensors in layer order."""
    root, _ = tc_run
    assert sorted(p.name for p in (root / "release").iterdir()) == [
        "saesuite--saesuite-tiny-mlp", TC_REPO]  # fmt: skip
    release = root / "release" / TC_REPO
    meta = read_json(release / "index.json")
    index = meta["saes"]
    assert sorted(r["kind"] for r in index) == (
        ["skip_transcoder"] * 2 * N_LAYERS + ["transcoder"] * 2 * N_LAYERS
    )
    for r in index:
        assert r["path"].startswith(f"transcoder_all/layer_{r['layer']}_width_128_l0_")
        assert r["path"].endswith("_affine") == (r["kind"] == "skip_transcoder")
        tensors = load_file(release / r["path"] / "params.safetensors")
        assert ("affine_skip_connection" in tensors) == (r["kind"] != "transcoder")
    names = [f"{k}_width_128_target_{t}" for k in ("skip_transcoder", "transcoder")
             for t in (8, 16)]  # fmt: skip
    assert sorted(meta["circuit_tracer_sets"]) == sorted(names)
    repo = meta["repo_id"]
    for name in names:
        cfg = yaml.safe_load((release / "circuit_tracer" / name / "config.yaml")
                             .read_text())  # fmt: skip
        kind, target = name.split("_width_128_target_")
        expected = []
        for layer in range(N_LAYERS):
            (row,) = [r for r in index if r["layer"] == layer and r["kind"] == kind
                      and r["value"] == float(target)]  # fmt: skip
            expected.append(f"hf://{repo}/{row['path']}/params.safetensors")
        assert cfg["transcoders"] == expected
        assert (cfg["model_kind"], cfg["feature_input_hook"],
                cfg["feature_output_hook"]) == (
            "transcoder_set", "mlp.hook_in", "hook_mlp_out")  # fmt: skip
    card = (release / "README.md").read_text()
    assert "## Circuits with circuit-tracer" in card and "transcoder_all/" in card
    # the dashboards travel with the release (release.dashboards), linked from the card
    for r in index:
        assert r["dashboard"] == f"{r['path']}/dashboard/index.html"
        assert (release / r["dashboard"]).is_file()
        assert f"[latents]({r['dashboard']})" in card


def test_a_released_transcoders_dashboard_opens_in_chromium(tc_run, tmp_path):
    """Its own test, so that a missing Chromium skips this check alone (CI fails it)
    and never the release's asserts above."""
    root, _ = tc_run
    release = root / "release" / TC_REPO
    row = read_json(release / "index.json")["saes"][0]
    records = read_js(release / row["path"] / "dashboard" / "shards" / "shard_00000.js")
    c = max(records[1], key=lambda r: r["max"])["i"]
    url = (release / row["dashboard"]).resolve().as_uri()
    html = chromium_dom(f"{url}#latent/{c}", tmp_path / "chromium")
    assert f'data-latent="{c}"' in html and 'class="tok peak"' in html
    # its histogram over its own range: several bars, the recorded counts
    (rec,) = [r for r in records[1] if r["i"] == c]
    bars = [int(x.split('"', 1)[0]) for x in html.split('data-count="')[1:]]
    assert bars == [n for n in rec["hist"] if n] and len(bars) >= 2


@pytest.fixture(scope="module")
def circuit_tracer_run(tc_run, tiny_models, tmp_path_factory, tokenizer):
    """circuit-tracer, in its own environment, loads a plain and an affine set of
    the workflow's release (Gemma Scope 2's layout) and a plain set of the same
    transcoders re-released in Gemma Scope 1's (npz), and computes an attribution
    graph for one prompt from each. tests/release/test_circuit_tracer.py does the
    same on the embedded gemma-3-270m with untrained transcoders (18 layers of
    trained ones through the workflow would add minutes to CI)."""
    root, _ = tc_run
    out = tmp_path_factory.mktemp("ct")
    wf = Workflow(load_config({**transcoder_config(tiny_models["gemma3"]),
                               "output_root": str(root)}))  # fmt: skip
    job = jobs.ReleaseJob.from_dict(wf.release_params(TC_REPO))
    plain = tuple(m for m in job.members if m.dictionary.kind == "transcoder")
    gs1 = out / "gs1"
    make_release(replace(job, layout="gemma-scope", members=plain),
                 model_info=paths.model_info(str(root), "tiny"), config_hash="test",
                 out_dir=gs1)  # fmt: skip
    model_dir = tiny_models["gemma3"]
    ids = tokenizer("<bos>The cat sat on the mat because it", add_special_tokens=False,
                    return_tensors="pt").input_ids  # fmt: skip
    model = load_tiny(model_dir)
    sites = [Site(L, "mlp_in") for L in range(N_LAYERS)]
    acts = capture(model, ids, sites)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        embedded = model.get_input_embeddings()(ids)[0]
    inputs = {"input_ids": ids[0], **{s.name: acts[s][0] for s in sites}}
    release = root / "release" / TC_REPO
    sets = [f"{release}:transcoder_width_128_target_8",
            f"{release}:skip_transcoder_width_128_target_8",
            f"{gs1}:transcoder_width_128_target_8"]  # fmt: skip
    results = run_circuit_tracer(out / "client", model_dir, inputs, sets)
    return results, inputs, logits, embedded, release, gs1


def test_circuit_tracer_reads_each_layout_and_predicts_like_us(circuit_tracer_run):
    """circuit-tracer's own Gemma Scope readers (safetensors with
    affine_skip_connection, and npz) load our files unchanged: each layer's
    transcoder predicts the MLP output from real activations as saesuite's does."""
    results, inputs, _, _, release, gs1 = circuit_tracer_run
    index = read_json(release / "index.json")["saes"]
    assert read_json(gs1 / "index.json")["layout"] == "gemma-scope"
    assert [info["skip"] for info, _ in results] == [False, True, False]
    kinds = ("transcoder", "skip_transcoder", "transcoder")
    for (_, tensors), kind in zip(results, kinds, strict=True):
        for layer in range(N_LAYERS):
            (row,) = [r for r in index if (r["layer"], r["kind"], r["value"])
                      == (layer, kind, 8.0)]  # fmt: skip
            ours = load_released(release.parent.parent / "tiny" / "saes"
                                 / row["trained_as"])  # fmt: skip
            with torch.no_grad():
                expected = ours(inputs[f"layer_{layer}.mlp_in"])
            torch.testing.assert_close(tensors[f"layer_{layer}"], expected,
                                       rtol=1e-5, atol=1e-5)  # fmt: skip


def test_circuit_tracer_graph_agrees_with_the_model(circuit_tracer_run):
    """The replacement model is the model (helpers.check_attribution): logits, token
    vectors (Gemma's √d_model scale, 8 here, which circuit-tracer's nnsight backend
    leaves out) and the graph's nodes."""
    results, inputs, logits, embedded, *_ = circuit_tracer_run
    check_attribution(results, inputs["input_ids"], logits, embedded)


def test_dashboards_show_each_latents_top_contexts_and_logit_effect(
    tc_run, tiny_models
):
    """Issue 17's data, for an SAE and a transcoder of layer 1: the top contexts
    equal a brute-force ranking of the latent's per-sequence maxima over the
    held-out split (computed here from the model and the released weights), never
    at a masked position, with the tokens of text.js; the logit effect is the
    decoder row through the unembedding."""
    from saesuite.data.tokens import load_tokens

    root, _ = tc_run
    summary = read_json(paths.dashboards_layer(str(root), "tiny", 1))
    keys = {d["key"] for d in summary["dashboards"]}
    assert keys == {
        f"layer_1/{f}/width_128/l0_{t}"
        for t in (8, 16)
        for f in ("mlp", "transcoder", "skip_transcoder")
    }
    # the report's table of the middle layer's latents links every dashboard
    table = Path(paths.report_dirs(str(root), "tiny")["tables"]) / "latents.html"
    page = table.read_text()
    for key in keys:
        folder = Path(paths.dashboard_dir(str(root), "tiny", key)).resolve()
        assert f"<a href='{folder.as_uri()}/index.html'>{key}</a>" in page
    assert page.count("#latent/") >= 5 * len(keys) and "<mark>" in page
    ids, mask = load_tokens(paths.eval_data(str(root), "tiny", "text"))
    model = load_tiny(tiny_models["gemma3"])
    for key, site in (
        ("layer_1/mlp/width_128/l0_8", Site(1, "mlp")),
        ("layer_1/transcoder/width_128/l0_8", Site(1, "mlp_in")),
    ):
        folder = Path(paths.dashboard_dir(str(root), "tiny", key))
        info = read_json(folder / "dashboard.json")
        n = info["sequences"]
        (text,) = read_js(folder / "text.js")
        assert text["ids"] == ids[:n].tolist()
        shard, records = read_js(folder / "shards" / "shard_00000.js")
        assert shard == 0 and [r["i"] for r in records] == list(range(128))
        sae = load_released(root / "tiny" / "saes" / key)
        with torch.no_grad():
            f = sae.encode(capture(model, ids[:n], [site])[site])
        f = f.masked_fill(~mask[:n].unsqueeze(-1), 0.0)
        shown = 0
        for r in records:
            c = r["i"]
            best, where = f[..., c].max(dim=1)
            want = sorted((-float(v), b) for b, v in enumerate(best) if v > 0)[:5]
            assert [ctx[0] for ctx in r["top"]] == [b for _, b in want]
            for (neg, b), ctx in zip(want, r["top"], strict=True):
                assert ctx[1] == int(where[b]) and mask[b, ctx[1]]
                assert ctx[2] == pytest.approx(-neg, rel=1e-3)
            assert r["freq"] == pytest.approx(
                float((f[..., c] > 0).sum() / mask[:n].sum()), rel=1e-3
            )
            shown += bool(r["top"])
        assert shown > 64  # most latents fire somewhere
        # the logit effect: the decoder row through the (tied) unembedding
        W_U = model.get_output_embeddings().weight
        top = (sae.W_dec[3] @ W_U.T).topk(5).indices
        decoded = [load_tok(tiny_models["gemma3"]).decode([int(t)]) for t in top]
        assert [p[0] for p in records[3]["pos"]] == decoded
