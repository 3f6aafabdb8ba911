"""The one dictionary identity (saesuite.spec.dictionary): the kinds table, the sites
each kind relates, its JSON and what it says of itself in tables and folders."""

from __future__ import annotations

import json

import pytest

from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.dictionary import FAMILY_TITLES, KINDS, Dictionary
from saesuite.spec.sites import SITE_NAMES, Site
from saesuite.spec.suite import expand_suite


@pytest.fixture(scope="module")
def default_suite() -> list[Dictionary]:
    return expand_suite(load_config(REPO_ROOT / "config" / "config.yaml"))


def test_each_kind_reads_and_writes_the_sites_of_its_rule():
    sae = Dictionary.of("m", "sae", 5, "att", 64, 1000, lambda_=0.01, target_l0=20)
    assert sae.reads == sae.writes == (Site(5, "att"),) and not sae.paired
    for kind in ("transcoder", "skip_transcoder"):
        tc = Dictionary.of("m", kind, 9, "mlp", 64, 1000, lambda_=1e-3)
        assert (tc.reads, tc.writes) == ((Site(9, "mlp_in"),), (Site(9, "mlp"),))
        assert tc.paired and tc.skip == (kind == "skip_transcoder")
        assert tc.family == kind and tc.release_site == "transcoder"
        assert tc.path == f"layer_9/{kind}/width_64/lambda_0.001"
    assert (sae.family, sae.release_site, sae.path) == (
        "att",
        "att",
        "layer_5/att/width_64/l0_20",
    )
    # every family a train job can cover has a title; an SAE's is its site's
    assert set(FAMILY_TITLES) == set(SITE_NAMES) | {
        k for k, v in KINDS.items() if v.reads is not None
    }


def test_a_dictionary_its_kind_does_not_relate_cannot_be_made():
    with pytest.raises(ValueError, match="unknown dictionary kind 'acausal'"):
        Dictionary.of("m", "acausal", 1, "mlp", 64, 1000, lambda_=1.0)
    with pytest.raises(ValueError, match="a clt spans two or more layers"):
        Dictionary.of("m", "clt", 1, "mlp", 64, 1000, lambda_=1.0)
    with pytest.raises(ValueError, match=r"must be one of \['mlp'\], not 'res'"):
        Dictionary.of("m", "transcoder", 1, "res", 64, 1000, lambda_=1.0)
    ok = Dictionary.of("m", "sae", 1, "res", 64, 1000, lambda_=1.0)
    with pytest.raises(ValueError, match="an SAE reconstructs the site it reads"):
        ok.replace(writes=(Site(2, "res"),))
    with pytest.raises(ValueError, match="an SAE reconstructs the site it reads"):
        ok.replace(kind="transcoder")


def test_a_clt_is_one_dictionary_over_its_layers():
    """A CLT reads every layer's MLP input and writes every layer's MLP output; its
    folder names its span, as deep as a per-layer dictionary's; its JSON round-trips;
    a span of one layer, layers out of order or other sites cannot be made."""
    c = Dictionary.spanning("m", "clt", [0, 1, 2, 3], 128, 1000, lambda_=1.0,
                            target_l0=8)  # fmt: skip
    assert c.reads == tuple(Site(i, "mlp_in") for i in range(4))
    assert c.writes == tuple(Site(i, "mlp") for i in range(4))
    assert (c.spans, c.layers, c.layer, c.family, c.job, c.release_site) == (
        True, (0, 1, 2, 3), 0, "clt", "clt", "clt")  # fmt: skip
    assert c.path == "clt/layers_0-3/width_128/l0_8"
    assert c.path.count("/") == Dictionary.of(
        "m", "sae", 1, "res", 64, 1000, lambda_=1.0).path.count("/")  # fmt: skip
    gaps = Dictionary.spanning("m", "clt", [7, 13, 17, 22], 64, 1000, lambda_=1.0)
    assert gaps.span == "layers_7_13_17_22"
    assert Dictionary.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for layers in ([3], [2, 1], [1, 1]):
        with pytest.raises(ValueError, match="two or more increasing layers"):
            Dictionary.spanning("m", "clt", layers, 64, 1000, lambda_=1.0)
    with pytest.raises(ValueError, match="two or more increasing layers"):
        c.replace(writes=tuple(Site(i, "res") for i in range(4)))
    with pytest.raises(ValueError, match="one dictionary per layer"):
        Dictionary.spanning("m", "transcoder", [0, 1], 64, 1000, lambda_=1.0)
    # a weakly causal crosscoder: the same shape over the residual streams
    x = Dictionary.spanning("m", "crosscoder", [5, 9, 12, 15], 64, 1000,
                            lambda_=1.0, target_l0=8)  # fmt: skip
    assert x.reads == x.writes == tuple(Site(L, "res") for L in (5, 9, 12, 15))
    assert (x.family, x.job, x.release_site, x.paired) == (
        "crosscoder", "crosscoder", "crosscoder", False)  # fmt: skip
    assert x.path == "crosscoder/layers_5_9_12_15/width_64/l0_8"


def test_json_round_trips_and_names_each_quantity_once(default_suite):
    for d in default_suite:
        text = json.dumps(d.to_dict())
        assert Dictionary.from_dict(json.loads(text)) == d
    d = next(d for d in default_suite if d.target_l0 == 20)
    # the schema's names: `lambda` and `target_l0`; no `value`, `coefficient`
    assert set(d.to_dict()) == {"model", "kind", "reads", "writes", "width",
                                "lambda", "target_l0", "tokens"}  # fmt: skip
    gs1 = Dictionary.of("m", "sae", 1, "res", 64, 1000, lambda_=6e-4)
    assert (gs1.penalty, gs1.value, gs1.target_l0) == ("l0", 6e-4, None)


def test_the_default_suite_keeps_its_folders_order_and_records(default_suite):
    """What the default run's outputs are named by and sorted in: the folders and the
    eval tables' identity columns, as before the identity was one type."""
    want = sorted(
        [f"layer_{L}/{s}/width_4096/l0_{t}" for L in (5, 9, 12, 15)
         for s in ("res", "att", "mlp") for t in (20, 80)]
        + [f"layer_{L}/{k}/width_4096/l0_{t}" for L in (9, 15)
           for k in ("transcoder", "skip_transcoder") for t in (20, 80)]
    )  # fmt: skip
    assert sorted(d.path for d in default_suite) == want
    legacy = [
        (d.model, d.layer, d.site, d.width, d.penalty, d.value, d.lambda_, d.tokens,
         d.kind)
        for d in default_suite
    ]  # fmt: skip
    assert legacy == sorted(legacy)  # the order SAESpec's fields gave
    tc = next(d for d in default_suite if d.kind == "skip_transcoder")
    assert tc.record() == {
        "model": "gemma-3-270m", "layer": 9, "site": "skip_transcoder",
        "width": 4096, "penalty": "target_l0", "value": 20, "coefficient": 0.01,
        "train_tokens": 300000, "path": "layer_9/skip_transcoder/width_4096/l0_20",
    }  # fmt: skip
