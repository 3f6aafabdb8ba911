"""Sites against independent computations on tiny random Gemma 2, Gemma 3 and Llama
models: residual = the model's own hidden_states, o_proj(att) = the attention output,
residual-after-attention + mlp = residual, and replacement semantics."""

from __future__ import annotations

import pytest
import torch
from helpers import load_tiny

from saesuite.data.sites import capture, decoder_layers, logits_with, site_width
from saesuite.spec.sites import Site

ARCHS = ["gemma2", "gemma3", "llama"]


@pytest.fixture(params=ARCHS)
def model(request, tiny_models):
    return load_tiny(tiny_models[request.param])


def ids_batch(vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, vocab, (2, 24), generator=g)
    ids[:, 0] = 2  # BOS
    return ids


def all_sites(n_layers: int) -> list[Site]:
    return [
        Site(L, k) for L in range(n_layers) for k in ("res", "att", "mlp", "mlp_in")
    ]


def test_res_equals_hidden_states(model):
    ids = ids_batch(model.config.vocab_size)
    n = model.config.num_hidden_layers
    # The last layer's hidden_states entry is after the final norm: compare the others.
    sites = [Site(L, "res") for L in range(n - 1)]
    got = capture(model, ids, sites)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for s in sites:
        torch.testing.assert_close(got[s], hs[s.layer + 1], rtol=0, atol=0)


def test_att_mlp_and_residual_decomposition(model):
    ids = ids_batch(model.config.vocab_size)
    n = model.config.num_hidden_layers
    got = capture(model, ids, all_sites(n))
    layers = decoder_layers(model)
    attn_out, resid_mid, layer_in = {}, {}, {}
    hooks = []
    for L, layer in enumerate(layers):
        hooks.append(
            layer.self_attn.register_forward_hook(
                lambda m, a, o, L=L: attn_out.__setitem__(L, o[0])
            )
        )
        # The residual stream after attention is the input of the pre-MLP norm.
        mid = (
            layer.pre_feedforward_layernorm
            if hasattr(layer, "pre_feedforward_layernorm")
            else layer.post_attention_layernorm
        )
        hooks.append(
            mid.register_forward_pre_hook(
                lambda m, a, L=L: resid_mid.__setitem__(L, a[0])
            )
        )
        hooks.append(
            layer.register_forward_pre_hook(
                lambda m, a, L=L: layer_in.__setitem__(L, a[0])
            )
        )
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    cfg = model.config
    for L, layer in enumerate(layers):
        att = got[Site(L, "att")]
        assert att.shape == (2, 24, cfg.num_attention_heads * cfg.head_dim)
        assert att.shape[-1] == site_width(model, "att")
        # o_proj(att) is the attention block's output before any post-norm
        torch.testing.assert_close(layer.self_attn.o_proj(att), attn_out[L])
        # residual after attention + mlp site = residual after the block
        torch.testing.assert_close(
            resid_mid[L] + got[Site(L, "mlp")],
            got[Site(L, "res")],
            rtol=1e-5,
            atol=1e-5,
        )
        if hasattr(layer, "post_attention_layernorm") and hasattr(
            layer, "pre_feedforward_layernorm"
        ):  # Gemma: the attention output is normed before it joins the residual
            torch.testing.assert_close(
                layer_in[L] + layer.post_attention_layernorm(attn_out[L]), resid_mid[L]
            )
            torch.testing.assert_close(
                layer.pre_feedforward_layernorm(resid_mid[L]), got[Site(L, "mlp_in")]
            )
            torch.testing.assert_close(
                layer.post_feedforward_layernorm(layer.mlp(got[Site(L, "mlp_in")])),
                got[Site(L, "mlp")],
            )


def test_replace_identity_keeps_logits_and_zeros_change_them(model):
    ids = ids_batch(model.config.vocab_size)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    for kind in ("res", "att", "mlp", "mlp_in"):
        site = [Site(1, kind)]
        same = logits_with(model, ids, site, lambda s, x: x.clone())
        torch.testing.assert_close(same, clean, rtol=0, atol=0)
        zero = logits_with(model, ids, site, lambda s, x: torch.zeros_like(x))
        assert (zero - clean).abs().max() > 1e-3, kind


def test_capture_stops_before_the_lm_head(model):
    ids = ids_batch(model.config.vocab_size)
    calls = []
    h = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    later = decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append(2))
    try:
        capture(model, ids, [Site(0, "res"), Site(1, "att")])
    finally:
        h.remove()
        later.remove()
    assert calls == []


def test_capture_rejects_missing_layer(model):
    with pytest.raises(ValueError, match="layers"):
        capture(model, ids_batch(model.config.vocab_size), [Site(99, "res")])


def test_resume_after_a_layer_gives_the_full_pass_logits(model):
    """A spliced pass that replays layer L−1's kept output and runs only layers ≥ L
    equals the full spliced pass (same replacement at the same site)."""
    from saesuite.data.sites import layer_outputs, logits_from

    ids = ids_batch(model.config.vocab_size)
    n = model.config.num_hidden_layers
    kept: dict[int, object] = {}
    with torch.no_grad(), layer_outputs(model, list(range(n)), kept):
        clean = model(input_ids=ids, use_cache=False).logits

    def halve(_s, act):
        return act * 0.5

    for L in range(1, n):
        for kind in ("res", "att", "mlp"):
            site = [Site(L, kind)]
            full = logits_with(model, ids, site, halve)
            fast = logits_from(model, ids, site, halve, resume=(L - 1, kept[L - 1]))
            torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(full, clean)  # the splice did something
    # The layers' own forward comes back after the context.
    torch.testing.assert_close(model(input_ids=ids).logits, clean, rtol=0, atol=0)
    with pytest.raises(ValueError, match="site lies before"):
        logits_from(model, ids, [Site(0, "res")], halve, resume=(0, kept[0]))
