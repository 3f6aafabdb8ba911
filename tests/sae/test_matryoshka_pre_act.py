"""Issue 19's Matryoshka loss and pre-activation loss: their values against a direct
computation (each prefix decoded on its own; the relu gap summed by hand), the
pre-activation loss's gradient against its closed form, the sparse step against
autograd with both on (SAE and skip-transcoder, both θ parameterisations), and the
trainer's prefixes and dead mask. The sharded step with both is in test_shard.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import sae64, x_near_threshold

from saesuite.sae.jumprelu import (
    JumpReLUSAE,
    LossTerms,
    pre_act_penalty,
    prefix_ends,
)
from saesuite.sae.member import Member, dead_mask, train_step
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sections import TrainConfig

C_PRE = 0.6


def test_prefix_ends_round_the_fractions_and_clip_them_to_a_shard():
    assert prefix_ends([0.25, 0.0625], 4096) == (256, 1024)
    assert prefix_ends([0.5, 1.0, 0.5], 10) == (5,)  # the full width is not listed
    assert prefix_ends([], 10) == ()
    assert prefix_ends([0.001], 100) == (1,)  # at least one latent
    # latents 0..99 on two shards, prefixes 30 and 70
    assert prefix_ends([0.3, 0.7], 100, 0, 50) == (30, 50)
    assert prefix_ends([0.3, 0.7], 100, 50, 100) == (0, 20)


def by_hand_inner(sae: JumpReLUSAE, x: torch.Tensor, ends: tuple[int, ...]) -> float:
    """Σ over prefixes P of mean_b ‖x − (f[:, :P] W_dec[:P] + b_dec)‖², each decoded
    through the module's own `decode` with the other latents zeroed."""
    with torch.no_grad():
        f = sae.encode(x)
        total = 0.0
        for end in ends:
            g = f.clone()
            g[:, end:] = 0
            total += float((x - sae.decode(g, x)).pow(2).sum(-1).mean())
    return total


def test_the_matryoshka_loss_adds_each_prefixs_own_reconstruction():
    sae = sae64(d_in=5, d_sae=7)
    x = x_near_threshold(sae)
    ends = prefix_ends([0.3, 0.6], 7)  # (2, 4)
    plain = sae.training_loss(x, LossTerms(lambda_=0.1))
    nested = sae.training_loss(x, LossTerms(lambda_=0.1, prefixes=ends))
    assert float(nested.reconstruction.detach()) == float(plain.reconstruction.detach())
    extra = float((nested.loss - plain.loss).detach())
    assert extra > 0
    assert extra == pytest.approx(by_hand_inner(sae, x, ends), rel=1e-12)


def test_the_pre_activation_loss_and_its_gradient_by_hand():
    sae = sae64(d_in=5, d_sae=7)
    x = x_near_threshold(sae)
    dead = torch.tensor([True, False, True, False, False, True, False])
    pre = sae.pre_acts(x).detach()
    theta = sae.threshold.detach()
    gap = (theta - pre).clamp_min(0) * dead  # (B, d_sae)
    want = C_PRE * float(gap.sum()) / len(x)
    assert float(pre_act_penalty(pre, theta, dead, C_PRE)) == pytest.approx(want)
    out = sae.training_loss(x, LossTerms(pre_act_coefficient=C_PRE), dead=dead)
    assert float(out.sparsity.detach()) == pytest.approx(want)
    out.sparsity.backward()
    below = ((pre < theta) & dead).double()  # where relu(θ − pre) has slope 1
    # ∂/∂b_enc = −c/B·#below, ∂/∂θ = +c/B·#below, only for dead latents
    torch.testing.assert_close(sae.b_enc.grad, -C_PRE * below.sum(0) / len(x))
    torch.testing.assert_close(sae.threshold_raw.grad, C_PRE * below.sum(0) / len(x))
    assert torch.all(sae.b_enc.grad[~dead] == 0)
    assert sae.W_dec.grad is None or torch.count_nonzero(sae.W_dec.grad) == 0
    # ∂/∂W_enc[:, i] = −c/B Σ_b below[b, i]·(x_b − b_dec)
    xc = (x - sae.b_dec).detach()
    torch.testing.assert_close(sae.W_enc.grad, -C_PRE * xc.T @ below / len(x))


