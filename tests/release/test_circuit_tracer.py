"""circuit-tracer on the embedded google/gemma-3-270m (issue 16): a release of
transcoders at all 18 layers (plain and affine-skip; random, not trained: training
18 layers through the workflow would add minutes to CI, and the attribution checks
hold for any transcoders; tests/workflow/test_transcoders.py runs circuit-tracer on
workflow-trained ones) is built by the release code, loaded by circuit-tracer in its
own environment through saesuite.release.circuit_tracer, and its attribution graph
checked against the model run by saesuite: logits, token vectors (Gemma's √640 =
25.3 embedding scale, which circuit-tracer's nnsight backend leaves out) and each
layer's prediction."""

from __future__ import annotations

import pytest
import torch
from helpers import check_attribution, release_meta, run_circuit_tracer
from safetensors.torch import save_file

from saesuite.data.models import (
    converted_dir,
    load_model,
    load_tokenizer,
    resolve_source,
)
from saesuite.data.sites import capture
from saesuite.eval.evaluate import load_released
from saesuite.release.build import build_release
from saesuite.release.layouts import Entry
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import read_json
from saesuite.spec.sites import Site

pytestmark = pytest.mark.slow
EMBEDDED = {"source": "embedded", "trust_remote_code": False, "device": "cpu"}
N_LAYERS, D, WIDTH = 18, 640, 512
REPO = "someone/saesuite-gemma-3-270m-transcoder"


def random_transcoders(x: dict[Site, torch.Tensor], kind: str, folder) -> list[Entry]:
    """One transcoder per layer, thresholds at each latent's 99th percentile of
    pre-activations on `x` (a few latents fire per token, as trained ones would)."""
    g = torch.Generator().manual_seed(0 if kind == "transcoder" else 1)
    entries = []
    for layer in range(N_LAYERS):
        tc = JumpReLUSAE(D, WIDTH, skip=kind == "skip_transcoder",
                         apply_b_dec_to_input=False).initialize(g)  # fmt: skip
        with torch.no_grad():
            tc.b_dec.normal_(0, 1.0, generator=g)
            if tc.skip:
                tc.W_skip.normal_(0, 0.01, generator=g)
            pre = x[Site(layer, "mlp_in")] @ tc.W_enc + tc.b_enc
            tc.threshold_raw.copy_(pre.quantile(0.99, dim=0).clamp(min=1e-3))
        out = folder / kind / str(layer)
        out.mkdir(parents=True)
        save_file(tc.release_tensors(), str(out / "sae.safetensors"))
        spec = Dictionary.of("tiny", kind, layer, "mlp", WIDTH, 1000, lambda_=1.0,
                             target_l0=20)  # fmt: skip
        metrics = {"l0": 5.0, "fvu": 1.0, "delta_loss": 1.0, "loss_recovered": 0.0,
                   "tokens": 1000, "loss_tokens": 100}  # fmt: skip
        entries.append(Entry(spec, str(out), metrics))
    return entries


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct270m")
    src = resolve_source(EMBEDDED, tmp / "cache")
    model_dir = converted_dir(src.location, tmp / "cache", src.digest)
    model = load_model(EMBEDDED, tmp / "cache")
    tok = load_tokenizer(EMBEDDED, tmp / "cache")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    sites = [Site(L, "mlp_in") for L in range(N_LAYERS)]
    calib = tok(["A short paragraph about the weather in Paris, and then some more "
                 "words about trains, music and the history of mathematics."],
                return_tensors="pt").input_ids  # fmt: skip
    x = {s: a[0] for s, a in capture(model, calib, sites).items()}
    entries = [e for k in ("transcoder", "skip_transcoder")
               for e in random_transcoders(x, k, tmp / "trained")]  # fmt: skip
    meta = {**release_meta(N_LAYERS, D), "model": "gemma-3-270m",
            "release_layers": list(range(N_LAYERS))}  # fmt: skip
    release = tmp / "release"
    build_release(repo=REPO, layout="gemma-scope-2", entries=entries, meta=meta,
                  canonical_l0=20, out_dir=release)  # fmt: skip
    acts = capture(model, ids, sites)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        embedded = model.get_input_embeddings()(ids)[0]
        # the rows the nnsight backend takes as token vectors, unscaled
        rows = model.get_input_embeddings().weight[ids[0]]
    assert float(embedded.norm() / rows.norm()) == pytest.approx(D**0.5, rel=1e-3)
    inputs = {"input_ids": ids[0], **{s.name: acts[s][0] for s in sites}}
    names = sorted(read_json(release / "index.json")["circuit_tracer_sets"])
    assert names == ["skip_transcoder_width_512_target_20",
                     "transcoder_width_512_target_20"]  # fmt: skip
    results = run_circuit_tracer(tmp / "client", model_dir, inputs,
                                 [f"{release}:{n}" for n in names])  # fmt: skip
    return results, inputs, logits, embedded, entries


