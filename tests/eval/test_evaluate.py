"""Evaluation metrics against independent computations on a tiny Gemma 3: an identity
"SAE" has delta loss, KL and FVU 0; a zero SAE has the zero-ablation loss; the mean
predictor has FVU 1; spliced loss and KL match a direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import load_tiny

from saesuite.data.sites import capture, logits_with
from saesuite.eval.passes import NextToken
from saesuite.eval.passes import evaluate as evaluate_acc
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.jobs import EvalJob, EvalMember
from saesuite.spec.sections import EvaluateConfig
from saesuite.spec.sites import Site
from saesuite.spec.sizes import dictionary_bytes


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = load_tiny(tiny_models["gemma3"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, model.config.vocab_size, (5, 16), generator=g)
    ids[:, 0] = 2
    ids[1, 7] = 1  # an EOS inside a sequence
    mask = (ids != 2) & (ids != 1)
    return model, ids, mask


def evaluate(*args, **kwargs) -> dict[str, dict]:
    return {k: a.metrics() for k, a in evaluate_acc(*args, **kwargs).items()}


def reference_loss_and_kl(clean, spliced, ids, mask) -> tuple[float, float, float]:
    """Clean and spliced next-token cross-entropy and KL(clean ‖ spliced), by
    torch's own functions, over predictions whose input and target are unmasked."""
    pred = mask[:, :-1] & mask[:, 1:]

    def ce(lg: torch.Tensor) -> float:
        per_token = F.cross_entropy(
            lg[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
        )
        return float(per_token[pred].mean())

    p, q = clean[:, :-1].log_softmax(-1), spliced[:, :-1].log_softmax(-1)
    kl = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)[pred].mean()
    return ce(clean), ce(spliced), float(kl)


def identity_sae(d: int) -> JumpReLUSAE:
    """f = [relu(x), relu(−x)], x̂ = relu(x) − relu(−x) = x exactly."""
    sae = JumpReLUSAE(d, 2 * d, apply_b_dec_to_input=False)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.threshold_raw.zero_()
    return sae


