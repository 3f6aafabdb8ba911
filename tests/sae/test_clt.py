"""The cross-layer transcoder (issue 37, item 1): its decode over active latents equals
the dense sum ŷ_j = Σ_{i≤j} f_i W_dec,i→j + b_dec,j computed here by hand, in values
and in every gradient; layer i writes no earlier layer; each layer's sparsity has
its own target."""

from __future__ import annotations

import copy

import pytest
import torch

from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.sae.jumprelu import LossTerms, sparsity_penalty

L, D, W, B = 4, 6, 32, 10


def clt(seed: int = 0) -> CrossLayerTranscoder:
    g = torch.Generator().manual_seed(seed)
    m = CrossLayerTranscoder(L, D, W, bandwidth=0.05, dtype=torch.float64)
    m.initialize(g).double()
    with torch.no_grad():
        m.b_enc.normal_(0, 0.3, generator=g)
        m.b_dec.normal_(0, 0.3, generator=g)
        m.threshold_raw.uniform_(0.2, 0.8, generator=g)
    return m


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, D, generator=g, dtype=torch.float64),
            torch.randn(B, L, D, generator=g, dtype=torch.float64))  # fmt: skip


def by_hand(m: CrossLayerTranscoder, f: torch.Tensor) -> torch.Tensor:
    y = torch.zeros(B, L, D, dtype=f.dtype)
    for j in range(L):
        y[:, j] = m.b_dec[j]
        for i in range(j + 1):
            block = m.W_dec[i][:, (j - i) * D : (j - i + 1) * D]  # W_dec,i→j
            y[:, j] += f[:, i] @ block
    return y


def test_the_sparse_decode_is_the_cross_layer_sum():
    m, (x, _) = clt(), inputs()
    with torch.no_grad():
        f = m.encode(x)
        assert 0 < (f > 0).double().mean() < 0.5  # sparse, not empty
        want = by_hand(m, f)
        torch.testing.assert_close(m.decode(f), want)
        torch.testing.assert_close(m.decode_dense(f), want)
        # layer i writes layers j ≥ i only: changing layer 2's latents moves 2 and 3
        g = f.clone()
        g[:, 2] += 1.0
        moved = (m.decode(g) - m.decode(f)).abs().amax(dim=(0, 2))
        assert moved[:2].max() == 0 and moved[2:].min() > 0


def test_the_sparse_path_gives_autograds_dense_gradients():
    x, y = inputs()
    terms = tuple(LossTerms("target_l0", 0.3, t) for t in (2.0, 4.0, 6.0, 8.0))
    grads = []
    for dense in (True, False):
        m = clt()
        out = m.training_loss(x, y, terms, dense=dense)
        out.loss.backward()
        grads.append((out, {k: p.grad.clone() for k, p in m.named_parameters()}))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a.loss, b.loss)
    assert set(ga) == set(gb) and len(ga) == 4 + L
    for k in ga:
        assert ga[k].abs().sum() > 0, k
        torch.testing.assert_close(gb[k], ga[k], msg=k)


def test_each_layers_sparsity_has_its_own_target():
    m, (x, y) = clt(), inputs()
    targets = (1.0, 3.0, 5.0, 7.0)
    terms = tuple(LossTerms("target_l0", 0.5, t) for t in targets)
    out = m.training_loss(x, y, terms)
    with torch.no_grad():
        l0 = (m.pre_acts(x) > m.threshold).double().sum(-1)  # (B, L)
        y_hat = by_hand(m, m.encode(x))
    torch.testing.assert_close(out.l0, l0.mean(0))
    torch.testing.assert_close(out.reconstruction, (y - y_hat).pow(2).sum(-1).mean(0))
    want = out.reconstruction.sum() + sum(
        sparsity_penalty(l0[:, i], "target_l0", 0.5, t) for i, t in enumerate(targets)
    )
    torch.testing.assert_close(out.loss.detach(), want)
    with pytest.raises(ValueError, match="3 LossTerms for 4 layers"):
        m.training_loss(x, y, terms[:3])


def test_a_few_steps_learn_a_planted_cross_layer_map():
    """y_j = Σ_{i ≤ j} x_i A_i→j: the loss falls under Adam."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, L, D, generator=g)
    A = torch.randn(L, L, D, D, generator=g) / D**0.5
    y = torch.stack([sum(x[:, i] @ A[i, j] for i in range(j + 1)) for j in range(L)], 1)
    m = CrossLayerTranscoder(L, D, W, init_threshold=0.01).initialize(g)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    terms = tuple(LossTerms("l0", 1e-4) for _ in range(L))
    first = None
    for _ in range(100):
        out = m.training_loss(x, y, terms)
        first = first or float(out.reconstruction.sum())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.reconstruction.sum()) < 0.5 * first


def test_folding_the_scalars_gives_the_trained_map_on_raw_activations():
    """fold_normalization: the folded CLT on raw x_i equals d_j × the trained CLT
    on x_i / c_i, at every output layer, with each latent's firing unchanged."""
    g = torch.Generator().manual_seed(3)
    L, d, w = 3, 8, 16
    clt = CrossLayerTranscoder(L, d, w).initialize(g)
    with torch.no_grad():
        clt.b_enc.normal_(0, 0.1, generator=g)
        clt.b_dec.normal_(0, 0.5, generator=g)
        clt.threshold_raw.uniform_(0.01, 0.2, generator=g)
    c, dd = [2.0, 0.5, 7.0], [3.0, 0.25, 11.0]
    x = torch.randn(32, L, d, generator=g) * torch.tensor(c)[:, None]
    with torch.no_grad():
        trained = clt(x / torch.tensor(c)[:, None]) * torch.tensor(dd)[:, None]
        fires = clt.encode(x / torch.tensor(c)[:, None]) > 0
        folded = copy.deepcopy(clt).fold_normalization(c, dd)
        torch.testing.assert_close(folded(x), trained, rtol=1e-5, atol=1e-5)
        assert torch.equal(folded.encode(x) > 0, fires) and fires.any()
    with pytest.raises(ValueError, match="2 input and 3 output scales for 3 layers"):
        clt.fold_normalization(c[:2], dd)