def test_the_graph_of_the_embedded_model_agrees_with_it(graphs):
    results, inputs, logits, embedded, _ = graphs
    check_attribution(results, inputs["input_ids"], logits, embedded)
    for info, _ in results:
        print(f"{info['set']}: {info['n_features']} features, {info['seconds']:.1f} s")


def test_circuit_tracer_predicts_each_layer_as_saesuite_does(graphs):
    results, inputs, _, _, entries = graphs
    for (info, tensors), kind in zip(results, ("skip_transcoder", "transcoder"),
                                     strict=True):  # fmt: skip
        assert info["skip"] == (kind == "skip_transcoder")
        for e in (e for e in entries if e.dictionary.kind == kind):
            layer = e.dictionary.layer
            with torch.no_grad():
                want = load_released(e.sae_dir)(inputs[f"layer_{layer}.mlp_in"])
            torch.testing.assert_close(tensors[f"layer_{layer}"], want,
                                       rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("layout", ["circuit-tracer", "gemma-scope-2"])
def test_circuit_tracer_reads_a_cross_layer_transcoder_as_saesuite_computes_it(
    layout, tmp_path
):
    """A CLT over all 18 layers (random, thresholds at each latent's 99th percentile
    on real activations, trained-unit scalars folded) written in circuit-tracer's CLT
    format or Gemma Scope 2's is read by circuit-tracer's own `load_clt` or
    `load_gemma_scope_2_clt` in its environment (every layer: 18, not the 17 its
    loader would read unaided): its
    prediction of every layer's MLP output equals saesuite's on the embedded model's
    activations, and its attribution graph through the model agrees with the model
    (logits, token vectors, one node per active feature)."""
    from saesuite.release.clt_layout import (
        write_circuit_tracer_clt,
        write_gemma_scope_2_clt,
    )
    from saesuite.sae.clt import CrossLayerTranscoder

    src = resolve_source(EMBEDDED, tmp_path / "cache")
    model_dir = converted_dir(src.location, tmp_path / "cache", src.digest)
    model = load_model(EMBEDDED, tmp_path / "cache")
    tok = load_tokenizer(EMBEDDED, tmp_path / "cache")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    sites = [Site(L, "mlp_in") for L in range(N_LAYERS)]
    calib = tok(["Trains, music and the history of mathematics in Paris."],
                return_tensors="pt").input_ids  # fmt: skip
    x = torch.stack([a[0] for a in capture(model, calib, sites).values()], 1)
    g = torch.Generator().manual_seed(0)
    clt = CrossLayerTranscoder(N_LAYERS, D, 64).initialize(g)
    scales_in = torch.linspace(1.0, 30.0, N_LAYERS).tolist()
    scales_out = torch.linspace(0.5, 8.0, N_LAYERS).tolist()
    with torch.no_grad():
        clt.b_dec.normal_(0, 0.1, generator=g)
        pre = clt.pre_acts(x / torch.tensor(scales_in)[:, None])  # trained units
        clt.threshold_raw.copy_(pre.quantile(0.99, dim=0).clamp(min=1e-3))
    clt.fold_normalization(scales_in, scales_out)
    folder = tmp_path / "clt"
    if layout == "circuit-tracer":
        write_circuit_tracer_clt(clt, folder, repo_id="someone/clt", scan="someone/clt")
    else:
        write_gemma_scope_2_clt(clt, folder)
    acts = capture(model, ids, sites)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        embedded = model.get_input_embeddings()(ids)[0]
        xs = torch.stack([acts[s][0] for s in sites], 1)  # (n_pos, L, d)
        want = clt(xs).transpose(0, 1)  # (L, n_pos, d)
    assert (clt.encode(xs) > 0).any(), "no latent fires: the check would be vacuous"
    inputs = {"input_ids": ids[0], **{s.name: acts[s][0] for s in sites}}
    results = run_circuit_tracer(tmp_path / "client", model_dir, inputs,
                                 [f"clt:{folder}"])  # fmt: skip
    check_attribution(results, inputs["input_ids"], logits, embedded)
    ((info, tensors),) = results
    assert info["skip"] is False and info["n_layers"] == N_LAYERS
    torch.testing.assert_close(tensors["clt"], want, rtol=1e-4, atol=1e-4)
