"""The hand-written sparse step gives the same loss and gradients as autograd through
the dense loss (an independent computation), for both penalties and both threshold
parameterisations, with pre-activations near the threshold."""

from __future__ import annotations

import pytest
import torch
from helpers import sae64, x_near_threshold

from saesuite.sae.jumprelu import LossTerms
from saesuite.sae.step import dense_step, sparse_step

PARAMS = ("W_enc", "W_dec", "b_enc", "b_dec")


def grads(sae):
    out = {n: getattr(sae, n).grad.clone() for n in PARAMS}
    th = sae.log_threshold if sae.threshold_param == "log" else sae.threshold_raw
    out["theta"] = th.grad.clone()
    sae.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("param", ["direct", "log"])
@pytest.mark.parametrize(
    "penalty, coef, target", [("l0", 0.3, None), ("target_l0", 0.7, 2.0)]
)
def test_sparse_step_equals_dense_autograd(param, penalty, coef, target):
    sae = sae64(d_in=5, d_sae=7, threshold_param=param)
    x = x_near_threshold(sae, n=16)
    terms = LossTerms(penalty, coef, target)
    a = dense_step(sae, x, terms)
    ga = grads(sae)
    b = sparse_step(sae, x, terms)
    gb = grads(sae)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    assert a.l0 == pytest.approx(b.l0) and a.fvu == pytest.approx(b.fvu)
    assert torch.equal(a.fired, b.fired)
    assert ga["theta"].abs().sum() > 0
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], msg=name)


def test_sparse_step_on_a_realistic_shape():
    torch.manual_seed(0)
    from saesuite.sae.jumprelu import JumpReLUSAE

    sae = JumpReLUSAE(32, 512, dtype=torch.float64).initialize(
        torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        sae.threshold_raw.fill_(0.25)
        sae.b_dec.normal_(0, 0.05)
    x = torch.randn(300, 32, dtype=torch.float64) / 32**0.5
    a = dense_step(sae, x, LossTerms("l0", 1e-2))
    ga = grads(sae)
    sparse_step(sae, x, LossTerms("l0", 1e-2))
    gb = grads(sae)
    assert 1 < a.l0 < 100, a.l0
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], msg=name)
