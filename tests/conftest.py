"""Shared fixtures: tiny random models saved as local model directories and a config
built on them (the helpers that make them are in helpers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import build_tokenizer, make_config, save_tiny_it_model, save_tiny_model

from saesuite.spec.config import load_config


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        arch: save_tiny_model(root / arch, arch, tokenizer)
        for arch in ("gemma2", "gemma3", "llama")
    }


@pytest.fixture(scope="session")
def tiny_it_model(tiny_models, tokenizer, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("it")
    return save_tiny_it_model(root / "gemma3-it", tiny_models["gemma3"], tokenizer)


@pytest.fixture
def tiny_config(tiny_models, tmp_path) -> dict[str, Any]:
    cfg = make_config(tiny_models["gemma3"], output_root=str(tmp_path / "results"))
    return load_config(cfg)
