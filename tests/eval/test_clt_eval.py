"""A cross-layer transcoder evaluated as a replacement model (issue 37, item 3), on the
tiny Gemma 3 against independent computations: the closed-loop pass equals the fixed
point of splicing fixed predictions (iterated once per layer, since layer j's
prediction depends only on the replacements before it); its delta loss, KL and loss
recovered equal torch's own cross-entropy and KL over those logits; each layer's FVU
and L0 equal a direct computation on captured activations; one layer alone equals
splicing that layer's open-loop prediction; a CLT writing nothing is zero-ablation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import load_tiny

from saesuite.data.sites import capture, logits_with
from saesuite.eval.clt_eval import clt_passes, replacement_pass
from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.spec.sites import Site

L = 4  # the tiny models' layers


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = load_tiny(tiny_models["gemma3"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, model.config.vocab_size, (5, 16), generator=g)
    ids[:, 0] = 2
    mask = ids != 2
    ins = [Site(i, "mlp_in") for i in range(L)]
    outs = [Site(i, "mlp") for i in range(L)]
    acts = capture(model, ids, ins + outs)
    x = torch.stack([acts[s] for s in ins], dim=2).reshape(
        -1, L, acts[ins[0]].shape[-1]
    )
    y = torch.stack([acts[s] for s in outs], dim=2).reshape(
        -1, L, acts[outs[0]].shape[-1]
    )
    clt = CrossLayerTranscoder(L, x.shape[-1], 32, y.shape[-1]).initialize(g)
    with torch.no_grad():  # fire on ~10 % of tokens, predict at the targets' scale
        clt.threshold_raw.copy_(clt.pre_acts(x).quantile(0.9, dim=0).clamp(min=1e-3))
        for w in clt.W_dec:
            w.mul_(y.norm(dim=-1).mean() / 4)
        clt.b_dec.copy_(y.mean(0))
    return model, ids, mask, ins, outs, clt.eval()


def ce(logits, ids, pred):
    """torch's cross-entropy of each prediction where `pred`, summed."""
    flat = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                           reduction="none").view(pred.shape)  # fmt: skip
    return flat[pred].sum()


def kl(clean, other, pred):
    p = F.log_softmax(clean[:, :-1].double(), -1)
    q = F.log_softmax(other[:, :-1].double(), -1)
    return (p.exp() * (p - q)).sum(-1)[pred].sum()


def open_loop(model, clt, ids, ins, outs):
    """The CLT's prediction (B, T, L, d) from the clean inputs."""
    acts = capture(model, ids, ins)
    x = torch.stack([acts[s] for s in ins], dim=2)
    B, T = ids.shape
    with torch.no_grad():
        return clt(x.reshape(B * T, L, -1)).view(B, T, L, -1)


def fixed_point(model, clt, ids, ins, outs, keep):
    """Logits with every MLP output replaced by a fixed tensor Y, after Y ← CLT(MLP
    inputs of the pass that splices Y) L times (Y's layers < k are exact after k)."""
    B, T = ids.shape
    y = torch.zeros(B, T, clt.n_layers, clt.d_out)
    for _ in range(clt.n_layers + 1):
        captured = {}

        def put(site, act, y=y):
            if site in ins:  # what the pass holds here, before it is written
                captured[site] = act
            if site not in outs:
                return None
            return torch.where(keep[..., None], y[:, :, outs.index(site)], act)

        logits = logits_with(model, ids, list(dict.fromkeys(ins + outs)), put)
        x = torch.stack([captured[s] for s in ins], dim=2)
        with torch.no_grad():
            y = clt(x.reshape(B * T, clt.n_layers, -1)).view(B, T, clt.n_layers, -1)
    return logits


