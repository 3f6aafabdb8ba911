"""Transcoders end to end on the tiny Gemma 3 model (issue 16), through one real
Snakemake run: plain and skip-transcoders at every layer beside the MLP-output SAEs
of layer 1, trained from the one activation cache, evaluated spliced in for the MLP,
drawn in the report and released in Gemma Scope 2's layout with circuit-tracer's
transcoder-set configs (tests/release/test_circuit_tracer.py loads them); and
cross-layer transcoders over all four layers from the same cache (issue 37),
evaluated as a replacement model and released in Gemma Scope 2's CLT layout and
circuit-tracer's, which SAELens and circuit-tracer load."""

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
    client,
    hub_cache,
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
from saesuite.sae.clt import CrossLayerTranscoder
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
CLT_REPO = "saesuite--saesuite-tiny-clt"
XC_REPO = "saesuite--saesuite-tiny-crosscoder"


def transcoder_config(model_dir: Path) -> dict:
    cfg = make_config(model_dir, output_root="results")
    base = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    every = {**base, "layers": list(range(N_LAYERS)), "kind": "transcoder"}
    clt = {**every, "layers": "all", "kind": "clt"}
    crosscoder = {**base, "layers": [1, 3], "sites": ["res"], "widths": [64],
                  "kind": "crosscoder"}  # fmt: skip
    cfg["suite"] = [base, every, {**every, "skip": "affine"}, clt, crosscoder]
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
    assert counts["release"] == 4 and counts["dashboards"] == N_LAYERS
    # two CLTs and two crosscoders, a job each
    assert counts["train_clt"] == 4 and counts["evaluate_clt"] == 4
    manifest = read_json(root / "tiny" / "activations" / "manifest.json")
    tensors = set(manifest["chunks"][0]["tensors"])
    mlps = {f"layer_{L}.{s}" for L in range(N_LAYERS) for s in ("mlp", "mlp_in")}
    assert tensors - {"input_ids", "mask"} == mlps | {"layer_1.res", "layer_3.res"}
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
        CLT_REPO, XC_REPO, "saesuite--saesuite-tiny-mlp", TC_REPO]  # fmt: skip
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
    # the CLT evaluation's loss sequences, each spliced where the evaluation did
    clt_row = clt_at(root, 8.0)
    loss_ids, loss_keep = loss_tokens(root, model, clt_row)
    inputs |= {"loss_ids": loss_ids, "loss_keep": loss_keep}
    release = root / "release" / TC_REPO
    clts = root / "release" / CLT_REPO
    sets = [f"{release}:transcoder_width_128_target_8",
            f"{release}:skip_transcoder_width_128_target_8",
            f"{gs1}:transcoder_width_128_target_8",
            f"clt:{clts / clt_row['circuit_tracer']}",
            f"clt:{clts / clt_row['path']}"]  # fmt: skip
    results = run_circuit_tracer(out / "client", model_dir, inputs, sets)
    return results, inputs, logits, embedded, release, gs1


def clt_at(root: Path, target: float) -> dict:
    """The released CLT of target L0 `target` (its index.json row)."""
    rows = read_json(root / "release" / CLT_REPO / "index.json")["dictionaries"]
    (row,) = [r for r in rows if r["value"] == target]
    return row


