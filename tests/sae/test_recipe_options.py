"""Issue 19's recipe options in the trainer: the frequency penalty's value and
gradient against a closed form (θ only, zero below p_max), the sparse step against
autograd with it on, the encoder's initial scale, b_dec started at the data mean, and
the training log's dead and dense latent counts."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from helpers import sae64, x_near_threshold
from test_sae import closed_form_theta_grad

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms, frequency_penalty
from saesuite.sae.member import Member, init_b_dec, train_step
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sections import TrainConfig

MU, P_MAX = 0.8, 0.3


def test_frequency_penalty_value_by_hand():
    p = torch.tensor([0.0, 0.1, 0.3, 0.5, 1.0])
    # only 0.5 and 1.0 exceed 0.3: 0.8·((0.2)² + (0.7)²)/0.3
    want = MU * (0.2**2 + 0.7**2) / P_MAX
    assert float(frequency_penalty(p, MU, P_MAX)) == pytest.approx(want)
    assert float(frequency_penalty(p, MU, 1.0)) == 0.0


@pytest.mark.parametrize("param", ["direct", "log"])
def test_frequency_penalty_trains_theta_only_by_its_closed_form(param):
    sae = sae64(threshold_param=param)
    x = x_near_threshold(sae)
    pre = sae.pre_acts(x).detach()
    theta = sae.threshold.detach()
    freq = (pre > theta).double().mean(0)
    assert (freq > P_MAX).any() and (freq <= P_MAX).any()  # both sides exercised
    terms = LossTerms(lambda_=0.0, frequency_coefficient=MU, max_frequency=P_MAX)
    out = sae.training_loss(x, terms)
    assert float(out.sparsity.detach()) == pytest.approx(
        float(MU * ((freq - P_MAX).clamp_min(0) ** 2).sum() / P_MAX)
    )
    out.sparsity.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        g = getattr(sae, name).grad
        assert g is None or torch.count_nonzero(g) == 0, name
    # ∂/∂p_j = 2μ(p_j − p_max)₊/p_max, and p_j = mean_b H(pre_bj − θ_j)
    dp = 2 * MU * (freq - P_MAX).clamp_min(0) / P_MAX / x.shape[0]
    want = closed_form_theta_grad(pre, theta, dp.expand_as(pre), scale_by_theta=False)
    assert want.abs().sum() > 0
    got = (
        sae.threshold_raw.grad if param == "direct" else sae.log_threshold.grad / theta
    )
    torch.testing.assert_close(got, want)
    assert torch.all(got[freq <= P_MAX] == 0)


@pytest.mark.parametrize("penalty, target", [("l0", None), ("target_l0", 2.0)])
def test_sparse_step_equals_autograd_with_the_frequency_penalty(penalty, target):
    terms = LossTerms(
        penalty, 0.4, target, frequency_coefficient=MU, max_frequency=P_MAX
    )
    sae = sae64()
    x = x_near_threshold(sae)
    a = dense_step(sae, x, terms)
    ga = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    b = sparse_step(sae, x, terms)
    gb = {n: p.grad.clone() for n, p in sae.named_parameters()}
    off = dense_step(sae64(), x, replace(terms, frequency_coefficient=0.0))
    assert a.loss > off.loss  # the penalty is on
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], msg=n)


def test_encoder_init_scale_scales_only_the_encoder():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    one = JumpReLUSAE(16, 64).initialize(g())
    small = JumpReLUSAE(16, 64).initialize(g(), encoder_scale=0.01)
    assert torch.equal(small.W_dec, one.W_dec)
    torch.testing.assert_close(small.W_enc, 0.01 * one.W_dec.T)
    tc = JumpReLUSAE(16, 64, d_out=8, apply_b_dec_to_input=False)
    tc_one = JumpReLUSAE(16, 64, d_out=8, apply_b_dec_to_input=False)
    tc.initialize(g(), encoder_scale=0.1)
    tc_one.initialize(g())
    torch.testing.assert_close(tc.W_enc, 0.1 * tc_one.W_enc)


def member(cfg: TrainConfig) -> Member:
    spec = Dictionary.of("synthetic", "sae", 0, "res", 32, 64 * 10, lambda_=1e-3)
    return Member(spec, 8, cfg, seed=0, device="cpu")


@pytest.mark.parametrize("how", ["zeros", "mean"])
def test_b_dec_starts_at_the_first_batchs_mean(how):
    cfg = TrainConfig.defaults(batch_size=64, lr=1e-3, b_dec_init=how)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)) + 3.0
    m = member(cfg)
    train_step(m, x, 0, cfg, 1)
    start = x.mean(0) if how == "mean" else torch.zeros(8)
    # one Adam step moves each entry by at most ~lr (here 0.1·lr: the warm-up's start)
    assert (m.sae.b_dec.detach() - start).abs().max() <= 1.01 * 1e-3
    again = member(cfg)
    init_b_dec(again, x, 1)
    torch.testing.assert_close(again.sae.b_dec.detach(), x.mean(0))


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_the_log_counts_dense_and_dead_latents_of_the_batch(mode):
    """log_every 1: each logged step's window is its own batch, so dense = latents
    firing on > 10 % of it, and dead (a run shorter than dead_window_tokens) = those
    not firing on it, both computed here by encoding the batch before the step."""
    cfg = TrainConfig.defaults(batch_size=64, log_every=1, step=mode)
    m = member(cfg)
    with torch.no_grad():
        m.sae.threshold_raw.uniform_(0.5, 3.0)  # a spread of frequencies
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    before = copy.deepcopy(m.sae)
    out = train_step(m, x, 0, cfg, 1)
    with torch.no_grad():
        freq = (before.encode(x) != 0).double().mean(0)
    assert 0 < out["dense"] < 32 and 0 < out["dead"] < 32, out
    assert out["dense"] == int((freq > 0.1).sum())
    assert out["dead"] == int((freq == 0).sum())
    x2 = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        freq2 = (m.sae.encode(x2) != 0).double().mean(0)
    assert train_step(m, x2, 1, cfg, 1)["dense"] == int((freq2 > 0.1).sum())


@pytest.mark.parametrize("norm", ["unit", "free"])
def test_decoder_rows_stay_unit_or_train_freely_from_their_init_norm(norm):
    cfg = TrainConfig.defaults(batch_size=64, lr=1e-2, decoder_norm=norm)
    if norm == "free":
        cfg = cfg.replace(decoder_init_norm=0.1)
    m = member(cfg)
    start = m.sae.W_dec.detach().norm(dim=1)
    want = 1.0 if norm == "unit" else 0.1
    torch.testing.assert_close(start, torch.full_like(start, want))
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
    for step in range(3):
        train_step(m, x, step, cfg, 1)
    after = m.sae.W_dec.detach().norm(dim=1)
    if norm == "unit":
        torch.testing.assert_close(after, torch.ones_like(after))
    else:  # the rows moved off norm 0.1 (the gradient's parallel part is kept)
        assert (after - 0.1).abs().max() > 1e-3


def test_a_decoder_init_norm_needs_a_free_decoder():
    from helpers import make_config

    from saesuite.spec.config import ConfigError, check_config, load_config

    cfg = make_config("test/placeholder")
    cfg["train"] |= {"decoder_init_norm": 0.1}
    with pytest.raises(ConfigError, match="train.decoder_init_norm"):
        check_config(load_config(cfg))
    cfg["train"] |= {"decoder_norm": "free"}
    check_config(load_config(cfg))


def test_integer_adam_betas_from_yaml_are_taken():
    """`adam_beta1: 0` in a YAML config is an int, which torch's Adam refuses."""
    m = member(TrainConfig.defaults(adam_beta1=0))
    assert m.opt.param_groups[0]["betas"] == (0.0, 0.999)


