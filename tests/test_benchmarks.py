"""Every benchmark in benchmarks/ runs in its quick mode (tiny shapes, a few steps),
so none can rot unnoticed: each prints its markdown table with a row per case and
finite, non-negative measurements. The numbers themselves are not checked here: speed
goals live in BENCHMARKS.md, not in tests."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest

from saesuite.spec.config import REPO_ROOT


def bench(name: str):
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(out: str) -> list[list[str]]:
    """The body rows of the markdown table in `out` (header and rule dropped)."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3 and set(lines[1]) <= set("|-: "), out
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell)]


def assert_measured(rows: list[list[str]], columns: range) -> None:
    for row in rows:
        for cell in (row[i] for i in columns):
            vals = numbers(cell)
            assert vals and all(math.isfinite(v) and v >= 0 for v in vals), row


def test_train_benchmark_against_saelens(capsys):
    bench("train").main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["saesuite", "SAELens"]
    assert_measured([r[:2] + r[4:] for r in rows], range(1, 6))
    assert "ratio saesuite / SAELens:" in out and "width 64, batch 128, 6 steps" in out


def test_extract_benchmark_on_a_local_model(capsys, tiny_models):
    bench("extract").main(["--quick", "--model", str(tiny_models["gemma3"])])
    rows = table(capsys.readouterr().out)
    # 4 layers × 4 site kinds (res, att, mlp, mlp_in) of the tiny model
    assert [r[0] for r in rows] == [
        "bare forward",
        "extract 1 site",
        "extract 16 sites",
    ]
    assert_measured(rows, range(1, 4))


def test_evaluate_benchmark_on_a_local_model(capsys, tiny_models):
    bench("evaluate").main(["--quick", "--model", str(tiny_models["gemma3"])])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and "(random)" in out
    for row in rows:  # marginal costs may come out negative on tiny, noisy timings
        assert all(numbers(c) and math.isfinite(numbers(c)[0]) for c in row[1:]), row


def test_plan_benchmark_on_one_suite(capsys):
    bench("plan").main(["--quick"])
    rows = table(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0][0] == "gemma-2-27b-pt"
    assert_measured(rows, range(1, 5))


@pytest.mark.slow
def test_shard_benchmark_in_two_processes(capsys):
    bench("shard").main(["--quick"])
    out = capsys.readouterr().out
    rows = table(out)
    assert [r[0] for r in rows] == ["2"] and "width 256, d_in 16" in out
    assert_measured(rows, range(1, 4))
