"""Job logs: an attempt that fails keeps its part of the log beside it (Snakemake
deletes a job's log before retrying it); processes a job starts write into the same
log; log records start on their own line even after an unterminated progress bar,
whoever wrote it."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from saesuite.data.logs import job_log

log = logging.getLogger("saesuite.test")
WORKER = "import sys; sys.stderr.write('worker:  40%|████      | 40/100\\r')"


def text(path) -> str:
    with open(path, newline="") as f:  # '\r' kept as written
        return f.read()


def test_a_failed_attempt_keeps_its_log_and_a_good_one_leaves_only_the_log(tmp_path):
    path = tmp_path / "train" / "layer_2.res.log"
    with pytest.raises(SystemExit), job_log(path):
        print("\rtraining:  40%|████      | 40/100", end="")  # tqdm, no newline
        log.warning("first record")
        # a worker process (torchrun's) writes into the same file, no newline either
        subprocess.run([sys.executable, "-c", WORKER], stderr=sys.stderr, check=True)
        log.warning("signal 10: checkpoint at step 40 written; exiting 75 (retry)")
        raise SystemExit(75)
    first = text(tmp_path / "train" / "layer_2.res.attempt1.log")
    assert "40/100\n" in first and "40/100\r\n" in first  # records on their own lines
    lines = first.splitlines()
    assert any(ln.endswith("saesuite.test: first record") for ln in lines)
    assert any(ln.endswith("saesuite.test: signal 10: checkpoint at step 40 written; "
                           "exiting 75 (retry)") for ln in lines)  # fmt: skip
    assert "worker:  40%" in first  # the worker's output is in the attempt's log
    assert "job failed" in first  # the traceback of the exit
    assert text(path) == first

    path.unlink()  # what Snakemake does before the retry
    with job_log(path):
        log.info("resuming layer_2.res from step 40")
    assert "resuming" in path.read_text() and "signal 10" not in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "layer_2.res.attempt1.log", "layer_2.res.log",
    ]  # fmt: skip
    assert text(path.parent / "layer_2.res.attempt1.log") == first

    with pytest.raises(RuntimeError), job_log(path):  # a later failure: attempt 2
        raise RuntimeError("disk full")
    second = (path.parent / "layer_2.res.attempt2.log").read_text()
    assert "disk full" in second and "resuming" not in second  # only its own part
