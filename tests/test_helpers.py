"""The test suite's own guard: an outside part a test needs (an external client,
Chromium, SLURM) that is missing skips the test here and fails it in CI, which sets
the SAESUITE_REQUIRE_* variables (.ci/run)."""

from __future__ import annotations

import pytest
from helpers import client, missing


def test_a_missing_client_skips_here_and_fails_where_ci_requires_it(monkeypatch):
    monkeypatch.delenv("SAESUITE_REQUIRE_CLIENTS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_client"):
        client("no_such_client")
    monkeypatch.setenv("SAESUITE_REQUIRE_CLIENTS", "1")
    with pytest.raises(pytest.fail.Exception, match="SAESUITE_REQUIRE_CLIENTS"):
        client("no_such_client")
    assert client("safetensors").__name__ == "safetensors"  # present: the module


def test_ci_requires_every_outside_part_the_tests_guard():
    """Each variable `missing` is called with is exported by .ci/run."""
    import re

    from saesuite.spec.config import REPO_ROOT

    used = set()
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        used |= set(re.findall(r'"(SAESUITE_REQUIRE_[A-Z]+)"', path.read_text()))
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert used >= {"SAESUITE_REQUIRE_CLIENTS", "SAESUITE_REQUIRE_CHROMIUM"}
    for name in used:
        assert f"{name}=1" in ci, name
    with pytest.raises(pytest.skip.Exception, match="why"):
        missing("why", "SAESUITE_REQUIRE_NOTHING_SET")
