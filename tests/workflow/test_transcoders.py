"""Transcoders end to end on the tiny Gemma 3 model (issue 16), through one real
Snakemake run: plain and skip-transcoders at every layer beside the MLP-output SAEs
of layer 1, trained from the one activation cache, evaluated spliced in for the MLP,
drawn in the report and released in Gemma Scope 2's layout with circuit-tracer's
transcoder-set configs (tests/release/test_circuit_tracer.py loads them)."""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    circuit_tracer_python,
    job_counts,
    load_tiny,
    make_config,
    snakemake,
)
from safetensors.torch import load_file, save_file

from saesuite.data.sites import capture
from saesuite.eval.evaluate import load_released
from saesuite.release.build import make_release
from saesuite.spec import jobs, paths
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.io import read_json
from saesuite.spec.sites import Site
from saesuite.spec.workflow import Workflow

pytestmark = pytest.mark.slow
N_LAYERS = 4  # the tiny models' (helpers.tiny_hf_config)
TC_REPO = "saesuite--saesuite-tiny-transcoder"


def transcoder_config(model_dir: Path) -> dict:
    cfg = make_config(model_dir, output_root="results")
    base = {**cfg["suite"][0], "layers": [1], "sites": ["mlp"]}
    every = {**base, "layers": list(range(N_LAYERS)), "kind": "transcoder"}
    cfg["suite"] = [base, every, {**every, "skip": "affine"}]
    cfg["transfer"] = {"format_shift": False}
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
    """Both MLP sites are extracted once; each layer × kind trains in its own job
    from that cache; evaluation splices them in for the MLP beside the MLP's SAEs."""
    root, counts = tc_run
    assert counts["train"] == 1 + 2 * N_LAYERS and counts["evaluate"] == N_LAYERS
    assert counts["release"] == 2
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


@pytest.fixture(scope="module")
def circuit_tracer_run(tc_run, tiny_models, tmp_path_factory, tokenizer):
    """circuit-tracer, in its own environment, loads a plain and an affine set of
    the workflow's release (Gemma Scope 2's layout) and a plain set of the same
    transcoders re-released in Gemma Scope 1's (npz), and computes an attribution
    graph for one prompt from each. The tiny Gemma 3, not the embedded 270m model:
    circuit-tracer needs a transcoder at every layer, and 18 layers' worth through
    the workflow would add minutes to CI; BENCHMARKS.md has the 270m run."""
    root, _ = tc_run
    work = root.parent
    out = tmp_path_factory.mktemp("ct")
    wf = Workflow(load_config({**transcoder_config(tiny_models["gemma3"]),
                               "output_root": str(root)}))  # fmt: skip
    job = jobs.ReleaseJob.from_dict(wf.release_params(TC_REPO))
    plain = tuple(m for m in job.members if m.kind == "transcoder")
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
    inputs = {"input_ids": ids[0]}
    inputs.update({s.name: acts[s][0].contiguous() for s in sites})
    save_file(inputs, str(out / "inputs.safetensors"))
    release = root / "release" / TC_REPO
    sets = [f"{release}:transcoder_width_128_target_8",
            f"{release}:skip_transcoder_width_128_target_8",
            f"{gs1}:transcoder_width_128_target_8"]  # fmt: skip
    python = circuit_tracer_python()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), str(Path(__file__).with_name("circuit_tracer_client.py")),
         str(out / "inputs.safetensors"), str(out), str(model_dir), *sets],
        capture_output=True, text=True, env=env, timeout=600, cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = [(read_json(out / f"{n}.json"), load_file(out / f"{n}.safetensors"))
               for n in range(len(sets))]  # fmt: skip
    return results, inputs, logits, embedded, release, gs1


def test_circuit_tracer_reads_each_layout_and_predicts_like_us(circuit_tracer_run):
    """circuit-tracer's own Gemma Scope readers (safetensors with
    affine_skip_connection, and npz) load our files unchanged: each layer's
    transcoder predicts the MLP output from real activations as saesuite's does."""
    results, inputs, *_ = circuit_tracer_run
    release, gs1 = circuit_tracer_run[4], circuit_tracer_run[5]
    index = read_json(release / "index.json")["saes"]
    assert [info["skip"] for info, _ in results] == [False, True, False]
    for (info, tensors), kind in zip(results, ("transcoder", "skip_transcoder",
                                               "transcoder"), strict=True):  # fmt: skip
        for layer in range(N_LAYERS):
            (row,) = [r for r in index if (r["layer"], r["kind"], r["value"])
                      == (layer, kind, 8.0)]  # fmt: skip
            ours = load_released(release.parent.parent / "tiny" / "saes"
                                 / row["trained_as"])  # fmt: skip
            with torch.no_grad():
                expected = ours(inputs[f"layer_{layer}.mlp_in"])
            torch.testing.assert_close(tensors[f"layer_{layer}"], expected,
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
    assert read_json(gs1 / "index.json")["layout"] == "gemma-scope"


def test_circuit_tracer_graph_agrees_with_the_model(circuit_tracer_run):
    """The replacement model is the model: its logits are the model's (computed here
    with saesuite's transformers), its token vectors the model's embedding output
    (Gemma's √d_model scale included: circuit-tracer's nnsight backend leaves it
    out, 8× here, 25.3× on gemma-3-270m), and the graph has a node per active
    feature, per layer × position error, per token and per logit."""
    results, inputs, logits, embedded, *_ = circuit_tracer_run
    for info, tensors in results:
        torch.testing.assert_close(tensors["logits"], logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tensors["token_vectors"], embedded,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        n_pos = len(inputs["input_ids"])
        n_nodes = (info["n_features"] + info["n_layers"] * n_pos + n_pos
                   + len(info["logit_token_ids"]))  # fmt: skip
        assert tensors["adjacency"].shape == (n_nodes, n_nodes)
        assert info["n_features"] > 0 and info["n_pos"] == n_pos
        top = logits[-1].topk(3).indices.tolist()
        assert info["logit_token_ids"] == top
        # the token nodes' edges are there and finite
        tok = tensors["adjacency"][:, n_nodes - n_pos - 3 : n_nodes - 3]
        assert torch.isfinite(tok).all() and tok.abs().sum() > 0
        print(
            f"{info['set']}: {info['n_features']} features, {n_nodes} nodes, "
            f"{info['seconds']:.1f} s"
        )
