"""The JumpReLU SAE: every gradient against an independent closed-form or
finite-difference computation (points near the threshold included), initialisation,
the decoder-norm constraint, and folding the normalisation for release."""

from __future__ import annotations

import pytest
import torch
from helpers import EPS, sae64, x_near_threshold

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms, sparsity_penalty


def closed_form_theta_grad(pre, theta, g, scale_by_theta):
    """−Σ_b (θ/ε or 1/ε)·K((pre − θ)/ε)·g, computed element by element."""
    out = torch.zeros_like(theta)
    for b in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            u = float((pre[b, j] - theta[j]) / EPS)
            if -0.5 < u < 0.5:
                factor = float(theta[j]) if scale_by_theta else 1.0
                out[j] -= factor / EPS * g[b, j]
    return out


def test_kernel_points_are_really_inside():
    sae = sae64()
    x = x_near_threshold(sae)
    u = (sae.pre_acts(x) - sae.threshold) / EPS
    assert ((u.abs() < 0.5).sum()) >= 4


@pytest.mark.parametrize("param", ["direct", "log"])
def test_reconstruction_gradient_of_threshold_closed_form(param):
    sae = sae64(threshold_param=param)
    x = x_near_threshold(sae)
    out = sae.training_loss(x, LossTerms("l0", 0.0))
    out.loss.backward()
    with torch.no_grad():
        pre, theta = sae.pre_acts(x), sae.threshold.detach()
        f = pre * (pre > theta)
        x_hat = f @ sae.W_dec + sae.b_dec
        # d recon / d f = −2 (x − x̂) W_decᵀ / B
        g = -2 * (x - x_hat) @ sae.W_dec.T / x.shape[0]
    want = closed_form_theta_grad(pre, theta, g, scale_by_theta=True)
    assert want.abs().sum() > 0
    got = (
        sae.threshold_raw.grad if param == "direct" else sae.log_threshold.grad / theta
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("penalty, target", [("l0", None), ("target_l0", 3.0)])
def test_sparsity_term_trains_only_theta(penalty, target):
    sae = sae64()
    x = x_near_threshold(sae)
    lam = 0.37
    pre = sae.pre_acts(x).detach()
    theta = sae.threshold.detach()
    out = sae.training_loss(x, LossTerms(penalty, lam, target))
    out.sparsity.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g = getattr(sae, name).grad
        assert g is None or torch.count_nonzero(g) == 0, name
    l0 = (pre > theta).double().sum(1)
    if penalty == "l0":
        dl_dl0 = torch.full_like(l0, lam / len(l0))
    else:
        dl_dl0 = lam * (2 / target) * 2 * (l0 - target) / len(l0)
    g = dl_dl0[:, None].expand_as(pre)
    want = closed_form_theta_grad(pre, theta, g, scale_by_theta=False)
    assert want.abs().sum() > 0
    torch.testing.assert_close(sae.threshold_raw.grad, want)


def test_weight_gradients_match_finite_differences():
    sae = sae64()
    torch.manual_seed(3)
    x = torch.randn(12, sae.d_in, dtype=torch.float64)
    # Keep every pre-activation far from its threshold so a small step cannot cross.
    with torch.no_grad():
        pre = sae.pre_acts(x)
        near = (pre - sae.threshold).abs() < 0.05
        sae.threshold_raw[near.any(0)] += 0.2
    out = sae.training_loss(x, LossTerms("l0", 0.5))
    out.loss.backward()
    h = 1e-6

    def loss() -> float:
        with torch.no_grad():
            return float(sae.training_loss(x, LossTerms("l0", 0.5)).loss)

    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        p = getattr(sae, name)
        flat = p.data.view(-1)
        for k in range(0, flat.numel(), max(1, flat.numel() // 9)):
            old = float(flat[k])
            flat[k] = old + h
            up = loss()
            flat[k] = old - h
            down = loss()
            flat[k] = old
            fd = (up - down) / (2 * h)
            assert float(p.grad.view(-1)[k]) == pytest.approx(fd, rel=1e-5, abs=1e-8), (
                name,
                k,
            )


def test_forward_encode_decode():
    sae = sae64()
    x = x_near_threshold(sae)
    f = sae.encode(x)
    assert f.shape == (16, 7)
    pre = sae.pre_acts(x)
    assert torch.equal(f == 0, pre <= sae.threshold)
    torch.testing.assert_close(sae(x), f @ sae.W_dec + sae.b_dec)
    out = sae.training_loss(x)
    torch.testing.assert_close(out.x_hat, sae(x))
    assert float(out.l0) == pytest.approx(float((f != 0).sum(1).double().mean()))


def test_initialisation():
    sae = JumpReLUSAE(64, 256).initialize(torch.Generator().manual_seed(0))
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(256))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert sae.b_enc.abs().sum() == 0 and sae.b_dec.abs().sum() == 0
    torch.testing.assert_close(sae.threshold, torch.full((256,), 0.001))
    assert JumpReLUSAE(4, 8, threshold_param="log").threshold[
        0
    ].item() == pytest.approx(0.001)
    again = JumpReLUSAE(64, 256).initialize(torch.Generator().manual_seed(0))
    assert torch.equal(again.W_dec, sae.W_dec)


def test_decoder_constraint():
    sae = sae64()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(7, 1, dtype=torch.float64) + 0.5)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    before = sae.W_dec.grad.clone()
    sae.remove_parallel_decoder_grad()
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        (sae.W_dec.grad * unit).sum(1), torch.zeros(7, dtype=torch.float64)
    )
    removed = before - sae.W_dec.grad
    # what was removed is parallel to each row
    torch.testing.assert_close(removed, (removed * unit).sum(1, keepdim=True) * unit)
    sae.normalize_decoder()
    torch.testing.assert_close(
        sae.W_dec.norm(dim=1), torch.ones(7, dtype=torch.float64)
    )


def test_fold_normalization_is_exact():
    sae = sae64(d_in=6, d_sae=9)
    C = 37.5
    torch.manual_seed(4)
    x_raw = torch.randn(20, 6, dtype=torch.float64) * C
    folded = sae.fold_normalization(C)
    assert not folded.apply_b_dec_to_input
    torch.testing.assert_close(folded.encode(x_raw), C * sae.encode(x_raw / C))
    torch.testing.assert_close(folded(x_raw), C * sae(x_raw / C))
    # and by the explicit formulas of RECIPE.md
    torch.testing.assert_close(
        folded.b_enc, C * sae.b_enc - C * (sae.b_dec @ sae.W_enc)
    )
    torch.testing.assert_close(folded.threshold, C * sae.threshold)
    assert (sae.encode(x_raw / C) != 0).any()
    back = JumpReLUSAE.from_release(folded.release_tensors())
    torch.testing.assert_close(back(x_raw), folded(x_raw))
    with pytest.raises(ValueError, match="fold_normalization"):
        sae.release_tensors()


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold_param"):
        JumpReLUSAE(4, 8, threshold_param="exp")
    with pytest.raises(ValueError, match="target_l0"):
        sparsity_penalty(torch.ones(3), "target_l0", 1.0, None)
