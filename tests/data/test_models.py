"""Model loading from every source kind, with the real embedded gemma-3-270m (converted
once from the GGUF shipped on PyPI; no network)."""

from __future__ import annotations

import json

import pytest
import torch

from saesuite.cluster.resources import cache_plan
from saesuite.data.extract import check_disk
from saesuite.data.models import (
    _pretrained_args,
    converted_dir,
    describe_model,
    load_model,
    load_tokenizer,
    resolve_source,
)
from saesuite.data.sites import capture
from saesuite.spec.sites import Site

EMBEDDED = {
    "source": "embedded",
    "trust_remote_code": False,
    "dtype": "float32",
    "device": "cpu",
    "attn_implementation": None,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def gguf_parses(cache) -> list[str]:
    """Convert and load the embedded model, recording each GGUF file parsed."""
    import gguf

    parses: list[str] = []

    class Counting(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            parses.append(str(path))
            super().__init__(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", Counting)
        load_model(EMBEDDED, cache)
    return parses


@pytest.fixture(scope="module")
def embedded(cache, gguf_parses):
    return load_model(EMBEDDED, cache), load_tokenizer(EMBEDDED, cache)


def test_embedded_model_is_gemma_3_270m_and_knows_capitals(embedded):
    model, tok = embedded
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (
        18,
        640,
        4,
    )
    assert cfg.vocab_size == 262144 and tok.bos_token_id == 2
    for prompt, answer in [("The capital of Germany is", " Berlin"),
                           ("The capital of France is", " Paris")]:  # fmt: skip
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0, 0] == tok.bos_token_id
        with torch.no_grad():
            top = model(input_ids=ids).logits[0, -1].topk(5).indices
        assert answer in [tok.decode(int(t)) for t in top]


def test_conversion_is_cached(embedded, cache, gguf_parses):
    # tokenizer, config and weights come from one parse of the GGUF (transformers
    # alone would parse it three times, ~25 s each here)
    assert len(gguf_parses) == 1
    src = resolve_source(EMBEDDED, cache)
    first = converted_dir(src.location, cache)
    # the embedded GGUF's known digest names the same folder as hashing the file
    assert src.digest and converted_dir(src.location, cache, src.digest) == first
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert converted_dir(src.location, cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert (first / "tokenizer.json").exists()
    assert "quantization_config" not in (first / "config.json").read_text()
    # named as the Hub's config.json names it (circuit-tracer's nnsight backend
    # picks its mapping by it); a folder converted before that is completed
    config = json.loads((first / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    del config["architectures"]
    (first / "config.json").write_text(json.dumps(config))
    assert converted_dir(src.location, cache) == first
    assert json.loads((first / "config.json").read_text())["architectures"] == [
        "Gemma3ForCausalLM"]  # fmt: skip


def test_embedded_sites_and_description(embedded, cache):
    model, tok = embedded
    info = describe_model("g", EMBEDDED, cache)
    assert info["site_widths"] == {"res": 640, "mlp": 640, "mlp_in": 640, "att": 1024}
    assert info["n_layers"] == 18 and info["model_type"] == "gemma3_text"
    ids = tok(["A short sentence about sparse autoencoders."], return_tensors="pt")
    got = capture(model, ids.input_ids, [Site(5, "att"), Site(15, "res")])
    assert got[Site(5, "att")].shape[-1] == 1024
    assert got[Site(15, "res")].shape[-1] == 640


def test_trust_remote_code_only_when_asked(tiny_models, cache):
    cfg = {**EMBEDDED, "source": str(tiny_models["llama"])}
    assert _pretrained_args(cfg, cache)[1]["trust_remote_code"] is False
    cfg["trust_remote_code"] = True
    assert _pretrained_args(cfg, cache)[1]["trust_remote_code"] is True


def test_sources_are_classified_with_clear_errors(tiny_models, cache):
    assert resolve_source({"source": str(tiny_models["gemma2"])}, cache).kind == "local"
    hub = resolve_source({"source": "google/gemma-2-2b", "revision": "abc"}, cache)
    assert (hub.kind, hub.location, hub.revision) == ("hub", "google/gemma-2-2b", "abc")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_source({"source": "/nowhere/missing.gguf"}, cache)
    with pytest.raises(FileNotFoundError, match="./not-a-dir"):
        resolve_source({"source": "./not-a-dir"}, cache)


def test_local_gemma2_loads_with_eager_attention(tiny_models, cache):
    model = load_model({**EMBEDDED, "source": str(tiny_models["gemma2"])}, cache)
    assert model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in model.parameters())


def test_disk_check_refuses_and_says_how_much_is_missing(tmp_path, capsys):
    plan = cache_plan({"layer_0.res": 640, "layer_0.att": 1024}, 10**12, "float32")
    assert plan["layer_0.att"] == 4 * 1024 * 10**12
    with pytest.raises(OSError, match="GB missing"):
        check_disk(plan, 0, tmp_path, 1.0, "m")
    printed = capsys.readouterr().out
    assert "layer_0.res" in printed and "layer_0.att" in printed
    check_disk(cache_plan({"layer_0.res": 4}, 10, "bfloat16"), 0, tmp_path, 0.0, "m")