def test_the_replacement_pass_is_the_fixed_point_of_spliced_predictions(setup):
    model, ids, mask, ins, outs, clt = setup
    got = replacement_pass(model, clt, ids, ins, outs, mask)
    want = fixed_point(model, clt, ids, ins, outs, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    clean = logits_with(model, ids, [], lambda s, a: None)
    assert (got - clean).abs().max() > 1e-2  # the splice changed something


def test_metrics_equal_torchs_own_computation(setup):
    model, ids, mask, ins, outs, clt = setup
    acc = clt_passes(model, clt, ids, mask, ins, outs, loss_sequences=3,
                     batch_size=2, loss_batch_size=2)  # fmt: skip
    m = acc.metrics()
    loss_ids, pred = ids[:3], (mask[:3, :-1] & mask[:3, 1:])
    keep = mask[:3]
    clean = logits_with(model, loss_ids, [], lambda s, a: None)
    full = fixed_point(model, clt, loss_ids, ins, outs, keep)
    zero = logits_with(model, loss_ids, outs,
                       lambda s, a: torch.where(keep[..., None], 0.0, a))  # fmt: skip
    n = pred.sum()
    c, s, z = (ce(t, loss_ids, pred) / n for t in (clean, full, zero))
    assert m["loss_tokens"] == n
    assert m["delta_loss"] == pytest.approx(float(s - c), abs=2e-5)
    assert m["loss_recovered"] == pytest.approx(float(1 - (s - c) / (z - c)), abs=1e-4)
    assert m["kl"] == pytest.approx(float(kl(clean, full, pred) / n), abs=2e-5)
    # each layer's FVU and L0 on every unmasked token, open loop
    y_hat = open_loop(model, clt, ids, ins, outs)
    acts = capture(model, ids, outs)
    with torch.no_grad():
        x = torch.stack([capture(model, ids, ins)[s] for s in ins], dim=2)
        f = clt.encode(x.reshape(-1, L, x.shape[-1])).view(*ids.shape, L, -1)
    for j, site in enumerate(outs):
        yj, hj = acts[site][mask].double(), y_hat[:, :, j][mask].double()
        fvu = (yj - hj).pow(2).sum() / (yj - yj.mean(0)).pow(2).sum()
        assert m["by_layer"][j]["fvu"] == pytest.approx(float(fvu), rel=1e-6)
        l0 = (f[:, :, j][mask] > 0).sum(-1).double().mean()
        assert m["by_layer"][j]["l0"] == pytest.approx(float(l0), rel=1e-9)
        assert 0 < m["by_layer"][j]["l0"] < 32
        # layer j alone: its open-loop prediction spliced in, nothing else
        alone = logits_with(model, loss_ids, [site], lambda s, a, j=j: torch.where(
            keep[..., None], y_hat[:3, :, j], a))  # fmt: skip
        want = ce(alone, loss_ids, pred) / n - c
        got = m["by_layer"][j]["delta_loss_alone"]
        assert got == pytest.approx(float(want), abs=2e-5)
    assert m["l0"] == pytest.approx(sum(b["l0"] for b in m["by_layer"]))


def test_a_clt_that_writes_nothing_is_zero_ablation(setup):
    model, ids, mask, ins, outs, clt = setup
    empty = CrossLayerTranscoder(L, clt.d_in, clt.width, clt.d_out).eval()
    m = clt_passes(model, empty, ids, mask, ins, outs, loss_sequences=2).metrics()
    assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablation"], abs=1e-6)
    assert m["loss_recovered"] == pytest.approx(0.0, abs=1e-5)


def test_a_crosscoder_replaces_its_residual_streams_as_their_fixed_point(setup):
    """A weakly causal crosscoder over layers 1 and 3 reads each layer's residual
    stream before writing it: the replacement pass equals the fixed point of
    splicing fixed reconstructions there, and one layer alone its open-loop one."""
    model, ids, mask, *_ = setup
    sites = [Site(1, "res"), Site(3, "res")]
    acts = capture(model, ids, sites)
    x = torch.stack([acts[s] for s in sites], dim=2).reshape(-1, 2, 64)
    g = torch.Generator().manual_seed(3)
    xc = CrossLayerTranscoder(2, 64, 32).initialize(g)
    with torch.no_grad():
        xc.threshold_raw.copy_(xc.pre_acts(x).quantile(0.9, dim=0).clamp(min=1e-3))
        for w in xc.W_dec:
            w.mul_(x.norm(dim=-1).mean() / 3)
        xc.b_dec.copy_(x.mean(0))
    got = replacement_pass(model, xc.eval(), ids, sites, sites, mask)
    want = fixed_point(model, xc, ids, sites, sites, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    m = clt_passes(model, xc, ids, mask, sites, sites, loss_sequences=2).metrics()
    pred = mask[:2, :-1] & mask[:2, 1:]
    clean = logits_with(model, ids[:2], [], lambda s, a: None)
    with torch.no_grad():
        y = xc(x).view(*ids.shape, 2, 64)
    alone = logits_with(model, ids[:2], [sites[1]], lambda s, a: torch.where(
        mask[:2, :, None], y[:2, :, 1], a))  # fmt: skip
    want = (ce(alone, ids[:2], pred) - ce(clean, ids[:2], pred)) / pred.sum()
    assert m["by_layer"][1]["delta_loss_alone"] == pytest.approx(float(want), abs=2e-5)