def eval_split(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss sequences of every evaluation (evaluate.loss_tokens) and their mask."""
    from saesuite.data.tokens import load_tokens

    cfg = make_config()
    n = cfg["evaluate"]["loss_tokens"] // cfg["data"]["context_size"]
    ids, mask = load_tokens(paths.tokens(str(root), "tiny")["eval"])
    return ids[:n], mask[:n]


def loss_tokens(root: Path, model, row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss sequences of the CLT's evaluation (evaluate.loss_tokens of the
    held-out split) and where it spliced: unmasked tokens that are no outlier at any
    of its sites (sae.clt_train.clt_outliers, the rule it trained by)."""
    from saesuite.sae.clt_train import clt_outliers

    ids, mask = eval_split(root)
    ins = [Site(L, "mlp_in") for L in range(N_LAYERS)]
    outs = [Site(L, "mlp") for L in range(N_LAYERS)]
    acts = capture(model, ids, ins + outs)
    keep = mask.clone()
    if not row["max_norm_multiple"]:
        return ids, keep
    x = torch.stack([acts[s] for s in ins], dim=2)
    y = torch.stack([acts[s] for s in outs], dim=2)
    per = load_config(make_config())["evaluate"]["loss_batch_size"]
    for b in range(0, len(ids), per):  # the evaluation's batches, each its own median
        m = mask[b : b + per]
        out = clt_outliers(
            x[b : b + per][m], y[b : b + per][m], row["max_norm_multiple"]
        )
        keep[b : b + per][m] = ~out
    return ids, keep


def test_circuit_tracer_reads_each_layout_and_predicts_like_us(circuit_tracer_run):
    """circuit-tracer's own Gemma Scope readers (safetensors with
    affine_skip_connection, and npz) load our files unchanged: each layer's
    transcoder predicts the MLP output from real activations as saesuite's does."""
    results, inputs, _, _, release, gs1 = circuit_tracer_run
    index = read_json(release / "index.json")["saes"]
    assert read_json(gs1 / "index.json")["layout"] == "gemma-scope"
    assert [info["skip"] for info, _ in results[:3]] == [False, True, False]
    kinds = ("transcoder", "skip_transcoder", "transcoder")
    for (_, tensors), kind in zip(results[:3], kinds, strict=True):
        for layer in range(N_LAYERS):
            (row,) = [r for r in index if (r["layer"], r["kind"], r["value"])
                      == (layer, kind, 8.0)]  # fmt: skip
            ours = load_released(release.parent.parent / "tiny" / "saes"
                                 / row["trained_as"])  # fmt: skip
            with torch.no_grad():
                expected = ours(inputs[f"layer_{layer}.mlp_in"])
            torch.testing.assert_close(tensors[f"layer_{layer}"], expected,
                                       rtol=1e-5, atol=1e-5)  # fmt: skip


def test_clts_train_on_the_cache_and_evaluate_as_a_replacement_model(tc_run):
    """Each CLT reads every layer's MLP input and predicts every MLP output from the
    cache the transcoders use; its evaluation reports the replacement model's loss
    and each layer's L0 and FVU, and its release holds both layouts."""
    root, _ = tc_run
    for target in (8.0, 16.0):
        row = clt_at(root, target)
        info = read_json(root / "tiny" / "saes" / row["trained_as"] / "sae.json")
        assert info["reads"] == [f"layer_{L}.mlp_in" for L in range(N_LAYERS)]
        assert info["writes"] == [f"layer_{L}.mlp" for L in range(N_LAYERS)]
        m = row["metrics"]
        assert row["layers"] == list(range(N_LAYERS)) and len(row["by_layer"]) == 4
        assert (
            math.isfinite(m["delta_loss"]) and math.isfinite(m["kl"]) and m["kl"] >= 0
        )
        assert m["l0"] == pytest.approx(sum(b["l0"] for b in row["by_layer"]))
        assert all(
            0 < b["l0"] < 128 and math.isfinite(b["fvu"]) for b in row["by_layer"]
        )
        release = root / "release" / CLT_REPO
        files = [f"params_layer_{i}.safetensors" for i in range(N_LAYERS)]
        listed = sorted(p.name for p in (release / row["path"]).iterdir())
        assert listed == ["config.json", *files]
        cfg = read_json(release / row["path"] / "config.json")
        hooks = (cfg["hf_hook_point_in"], cfg["hf_hook_point_out"], cfg["type"])
        assert hooks == ("model.layers.{all}.pre_feedforward_layernorm.output",
                         "model.layers.{all}.post_feedforward_layernorm.output",
                         "clt")  # fmt: skip
        assert cfg["width"] == 128 * N_LAYERS and cfg["l0"] == target
        cfg = yaml.safe_load((release / row["circuit_tracer"] / "config.yaml")
                             .read_text())  # fmt: skip
        assert cfg["model_kind"] == "cross_layer_transcoder"
        print(
            f"CLT target {target}: L0/layer {m['l0_per_layer']:.1f}, FVU "
            f"{m['fvu']:.3f}, delta loss {m['delta_loss']:.4f}"
        )
    card = (root / "release" / CLT_REPO / "README.md").read_text()
    assert "load_clt" in card and clt_at(root, 8.0)["path"] in card
    # the report: each CLT by layer beside the transcoders nearest its layer L0, and
    # against the full transcoder sets at the rung nearest its L0 per layer
    import pandas as pd

    from saesuite.report.clt import clt_frames

    report = paths.report_dirs(str(root), "tiny")
    tables, figures = Path(report["tables"]), Path(report["figures"])
    table = pd.read_csv(paths.eval_table(str(root), "tiny")["csv"])
    evals = [
        read_json(
            paths.sae_eval(
                str(root), "tiny", "tiny", "text", f"clt/layers_0-3/width_128/l0_{t}"
            )
        )
        for t in (8, 16)
    ]
    layers, totals = clt_frames(table, evals)
    for _, r in layers.iterrows():
        tc = table[(table["site"] == "transcoder") & (table["layer"] == r["layer"])]
        assert (
            r["transcoder L0"] == tc.loc[(tc["l0"] - r["CLT L0"]).abs().idxmin(), "l0"]
        )
    assert totals["transcoder set total L0"].notna().all()
    html = (tables / "clt.html").read_text()
    assert all(f"clt/layers_0-3/width_128/l0_{t}" in html for t in (8, 16))
    assert (tables / "clt_layers.html").is_file()
    assert sorted(p.name for p in (figures / "clt").glob("*.png")) == [
        "by_layer_layers_0-3_width_128_l0_16.png",
        "by_layer_layers_0-3_width_128_l0_8.png",
    ]


def test_crosscoders_are_released_in_gemma_scope_2s_layout(tc_run):
    """A weakly causal crosscoder over layers 1 and 3: Gemma Scope 2's folder
    crosscoder/layer_1_3_width_<all latents>_l0_<K>/ with params_layer_k per input
    layer k (w_enc, b_enc, threshold, its b_dec, w_dec over both layers with the
    earlier ones zero) and config.json (hook points, width, type), read back here
    and equal to saesuite's crosscoder; its evaluation replaces both streams."""
    from saesuite.sae.clt_train import load_clt

    root, _ = tc_run
    release = root / "release" / XC_REPO
    rows = read_json(release / "index.json")["dictionaries"]
    assert sorted(r["value"] for r in rows) == [8.0, 16.0]
    for r in rows:
        assert r["path"].startswith("crosscoder/layer_1_3_width_128_")
        assert r["circuit_tracer"] is None and r["layers"] == [1, 3]
        m = r["metrics"]
        assert math.isfinite(m["delta_loss"]) and 0 < m["l0"] < 128
        cfg = read_json(release / r["path"] / "config.json")
        assert cfg.pop("model_name").endswith("gemma3")  # the tiny model's folder
        assert cfg == {
            "hf_hook_point_in": "model.layers.{1,3}.output",
            "hf_hook_point_out": "model.layers.{1,3}.output",
            "width": 128, "architecture": "jump_relu", "l0": r["value"],
            "affine_connection": False, "type": "crosscoder",
        }  # fmt: skip
        ours = load_clt(root / "tiny" / "saes" / r["trained_as"])
        for k in range(2):
            t = load_file(release / r["path"] / f"params_layer_{k}.safetensors")
            assert t["w_dec"].shape == (64, 2, 64)
            torch.testing.assert_close(t["w_enc"], ours.W_enc[k].detach())
            torch.testing.assert_close(t["threshold"], ours.threshold[k].detach())
            torch.testing.assert_close(t["b_dec"], ours.b_dec[k].detach())
            blocks = ours.W_dec[k].detach().view(64, 2 - k, 64)
            torch.testing.assert_close(t["w_dec"][:, k:], blocks)
            assert (t["w_dec"][:, :k] == 0).all()
    card = (release / "README.md").read_text()
    assert "Weakly causal crosscoders" in card and rows[0]["path"] in card


def test_saelens_loads_each_layer_of_a_released_clt(tc_run, tiny_models, tmp_path,
                                                    monkeypatch):  # fmt: skip
    """SAELens's own Gemma Scope 2 loader reads layer i of the released CLT as a
    transcoder at that layer's MLP input: its latents on real activations are
    saesuite's CLT's layer-i latents."""
    client("sae_lens")
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import gemma_3_sae_huggingface_loader

    from saesuite.sae.clt_train import load_clt

    root, _ = tc_run
    row = clt_at(root, 8.0)
    ours = load_clt(root / "tiny" / "saes" / row["trained_as"])
    repo = "saesuite/saesuite-tiny-clt"
    hub_cache(tmp_path, repo, root / "release" / CLT_REPO, monkeypatch)
    model = load_tiny(tiny_models["gemma3"])
    ids = torch.randint(6, 500, (2, 16), generator=torch.Generator().manual_seed(1))
    acts = capture(model, ids, [Site(L, "mlp_in") for L in range(N_LAYERS)])
    for i in range(N_LAYERS):
        sae_id = f"{row['path']}/params_layer_{i}"
        sae = SAE.from_pretrained(release=repo, sae_id=sae_id,
                                  converter=gemma_3_sae_huggingface_loader)  # fmt: skip
        assert sae.cfg.metadata.hook_name == f"blocks.{i}.hook_mlp_in"
        x = acts[Site(i, "mlp_in")].reshape(-1, ours.d_in)
        with torch.no_grad():
            want = ours.encode_layer(x, i)
            torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-5)
        assert (want > 0).any()


