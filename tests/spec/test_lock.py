"""One running workflow per output root (issue 18, item 10): a second run, from any
checkout, is refused before its first job, naming the run that holds the root; the
lock ends with the process that took it, however it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import make_config, snakemake

from saesuite.spec import paths
from saesuite.spec.config import REPO_ROOT
from saesuite.spec.lock import RootInUse, lock_roots, release_roots

HOLD = (
    "import sys, time; from saesuite.spec.lock import lock_roots; "
    "lock_roots(sys.argv[1:], '/another/checkout'); print('held', flush=True); "
    "time.sleep(120)"
)


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock of tmp_path/results."""
    root = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], env=env,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline() == "held\n"
    yield root, p
    p.kill()
    p.wait()


def test_a_held_root_is_refused_naming_its_holder_until_it_ends(held, tmp_path):
    root, p = held
    other = tmp_path / "scratch"
    with pytest.raises(RootInUse) as err:
        lock_roots([str(other), str(root)], tmp_path)
    msg = str(err.value)
    assert str(root) in msg and f'"pid": {p.pid}' in msg and "/another/checkout" in msg
    assert "output_root" in msg
    # the root taken before the refusal is not kept locked
    taken = lock_roots([str(other)], tmp_path)
    assert taken == [paths.run_lock(str(other))]
    release_roots()
    p.kill()
    p.wait()  # the holder is gone (as a crashed run): its lock with it
    assert lock_roots([str(root), str(root)], tmp_path) == [paths.run_lock(str(root))]
    info = json.loads(paths.run_lock(str(root)).read_text())
    assert info["pid"] == os.getpid() and info["checkout"] == str(tmp_path.resolve())
    release_roots()


def test_a_second_snakemake_on_a_held_root_stops_before_any_job(held, tmp_path):
    root, p = held
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(make_config(output_root="results"))
    )
    plan = snakemake(tmp_path, "-n")  # reviewing a plan needs no lock
    assert plan.returncode == 0, plan.stderr
    run = snakemake(tmp_path, "--cores", "1")
    assert run.returncode != 0
    assert f"{root} is in use by another saesuite run" in run.stderr + run.stdout
    assert f'"pid": {p.pid}' in run.stderr + run.stdout
    assert sorted(x.name for x in root.iterdir()) == [paths.RUN_LOCK]  # no job ran
