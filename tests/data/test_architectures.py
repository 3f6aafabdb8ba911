"""Every architecture of the site table (saesuite.spec.sites.ARCHITECTURES) through
the model-side stages on a tiny random model saved as a local directory, with no
`head_dim` in its config where the architecture allows that (Qwen2's and Llama's do):
the `model` job's description, capture of every site (the extraction path) and an
evaluation with a random SAE per site (the spliced, resumed passes). An architecture
outside the table is refused by name at the `model` job. Snakemake runs of the whole
DAG use the Gemma 3 model (tests/workflow)."""

from __future__ import annotations

import math

import pytest
import torch

from saesuite.data.models import describe_model, load_model
from saesuite.data.sites import capture
from saesuite.eval.passes import evaluate
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.sites import ARCHITECTURES, SITE_NAMES, Site

SHAPE = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
HEAD_DIM = {"gemma2": 16, "gemma3_text": 16, "qwen3": 16}  # these configs default it


def tiny_config(model_type: str):
    from transformers import (
        AutoConfig,
        Gemma3Config,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    if model_type == "gemma3":  # the multimodal wrapper around a Gemma 3 text model
        text = Gemma3TextConfig(**SHAPE, head_dim=16)
        vision = SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, image_size=28, patch_size=14,
        )  # fmt: skip
        return Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                            mm_tokens_per_image=4)  # fmt: skip
    extra = {"head_dim": HEAD_DIM[model_type]} if model_type in HEAD_DIM else {}
    return AutoConfig.for_model(model_type, **SHAPE, **extra)


def save(model_type: str, path) -> None:
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    cfg = tiny_config(model_type)
    cls = Gemma3ForConditionalGeneration if model_type == "gemma3" else None
    model = cls(cfg) if cls else AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)


def model_cfg(path) -> dict:
    return {"source": str(path), "trust_remote_code": False, "dtype": "float32",
            "device": "cpu", "attn_implementation": None}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture_of_the_site_table(model_type, tmp_path):
    save(model_type, tmp_path / "m")
    info = describe_model("m", model_cfg(tmp_path / "m"), tmp_path / "cache")
    head_dim = HEAD_DIM.get(model_type if model_type != "gemma3" else "gemma3_text", 8)
    assert info["model_type"] == model_type and info["n_layers"] == 2
    assert info["site_widths"] == {"res": 32, "mlp": 32, "mlp_in": 32,
                                   "att": 4 * head_dim}  # fmt: skip

    model = load_model(model_cfg(tmp_path / "m"), tmp_path / "cache")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (4, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    sites = [Site(layer, kind) for layer in (0, 1) for kind in SITE_NAMES]
    got = capture(model, ids, sites)
    for s in sites:
        assert got[s].shape == (4, 12, info["site_widths"][s.kind]), s

    saes = {
        s.name: (s, JumpReLUSAE(got[s].shape[-1], 16).initialize(g))
        for s in sites if s.kind != "mlp_in"
    }  # fmt: skip
    acc = evaluate(model, ids, mask, saes, batch_size=2, loss_batch_size=2)
    for key, a in acc.items():
        m = a.metrics()
        assert m["tokens"] == 48, key
        for name in ("fvu", "delta_loss", "kl", "l0"):
            assert math.isfinite(m[name]), (key, name)
        assert m["kl"] >= -1e-6, key


def test_an_architecture_outside_the_site_table_is_refused_by_name(tmp_path):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    cfg = GPTNeoXConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "neox")
    with pytest.raises(
        ValueError, match=r"models.m: model_type 'gpt_neox' has no site"
    ):
        describe_model("m", model_cfg(tmp_path / "neox"), tmp_path / "cache")