def const_sae(d: int, d_sae: int, b_dec: torch.Tensor) -> JumpReLUSAE:
    """No latent ever fires; x̂ = b_dec."""
    sae = JumpReLUSAE(d, d_sae, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.threshold_raw.fill_(1e9)
        sae.b_dec.copy_(b_dec)
    return sae


def seeded_sae() -> JumpReLUSAE:
    """A random 64 → 96 SAE at θ 0.05 (seed 0): some latents fire on every token."""
    torch.manual_seed(0)
    sae = JumpReLUSAE(64, 96, apply_b_dec_to_input=False).initialize()
    with torch.no_grad():
        sae.threshold_raw.fill_(0.05)
    return sae


def test_identity_zero_and_mean_saes(setup):
    model, ids, mask = setup
    site = Site(1, "res")
    acts = torch.cat(
        [capture(model, ids[i : i + 1].long(), [site])[site] for i in range(5)]
    )
    mean = acts[mask].double().mean(0).float()
    saes = {
        "id": (site, identity_sae(64)),
        "zero": (site, const_sae(64, 32, torch.zeros(64))),
        "mean": (site, const_sae(64, 32, mean)),
    }
    out = evaluate(model, ids, mask, saes, batch_size=2)
    n_pred = int((mask[:, :-1] & mask[:, 1:]).sum())
    assert out["id"]["tokens"] == int(mask.sum())
    assert out["id"]["delta_loss"] == pytest.approx(0.0, abs=1e-6)
    assert out["id"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert out["id"]["fvu"] == pytest.approx(0.0, abs=1e-9)
    assert out["id"]["cosine"] == pytest.approx(1.0)
    assert out["id"]["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    z = out["zero"]
    assert z["spliced_loss"] == pytest.approx(z["zero_ablation_loss"], rel=1e-6)
    assert z["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert z["dead"] == 32 and z["l0"] == 0 and z["delta_loss"] > 0.01
    assert out["mean"]["fvu"] == pytest.approx(1.0, rel=1e-5)
    assert len(out["id"]["delta_loss_by_position"]) == 16 and n_pred > 0


def test_spliced_loss_and_kl_match_a_direct_computation(setup):
    model, ids, mask = setup
    site = Site(2, "mlp")
    sae = seeded_sae()
    out = evaluate(model, ids, mask, {"s": (site, sae)}, batch_size=3)["s"]
    ids_l = ids.long()
    with torch.no_grad():
        clean = model(input_ids=ids_l).logits

    def splice(s, x):
        return torch.where(mask[..., None], sae(x), x)

    spliced = logits_with(model, ids_l, [site], splice)
    ce_clean, ce_spliced, kl = reference_loss_and_kl(clean, spliced, ids_l, mask)
    assert out["clean_loss"] == pytest.approx(ce_clean, rel=1e-5)
    assert out["delta_loss"] == pytest.approx(ce_spliced - ce_clean, abs=1e-5)
    assert out["kl"] == pytest.approx(kl, rel=1e-4)
    acts = capture(model, ids_l, [site])[site][mask]
    with torch.no_grad():
        f = sae.encode(acts)
    assert out["l0"] == pytest.approx(float((f != 0).sum(1).float().mean()))
    freq = (f != 0).double().mean(0)
    assert out["dead"] == int((freq == 0).sum())
    assert out["dense_latents"] == int((freq > 0.1).sum())
    hist = out["log10_frequency_histogram"]
    assert sum(hist["counts"]) + hist["below_range"] + out["dead"] == 96


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_outlier_tokens_keep_their_clean_activation_and_leave_the_metrics(setup):
    """A dictionary trained without its outlier tokens (max_norm_multiple) is
    evaluated without them, as BOS is: they keep their clean activation in the
    spliced pass, leave L0 and FVU, and are counted, with the FVU they would give;
    the loss tokens stay the mask's. Checked against a direct computation with one
    batch's median norm."""
    model, ids, mask = setup
    site = Site(1, "res")
    sae = seeded_sae()
    ids_l = ids.long()
    acts = capture(model, ids_l, [site])[site]
    norms = acts.norm(dim=-1)
    multiple = 1.1
    outlier = mask & (norms > multiple * norms[mask].median())
    keep = mask & ~outlier
    assert 0 < int(outlier.sum()) < int(keep.sum())
    out = evaluate(
        model,
        ids,
        mask,
        {"s": (site, sae)},
        batch_size=5,
        loss_batch_size=5,
        max_norm_multiple={"s": multiple},
    )["s"]
    ref = evaluate(model, ids, mask, {"s": (site, sae)}, batch_size=5)["s"]
    with torch.no_grad():
        clean = model(input_ids=ids_l).logits
        x_hat = sae(acts)
        f = sae.encode(acts[keep])
    spliced = logits_with(
        model, ids_l, [site], lambda s, x: torch.where(keep[..., None], sae(x), x)
    )
    ce_clean, ce_spliced, kl = reference_loss_and_kl(clean, spliced, ids_l, mask)
    assert out["outlier_tokens"] == int(outlier.sum()) and ref["outlier_tokens"] == 0
    assert out["tokens"] == int(keep.sum())
    assert out["loss_tokens"] == ref["loss_tokens"]
    assert out["delta_loss"] == pytest.approx(ce_spliced - ce_clean, abs=1e-5)
    assert out["kl"] == pytest.approx(kl, rel=1e-4)
    assert out["l0"] == pytest.approx(float((f != 0).sum(1).float().mean()))
    assert out["fvu"] == pytest.approx(_fvu(acts[keep], x_hat[keep]), rel=1e-6)
    assert out["fvu_with_outliers"] == pytest.approx(
        _fvu(acts[mask], x_hat[mask]), rel=1e-6
    )
    assert out["fvu_with_outliers"] == pytest.approx(ref["fvu"], rel=1e-9)


def test_loss_subset_and_layer_zero(setup):
    """Loss metrics on the first 2 sequences equal a run on those 2 alone; the
    reconstruction metrics still cover all 5; a layer-0 site (no layer to resume
    after) gives the same numbers through the full pass."""
    model, ids, mask = setup
    torch.manual_seed(1)
    saes = {
        f"{L}": (Site(L, "att"), JumpReLUSAE(64, 80, apply_b_dec_to_input=False))
        for L in (0, 3)
    }
    for _, sae in saes.values():
        sae.initialize()
        with torch.no_grad():
            sae.threshold_raw.fill_(0.02)
    sub = evaluate(model, ids, mask, saes, loss_sequences=2, batch_size=2)
    first = evaluate(model, ids[:2], mask[:2], saes)
    full = evaluate(model, ids, mask, saes)
    for k in saes:
        assert sub[k]["tokens"] == int(mask.sum()) == full[k]["tokens"]
        assert sub[k]["fvu"] == pytest.approx(full[k]["fvu"], rel=1e-9)
        assert sub[k]["l0"] == pytest.approx(full[k]["l0"], rel=1e-9)
        assert sub[k]["loss_tokens"] == first[k]["loss_tokens"]
        assert sub[k]["loss_tokens"] < full[k]["loss_tokens"]
        for name in ("delta_loss", "kl", "zero_ablation_loss"):
            assert sub[k][name] == pytest.approx(first[k][name], rel=1e-6)
    none = evaluate(model, ids, mask, saes, loss_sequences=0)
    assert "delta_loss" not in none["0"]
    assert none["0"]["fvu"] == pytest.approx(full["0"]["fvu"], rel=1e-12)


def test_an_sae_of_the_wrong_width_is_named_before_any_pass(tiny_models, tmp_path):
    from helpers import make_config
    from safetensors.torch import save_file

    from saesuite.data.tokens import save_tokens
    from saesuite.eval.evaluate import evaluate_layer
    from saesuite.spec.config import load_config

    cfg = load_config(make_config(tiny_models["gemma3"]))
    sae_dir = tmp_path / "sae"
    sae_dir.mkdir()
    tensors = JumpReLUSAE(32, 48, apply_b_dec_to_input=False).release_tensors()
    save_file(tensors, str(sae_dir / "sae.safetensors"))
    ids = torch.full((2, 16), 7, dtype=torch.int32)
    save_tokens(tmp_path / "eval.safetensors", ids, torch.ones(2, 16, dtype=torch.bool))
    d = Dictionary.of("other", "sae", 1, "res", 48, 1000, lambda_=1.0, target_l0=8)
    member = EvalMember(d.path, str(sae_dir), str(tmp_path / "out" / "sae.json"), d)
    ev = EvaluateConfig.from_dict(cfg["evaluate"])
    job = EvalJob("tiny", "text", 1, cfg["models"]["tiny"], ev, (member,))
    with pytest.raises(ValueError, match=r"width_48/l0_8 has d_in 32.*'tiny'.* 64"):
        evaluate_layer(
            job,
            data_path=tmp_path / "eval.safetensors",
            cache_root=tmp_path,
            out=tmp_path / "out" / "layer_1.json",
        )
    assert not (tmp_path / "out").exists()
    # a dictionary that writes another site than it reads (not an MLP's input and
    # output: a transcoder's) cannot reach the job: its JSON is refused, by name
    bad = job.to_dict()
    bad["members"][0]["dictionary"]["writes"] = ["layer_1.mlp"]
    with pytest.raises(ValueError, match=r"reads \['layer_1.res'\] and writes"):
        EvalJob.from_dict(bad)


def test_encoding_a_few_sequences_at_a_time_gives_the_same_metrics(setup):
    """A 2^20-latent SAE cannot encode a whole batch at once on a GPU; one sequence
    at a time must not change any metric."""
    model, ids, mask = setup
    site = Site(1, "res")
    sae = JumpReLUSAE(64, 96, apply_b_dec_to_input=False).initialize(
        torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        sae.threshold_raw.fill_(0.05)
    saes = {"s": (site, sae)}
    whole = evaluate(model, ids, mask, saes, batch_size=5, loss_batch_size=5)["s"]
    rows = evaluate(model, ids, mask, saes, batch_size=5, loss_batch_size=5,
                    encode_bytes=1)["s"]  # fmt: skip
    assert 0 < whole["l0"] < 96 and whole["fvu"] > 0
    for k, v in whole.items():
        if isinstance(v, float):
            assert rows[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert rows[k] == v, k


def test_saes_in_groups_that_fit_a_gpu_get_the_metrics_of_one_group(
    tiny_models, tmp_path
):
    from helpers import make_config
    from safetensors.torch import save_file

    from saesuite.cluster.memory import fit_groups
    from saesuite.data.tokens import save_tokens
    from saesuite.eval.evaluate import evaluate_layer, released_shape
    from saesuite.spec.config import load_config
    from saesuite.spec.io import read_json

    cfg = load_config(make_config(tiny_models["gemma3"]))
    saes = []
    for i, width in enumerate((48, 96, 32)):
        d = tmp_path / f"sae{i}"
        d.mkdir()
        sae = JumpReLUSAE(64, width).initialize(torch.Generator().manual_seed(i))
        save_file(sae.fold_normalization(1.0).release_tensors(),
                  str(d / "sae.safetensors"))  # fmt: skip
        assert released_shape(d) == (64, width)
        saes.append((f"k{i}", str(d)))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 200, (3, 16), generator=g, dtype=torch.int32)
    save_tokens(tmp_path / "eval.safetensors", ids, torch.ones(3, 16, dtype=torch.bool))
    sizes = [dictionary_bytes(64, w) for w in (48, 96, 32)]
    assert sizes[0] == 2 * 64 * 48 * 4  # float32 W_enc and W_dec
    assert fit_groups(sizes, sizes[1]) == [[0], [1], [2]]
    assert fit_groups(sizes, sizes[0] + sizes[1]) == [[0, 1], [2]]
    assert fit_groups(sizes, None) == [[0, 1, 2]]
    assert fit_groups(sizes, 10 * sum(sizes), frozenset({1})) == [[0], [1], [2]]
    got = {}
    for name, budget in (("one", None), ("split", sizes[1])):
        members = tuple(
            EvalMember(k, d, str(tmp_path / name / f"{k}.json"),
                       Dictionary.of("tiny", "sae", 1, "res", w, 1000, lambda_=1.0,
                                     target_l0=8))
            for (k, d), w in zip(saes, (48, 96, 32), strict=True)
        )  # fmt: skip
        ev = EvaluateConfig.from_dict(cfg["evaluate"])
        job = EvalJob("tiny", "text", 1, cfg["models"]["tiny"], ev,
                      members, group_bytes=budget)  # fmt: skip
        evaluate_layer(
            job,
            data_path=tmp_path / "eval.safetensors",
            cache_root=tmp_path,
            out=tmp_path / name / "layer.json",
        )
        got[name] = [read_json(tmp_path / name / f"k{i}.json")["metrics"]
                     for i in range(3)]  # fmt: skip
    assert got["one"] == got["split"]
    assert got["one"][0]["delta_loss"] != got["one"][1]["delta_loss"]


def test_kl_of_a_distribution_with_itself_is_zero_on_a_real_vocabulary():
    """On a Gemma-sized head (262,144 logits of Gemma's magnitude) KL(p‖p) is 0 to
    1e-6 (Σ p·logits − lse read it 2.5e-3 high in float32), and KL(p‖q) of a
    perturbed q agrees with a float64 log-softmax computation."""
    torch.manual_seed(0)
    V = 262144
    logits = torch.randn(2, 8, V) * 4 + 20
    ids = torch.randint(0, V, (2, 8))
    p, neg_entropy = NextToken(logits.clone(), ids).as_reference()
    same = NextToken(logits.clone(), ids).kl_from(p, neg_entropy)
    assert same.shape == (2, 7) and float(same.abs().max()) < 1e-6
    q_logits = logits + 0.05 * torch.randn_like(logits)
    kl = NextToken(q_logits.clone(), ids).kl_from(p, neg_entropy)
    lp = torch.log_softmax(logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    want = (lp.exp() * (lp - lq)).sum(-1)[:, :-1]
    torch.testing.assert_close(kl.double(), want, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("skip", [False, True])
def test_a_transcoder_is_spliced_in_for_the_mlp_and_scored_on_its_output(setup, skip):
    """A (skip-)transcoder at layer 1 reads the MLP's input and replaces the MLP's
    output in the same pass. Computed here independently, with hooks on the model's
    own modules: the prediction from pre_feedforward_layernorm's output put in place
    of post_feedforward_layernorm's output at unmasked positions."""
    model, ids, mask = setup
    ids_l = ids.long()
    torch.manual_seed(0)
    tc = JumpReLUSAE(64, 96, skip=skip, apply_b_dec_to_input=False).initialize()
    with torch.no_grad():
        tc.threshold_raw.fill_(0.05)
        if skip:
            tc.W_skip.normal_(0, 0.05)
    entry = (Site(1, "mlp_in"), Site(1, "mlp"), tc)
    out = evaluate(model, ids, mask, {"t": entry}, batch_size=3)["t"]

    layer = model.model.layers[1]
    seen: dict[str, torch.Tensor] = {}

    def keep_in(_m, _a, o):
        seen["x"] = o

    def replace_out(_m, _a, o):
        seen["y"] = o
        if "splice" in seen:
            return torch.where(mask[..., None], tc(seen["x"]), o)
        return None

    hooks = [
        layer.pre_feedforward_layernorm.register_forward_hook(keep_in),
        layer.post_feedforward_layernorm.register_forward_hook(replace_out),
    ]
    try:
        with torch.no_grad():
            clean = model(input_ids=ids_l).logits
            x, y = seen["x"][mask], seen["y"][mask]
            seen["splice"] = torch.ones(())
            spliced = model(input_ids=ids_l).logits
    finally:
        for h in hooks:
            h.remove()
    ce_clean, ce_spliced, kl = reference_loss_and_kl(clean, spliced, ids_l, mask)
    with torch.no_grad():
        y_hat = tc(x).double()
        f = tc.encode(x)
    y = y.double()
    fvu = (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert out["delta_loss"] == pytest.approx(ce_spliced - ce_clean, abs=1e-5)
    assert out["kl"] == pytest.approx(kl, rel=1e-4)
    assert out["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert out["l0"] == pytest.approx(float((f != 0).sum(1).float().mean()))
    assert 0 < out["l0"] < 96 and out["delta_loss"] != 0


def test_a_dictionary_is_evaluated_without_the_tokens_it_dropped_in_training(tmp_path):
    """The outlier multiple evaluation and dashboards use is the one its sae.json
    says training dropped by: none when it clipped them, trained on all, or has no
    sae.json (a dictionary from elsewhere)."""
    from saesuite.eval.evaluate import trained_outlier_multiple
    from saesuite.spec.io import write_json

    cases = {
        "drop": ({"max_norm_multiple": 5, "outlier_mode": "drop"}, 5),
        "clip": ({"max_norm_multiple": 5, "outlier_mode": "clip"}, None),
        "off": ({"max_norm_multiple": None, "outlier_mode": "drop"}, None),
    }
    for name, (train, want) in cases.items():
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "sae.json", {"train": train})
        assert trained_outlier_multiple(tmp_path / name) == want, name
    (tmp_path / "none").mkdir()
    assert trained_outlier_multiple(tmp_path / "none") is None