def test_outlier_tokens_leave_the_batch_and_the_step_trains_on_the_rest():
    """train.max_norm_multiple: rows above the multiple of the batch's median norm
    (a transcoder's where its input's or its target's is) are left out, counted in
    the log; the step equals one on the kept rows alone; off, nothing is dropped."""
    from saesuite.sae.outliers import drop_outliers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    x[5] *= 20.0  # an attention-sink token
    y = torch.randn(64, 8, generator=g)
    y[9] *= 20.0
    kept, _, n = drop_outliers(x, None, 5.0)
    assert n == 1 and torch.equal(kept, torch.cat([x[:5], x[6:]]))
    kx, ky, n = drop_outliers(x, y, 5.0)
    rows = [i for i in range(64) if i not in (5, 9)]
    assert n == 2 and torch.equal(kx, x[rows]) and torch.equal(ky, y[rows])
    assert drop_outliers(x, None, 100.0)[2] == 0
    # clip: every row stays, the outliers scaled down to 5 × the median norm
    cx, cy, n = drop_outliers(x, y, 5.0, "clip")
    assert n == 2 and cx.shape == x.shape and cy.shape == y.shape
    torch.testing.assert_close(cx[5].norm(), 5.0 * x.norm(dim=1).median())
    torch.testing.assert_close(cx[5] / cx[5].norm(), x[5] / x[5].norm())
    torch.testing.assert_close(cy[9].norm(), 5.0 * y.norm(dim=1).median())
    assert torch.equal(cx[rows], x[rows]) and torch.equal(cy[rows], y[rows])

    on = TrainConfig.defaults(batch_size=64, lr=1e-3, max_norm_multiple=5.0)
    off = TrainConfig.defaults(batch_size=64, lr=1e-3)
    a, b = member(on), member(off)
    log = train_step(a, x, 0, on, 1)
    ref = train_step(b, x[[i for i in range(64) if i != 5]], 0, off, 1)
    assert log["outliers"] == 1 and "outliers" not in ref
    assert log["loss"] == ref["loss"] and log["fvu"] == ref["fvu"]
    for k, p in a.sae.state_dict().items():
        assert torch.equal(p, b.sae.state_dict()[k]), k