def grads(sae: JumpReLUSAE) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("param", ["direct", "log"])
@pytest.mark.parametrize("kind", ["sae", "skip_transcoder"])
@pytest.mark.parametrize(
    "terms",
    [
        {"prefixes": (2, 4)},
        {"prefixes": (1,), "frequency_coefficient": 0.8, "max_frequency": 0.3},
        {"pre_act_coefficient": C_PRE},
        {"prefixes": (3, 5, 6), "pre_act_coefficient": C_PRE},
    ],
)
def test_the_sparse_step_equals_autograd_with_the_new_terms(param, kind, terms):
    sae = sae64(d_in=5, d_sae=7, threshold_param=param)
    target = None
    if kind == "skip_transcoder":
        sae = JumpReLUSAE(5, 7, d_out=4, skip=True, apply_b_dec_to_input=False,
                          dtype=torch.float64, bandwidth=sae.bandwidth,
                          threshold_param=param).initialize(
            torch.Generator().manual_seed(1))  # fmt: skip
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.3)
            sae.W_skip.normal_(0, 0.3)
        target = torch.randn(16, 4, dtype=torch.float64)
    x = x_near_threshold(sae)
    loss = LossTerms("target_l0", 0.4, 2.0, **terms)
    kw = dict(target=target, dead=torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=bool))
    a = dense_step(sae, x, loss, **kw)
    ga = grads(sae)
    b = sparse_step(sae, x, loss, **kw)
    gb = grads(sae)
    off = dense_step(sae, x, replace(loss, prefixes=(), pre_act_coefficient=0.0), **kw)
    grads(sae)
    assert a.loss > off.loss  # the new terms are on
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    assert a.reconstruction == pytest.approx(b.reconstruction, rel=1e-12)
    assert a.reconstruction == pytest.approx(off.reconstruction, rel=1e-12)
    assert torch.equal(a.counts, b.counts)
    for n in ga:
        assert ga[n].abs().sum() > 0, n
        torch.testing.assert_close(gb[n], ga[n], msg=n)


def member(cfg: TrainConfig, width: int = 32) -> Member:
    spec = Dictionary.of("synthetic", "sae", 0, "res", width, 64 * 10, lambda_=1e-3)
    return Member(spec, 8, cfg, seed=0, device="cpu")


def test_the_trainer_derives_prefixes_and_the_dead_mask_from_its_config():
    cfg = TrainConfig.defaults(
        batch_size=64,
        matryoshka_fractions=[0.25, 0.5],
        pre_act_coefficient=1e-3,
        pre_act_window_tokens=128,
    )
    m = member(cfg)
    assert m.prefixes == (8, 16)
    assert not dead_mask(m, cfg).any()
    m.since_fired[:5] = 128
    m.since_fired[5:9] = 127
    assert dead_mask(m, cfg).tolist() == [True] * 5 + [False] * 27
    off = member(cfg.replace(pre_act_coefficient=0.0))
    off.since_fired[:5] = 128
    assert dead_mask(off, cfg.replace(pre_act_coefficient=0.0)) is None


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_a_training_step_with_both_terms_logs_their_loss(mode):
    """The logged loss includes the Matryoshka and pre-activation terms; the logged
    reconstruction does not."""
    base = TrainConfig.defaults(batch_size=64, step=mode, log_every=1)
    on = base.replace(
        matryoshka_fractions=(0.25,), pre_act_coefficient=0.5, pre_act_window_tokens=64
    )
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    a, b = member(base), member(on)
    with torch.no_grad():  # a spread of thresholds: some latents miss some tokens
        for m in (a, b):
            m.sae.threshold_raw.uniform_(0.1, 1.0, generator=torch.Generator())
    b.sae.load_state_dict(a.sae.state_dict())
    b.since_fired[:] = 64  # every latent counts as dead for the pre-activation loss
    sa, sb = train_step(a, x, 0, base, 1), train_step(b, x, 0, on, 1)
    assert sb["reconstruction"] == pytest.approx(sa["reconstruction"], rel=1e-6)
    assert sb["loss"] > sa["loss"] + 1e-3