def test_circuit_tracer_reads_both_clt_layouts_and_predicts_like_us(
    circuit_tracer_run, tc_run
):
    """circuit-tracer's `load_clt` (its own format) and `load_gemma_scope_2_clt`
    (Gemma Scope 2's) read the released CLT: its prediction of every MLP output from
    real activations is saesuite's."""
    from saesuite.sae.clt_train import load_clt

    results, inputs, *_ = circuit_tracer_run
    root, _ = tc_run
    ours = load_clt(root / "tiny" / "saes" / clt_at(root, 8.0)["trained_as"])
    x = torch.stack([inputs[f"layer_{L}.mlp_in"] for L in range(N_LAYERS)], dim=1)
    with torch.no_grad():
        want = ours(x).transpose(0, 1)  # (L, n_pos, d)
    for _, tensors in results[3:]:
        torch.testing.assert_close(tensors["clt"], want, rtol=1e-5, atol=1e-5)


def test_circuit_tracers_replacement_model_has_the_evaluations_loss(
    circuit_tracer_run, tc_run
):
    """Check (a): circuit-tracer's replacement model with its error nodes removed
    (the CLT's predictions at its own hook locations, closed loop) gives, on the
    evaluation's loss sequences, the next-token loss saesuite's evaluation of the
    same CLT reported, to 1e-4, from either layout."""
    results, inputs, *_ = circuit_tracer_run
    root, _ = tc_run
    row = clt_at(root, 8.0)
    ids, mask = eval_split(root)
    assert torch.equal(ids, inputs["loss_ids"])
    pred = mask[:, :-1] & mask[:, 1:]
    assert int(pred.sum()) == row["metrics"]["loss_tokens"]
    for _, tensors in results[3:]:
        ce = tensors["replacement_ce"][pred].double().mean()
        assert float(ce) == pytest.approx(row["metrics"]["ce_spliced"], abs=1e-4)
    assert row["metrics"]["ce_spliced"] != pytest.approx(row["metrics"]["ce_clean"],
                                                         abs=1e-3)  # fmt: skip


