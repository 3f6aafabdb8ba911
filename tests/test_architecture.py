"""The package's layers (README, "Architecture"): import-linter's contracts hold and
catch an upward import; no import cycle between any two modules; saesuite modules
import each other at the top of the file (the CLI's subcommands excepted, each with a
reason); and planning a suite (`snakemake -n`, `saesuite plan`) never imports torch."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from helpers import job_counts

from saesuite.spec.config import REPO_ROOT

SRC = REPO_ROOT / "src"
BIN = Path(sys.executable).parent
# Imported by planning: a hook that records and refuses these.
HEAVY = ("torch", "transformers", "safetensors", "matplotlib", "datasets")


def lint_imports(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    return subprocess.run(
        [str(BIN / "lint-imports"), str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env,
    )  # fmt: skip


def test_the_import_contracts_hold():
    out = lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("spec/io.py", "import saesuite.cluster.plan", "Layers"),
        ("cluster/plan.py", "import torch", "Configuration and planning"),
    ],
)
def test_the_contracts_catch_a_violation(tmp_path, module, line, broken):
    shutil.copytree(SRC / "saesuite", tmp_path / "saesuite")
    target = tmp_path / "saesuite" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "1 broken" in out.stdout
    assert re.search(rf"^{broken}.* BROKEN$", out.stdout, re.M), out.stdout


def module_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("saesuite")
    return {
        m: {i for i in graph.find_modules_directly_imported_by(m)
            if i.startswith("saesuite")}
        for m in graph.modules if m.startswith("saesuite")
    }  # fmt: skip


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_module_imports_itself_through_others():
    assert find_cycle(module_graph()) is None
    # the check itself finds a planted cycle
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(planted) == ["a", "b", "c", "a"]


def test_saesuite_imports_are_at_the_top_of_each_module():
    late = []
    for path in sorted((SRC / "saesuite").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                name = getattr(sub, "module", None) or ""
                if isinstance(sub, ast.ImportFrom) and name.startswith("saesuite"):
                    where = f"{path.relative_to(SRC)}:{sub.lineno}"
                    # allowed only in the CLI, with its reason in a comment just
                    # above the block of imports
                    i = sub.lineno - 2
                    while lines[i].lstrip().startswith(("from ", "import ")):
                        i -= 1
                    commented = lines[i].lstrip().startswith("#")
                    if path.name != "cli.py" or not commented:
                        late.append(where)
    assert late == []


NO_HEAVY = """
import importlib.abc, os, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            with open(os.environ["SAESUITE_IMPORT_LOG"], "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"planning imported {{name}}")
sys.meta_path.insert(0, Refuse())
"""


def run_without_heavy(tmp_path: Path, cmd: list[str]) -> tuple[int, str, list[str]]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(NO_HEAVY.format(heavy=HEAVY))
    log = tmp_path / "imports.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(hook), "SAESUITE_IMPORT_LOG": str(log)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    seen = log.read_text().split() if log.exists() else []
    return out.returncode, out.stdout + out.stderr, seen


def test_planning_never_imports_torch(tmp_path):
    # the hook sees an import of torch where there is one
    rc, _, seen = run_without_heavy(
        tmp_path, [sys.executable, "-c", "import saesuite.data.sites"]
    )
    assert rc != 0 and seen[0] == "torch"
    suite = str(REPO_ROOT / "config/suites/gemma-scope-2-270m.yaml")
    dry = [str(BIN / "snakemake"), "-n", "-s", str(REPO_ROOT / "Snakefile"),
           "--directory", str(tmp_path / "run"), "--configfile", suite]  # fmt: skip
    rc, out, seen = run_without_heavy(tmp_path, dry)
    assert rc == 0 and seen == [], out
    # it planned the suite's jobs: 54 sites of SAEs, 18 layers of transcoders (a
    # layer's plain and skip-transcoders in one job)
    assert job_counts(out)["train"] == 72
    plan = [str(BIN / "saesuite"), "plan", "--configfile", suite]
    rc, out, seen = run_without_heavy(tmp_path, plan)
    assert rc == 0 and seen == [], out
    assert "GPU-hours" in out
