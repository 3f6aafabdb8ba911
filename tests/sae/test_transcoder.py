"""Transcoders (issue 16): a JumpReLU dictionary that reads one site and predicts
another, optionally with an affine skip connection. Gradients of both steps against
an independent computation written here from the loss's definition, and the folding
of two normalisation scalars (C_x on the input, C_y on the target) and the skip
matrix into released weights."""

from __future__ import annotations

import pytest
import torch
from helpers import EPS

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
from saesuite.sae.step import dense_step, sparse_step

D_IN, D_OUT, WIDTH, N = 5, 4, 7, 16


def transcoder(skip: bool) -> JumpReLUSAE:
    t = JumpReLUSAE(D_IN, WIDTH, d_out=D_OUT, skip=skip, apply_b_dec_to_input=False,
                    dtype=torch.float64, bandwidth=EPS)  # fmt: skip
    t.initialize(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        t.b_enc.normal_(0, 0.1, generator=g)
        t.b_dec.normal_(0, 0.1, generator=g)
        t.threshold_raw.copy_(torch.rand(WIDTH, dtype=torch.float64, generator=g) + 0.1)
        if skip:
            t.W_skip.normal_(0, 0.3, generator=g)
    return t


def batch(t: JumpReLUSAE) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with pre-activations inside the kernel window of some latents (solved
    for, as in helpers.x_near_threshold), and unrelated targets."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N, D_IN, dtype=torch.float64, generator=g)
    with torch.no_grad():
        pre, theta = t.pre_acts(x), t.threshold
        for i, off in enumerate([0.2, -0.3, 0.45, -0.4, 0.7, -2.0, 3.0]):
            j = i % WIDTH
            w = t.W_enc[:, j]
            x[i] += (theta[j] + off * EPS - pre[i, j]) * w / w.dot(w)
    return x, torch.randn(N, D_OUT, dtype=torch.float64, generator=g)


def independent(t: JumpReLUSAE, x, y, coef: float) -> dict[str, torch.Tensor]:
    """The gradients from the definition: ordinary autograd of ‖y − ŷ‖² through
    f = pre·H(pre − θ) with H held constant, and θ's straight-through estimate
    −(θ/ε)·K·∂L/∂f − (1/ε)·K·λ/B summed over the batch, K the rectangle kernel."""
    p = {k: v.detach().clone().requires_grad_() for k, v in t.named_parameters()}
    theta = p["threshold_raw"].detach()
    pre = x @ p["W_enc"] + p["b_enc"]
    on = (pre > theta).double().detach()
    f = pre * on
    f.retain_grad()
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if t.skip:
        y_hat = y_hat + x @ p["W_skip"]
    ((y - y_hat).pow(2).sum(-1).mean()).backward()
    u = (pre.detach() - theta) / EPS
    k = ((u > -0.5) & (u < 0.5)).double()
    g_theta = (-(theta / EPS) * k * f.grad).sum(0) - (k * coef / N / EPS).sum(0)
    out = {n: v.grad for n, v in p.items() if n != "threshold_raw"}
    return {**out, "threshold_raw": g_theta}


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("step", [dense_step, sparse_step])
def test_transcoder_gradients_equal_the_definition(skip, step):
    t = transcoder(skip)
    x, y = batch(t)
    want = independent(t, x, y, coef=0.3)
    stats = step(t, x, LossTerms("l0", 0.3), target=y)
    got = {n: v.grad for n, v in t.named_parameters()}
    assert set(got) == set(want) and ("W_skip" in got) == skip
    assert want["threshold_raw"].abs().sum() > 0  # the kernel window is hit
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    with torch.no_grad():
        y_hat = t(x)
        err = (y - y_hat).pow(2).sum()
    assert stats.fvu == pytest.approx(float(err / (y - y.mean(0)).pow(2).sum()))


@pytest.mark.parametrize("skip", [False, True])
def test_folding_two_scalars_and_the_skip_matrix_is_exact(skip):
    """Trained on x / C_x to predict y / C_y; released, it maps raw x to raw ŷ:
    ŷ_raw = C_y · ŷ(x_raw / C_x), latents C_y times the trained ones, same support."""
    t = transcoder(skip)
    c_x, c_y = 3.0, 0.25
    x_raw = torch.randn(N, D_IN, dtype=torch.float64) * c_x
    released = t.fold_normalization(c_x, c_y)
    with torch.no_grad():
        f = t.encode(x_raw / c_x)
        want = c_y * t.decode(f, x_raw / c_x)
        f_raw = released.encode(x_raw)
        torch.testing.assert_close(released.decode(f_raw, x_raw), want)
        torch.testing.assert_close(f_raw, c_y * f)
    assert (f != 0).any() and torch.equal(f != 0, f_raw != 0)
    torch.testing.assert_close(released.W_dec, t.W_dec)  # unit rows kept
    tensors = released.release_tensors()
    assert ("W_skip" in tensors) == skip
    again = JumpReLUSAE.from_release(tensors)
    assert (again.d_in, again.d_out, again.skip) == (D_IN, D_OUT, skip)
    with torch.no_grad():
        torch.testing.assert_close(again(x_raw), released(x_raw))


def test_a_transcoder_cannot_subtract_its_output_bias_from_its_input():
    with pytest.raises(ValueError, match="apply_b_dec_to_input=False"):
        JumpReLUSAE(D_IN, WIDTH, d_out=D_OUT)
    t = transcoder(skip=True)
    with pytest.raises(ValueError, match="pass x"):
        t.decode(torch.zeros(1, WIDTH, dtype=torch.float64))