def graph_nodes(tensors: dict, n_layers: int, n_pos: int) -> dict:
    """Where each kind of node starts in circuit-tracer's adjacency matrix, and the
    (layer, position, latent, activation) of each feature node."""
    active = tensors["active_features"][tensors["selected_features"]]
    values = tensors["activation_values"][tensors["selected_features"]]
    n_feat = len(active)
    return {
        "features": [(*map(int, a), float(v)) for a, v in zip(active, values)],
        "tokens": n_feat + n_layers * n_pos,
        "logits": n_feat + (n_layers + 1) * n_pos,
    }


def check_edges(model, clt, ids, tensors) -> list[str]:
    """Check (b): three of the graph's edges into a late feature and one into the
    top logit, recomputed from circuit-tracer's definition by
    helpers.frozen_direct_effects (patterns and norm denominators frozen, no
    gradient through the MLPs) with saesuite's CLT, against the adjacency matrix
    to 1e-3 relative: the strongest feature→feature, token→feature and
    feature→logit edges. `clt` is saesuite's (a transcoder set: its diagonal)."""
    from helpers import frozen_direct_effects

    A = tensors["adjacency"].double()
    n_pos, L = len(ids), clt.n_layers
    nodes = graph_nodes(tensors, L, n_pos)
    feats = nodes["features"]
    d = clt.d_out

    def written(grads, k):  # what feature node k writes, against the gradients
        i, p, s, a = feats[k]
        rows = clt.W_dec[i].detach()[s].view(L - i, d)
        return float((grads["mlp"][i:, p] * rows).sum() * a)

    # the deepest feature whose row has an edge from a feature of an earlier layer
    def has_feature_edge(k):
        row = A[k, : len(feats)]
        return any(row[m] != 0 and feats[m][0] < feats[k][0] for m in range(len(feats)))

    target = max((k for k in range(len(feats)) if has_feature_edge(k)),
                 key=lambda k: (feats[k][0], feats[k][1]))  # fmt: skip
    j, q, t, _ = feats[target]
    w_enc = clt.W_enc[j].detach()[:, t]
    grads = frozen_direct_effects(model, ids, lambda acts: acts[j][q] @ w_enc)
    checked = []
    srcs = [m for m in range(len(feats)) if feats[m][0] < j and A[target, m] != 0]
    src = max(srcs, key=lambda m: abs(A[target, m]))
    want = written(grads, src)
    assert float(A[target, src]) == pytest.approx(want, rel=1e-3, abs=1e-7)
    checked.append(f"feature {feats[src][:3]} → feature {feats[target][:3]}: "
                   f"{float(A[target, src]):.5g} (recomputed {want:.5g})")  # fmt: skip
    tok = nodes["tokens"]
    p = int(A[target, tok : tok + n_pos].abs().argmax())
    want = float(grads["embed"][p] @ grads["embedded"][p])
    assert float(A[target, tok + p]) == pytest.approx(want, rel=1e-3, abs=1e-7)
    got = float(A[target, tok + p])
    checked.append(f"token {p} → feature {feats[target][:3]}: {got:.5g} "
                   f"(recomputed {want:.5g})")  # fmt: skip
    # the top logit, demeaned over the vocabulary, from the final hidden state
    u = model.lm_head.weight.detach()
    k = int(tensors["logit_token_ids"][0])
    vec = u[k] - u.mean(0)
    grads = frozen_direct_effects(model, ids, lambda acts: acts["final"][-1] @ vec)
    row = A[nodes["logits"], : len(feats)]
    src = int(row.abs().argmax())
    want = written(grads, src)
    assert float(row[src]) == pytest.approx(want, rel=1e-3, abs=1e-7)
    checked.append(f"feature {feats[src][:3]} → logit {k}: {float(row[src]):.5g} "
                   f"(recomputed {want:.5g})")  # fmt: skip
    return checked


