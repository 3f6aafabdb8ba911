"""The typed configuration sections (saesuite.spec.sections) against
config/schema.yaml, the one source of their keys' defaults and descriptions."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from saesuite.spec.config import REPO_ROOT, SCHEMA_PATH, load_config
from saesuite.spec.sections import (
    SECTIONS,
    DashboardsConfig,
    TrainConfig,
    schema_mismatch,
)


@pytest.fixture(scope="module")
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def test_every_schema_key_has_a_field_and_every_field_a_key(schema):
    assert schema_mismatch(schema) == {}
    # a key added to one side only is named
    more = copy.deepcopy(schema)
    more["properties"]["train"]["properties"]["lr_floor"] = {"type": "number"}
    assert schema_mismatch(more) == {
        "train": {"keys without a field": ["lr_floor"], "fields without a key": []}
    }
    less = copy.deepcopy(schema)
    del less["properties"]["evaluate"]["properties"]["loss_tokens"]
    assert schema_mismatch(less)["evaluate"]["fields without a key"] == ["loss_tokens"]


def test_the_sections_are_built_once_from_the_validated_config():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    for cls in SECTIONS:
        section = cls.from_dict(cfg[cls.SECTION])
        again = cls.from_dict(json.loads(json.dumps(section.to_dict())))
        assert again == section
        assert section.to_dict() == cfg[cls.SECTION]  # nothing added or lost
    train = TrainConfig.from_dict(cfg["train"])
    # the default config's values, through the saesuite recipe, typed
    assert (train.lr, train.batch_size, train.recipe) == (1e-3, 1024, "saesuite")
    assert train.matryoshka_fractions == ()
    dash = DashboardsConfig.from_dict(cfg["dashboards"])
    assert dash.layers == (9,) and dash.enabled is True


def test_a_section_with_an_unknown_or_missing_key_is_refused_by_name():
    good = TrainConfig.defaults().to_dict()
    with pytest.raises(ValueError, match=r"'train': unknown keys \['lr_typo'\]"):
        TrainConfig.from_dict({**good, "lr_typo": 1.0})
    del good["lr"]
    with pytest.raises(ValueError, match=r"missing \['lr'\]"):
        TrainConfig.from_dict(good)


def test_values_take_their_fields_types():
    t = TrainConfig.defaults(adam_beta1=0, matryoshka_fractions=[0.25], lr=1)
    assert isinstance(t.adam_beta1, float) and t.adam_beta1 == 0.0
    assert isinstance(t.lr, float) and t.matryoshka_fractions == (0.25,)
    assert isinstance(t.batch_size, int) and t.max_grad_norm is None
