"""The conda environment for cluster jobs pins exactly what pyproject.toml does."""

from __future__ import annotations

import tomllib

import yaml

from saesuite.spec.config import REPO_ROOT


def test_conda_env_pins_agree_with_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO_ROOT / "envs" / "saesuite.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(
        project["dependencies"]
    )
    py = next(d for d in env["dependencies"] if str(d).startswith("python="))
    assert project["requires-python"] == ">=" + py.split("=")[1]


def test_every_rule_uses_the_env():
    for smk in (REPO_ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        assert text.count("rule ") == text.count(
            'conda:\n        "../envs/saesuite.yaml"'
        )