def as_clt(saes) -> CrossLayerTranscoder:
    """Per-layer transcoders as the CLT with only their own blocks (i→i)."""
    L, first = len(saes), saes[0]
    clt = CrossLayerTranscoder(L, first.d_in, first.d_sae, first.d_out)
    with torch.no_grad():
        for i, sae in enumerate(saes):
            clt.W_enc[i].copy_(sae.W_enc)
            clt.b_enc[i].copy_(sae.b_enc)
            clt.threshold_raw[i].copy_(sae.threshold)
            clt.b_dec[i].copy_(sae.b_dec)
            clt.W_dec[i].zero_()
            clt.W_dec[i][:, : first.d_out].copy_(sae.W_dec)
    return clt


def test_circuit_tracer_edges_match_their_definition(circuit_tracer_run, tc_run,
                                                     tiny_models):  # fmt: skip
    """Check (b), for the workflow's CLT (both layouts) and its plain transcoder
    set: a feature→feature, a token→feature and a feature→logit edge of each graph
    equal the frozen-Jacobian computation of the same edge (check_edges)."""
    from saesuite.sae.clt_train import load_clt

    results, inputs, *_ = circuit_tracer_run
    root, _ = tc_run
    model = load_tiny(tiny_models["gemma3"])
    ids = inputs["input_ids"]
    release = root / "release" / TC_REPO
    index = read_json(release / "index.json")["saes"]
    plain = []
    for layer in range(N_LAYERS):
        (row,) = [r for r in index if (r["layer"], r["kind"], r["value"])
                  == (layer, "transcoder", 8.0)]  # fmt: skip
        plain.append(load_released(root / "tiny" / "saes" / row["trained_as"]))
    ours = load_clt(root / "tiny" / "saes" / clt_at(root, 8.0)["trained_as"])
    for (info, tensors), clt in ((results[0], as_clt(plain)), (results[3], ours),
                                 (results[4], ours)):  # fmt: skip
        for line in check_edges(model, clt, ids, tensors):
            print(line)
    for info, _ in results:  # check (c)'s numbers, circuit-tracer's own scores
        s = info["scores"]
        assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1, info
        print(
            f"{info['set']}: {info['n_features']} features, replacement "
            f"{s['replacement']:.4f}, completeness {s['completeness']:.4f}"
        )


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
