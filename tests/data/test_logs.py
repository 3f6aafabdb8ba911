"""Job logs: every attempt that did not succeed keeps its own log (Snakemake deletes
a job's log before retrying it), and log records start on their own line even after
an unterminated progress bar."""

from __future__ import annotations

import logging

import pytest

from saesuite.data.logs import job_log

log = logging.getLogger("saesuite.test")


def test_a_failed_attempt_keeps_its_log_and_a_good_one_leaves_only_the_log(tmp_path):
    path = tmp_path / "train" / "layer_2.res.log"
    with pytest.raises(SystemExit), job_log(path):
        print("\rtraining:  40%|████      | 40/100", end="")  # tqdm, no newline
        log.warning("signal 10: checkpoint at step 40 written; exiting 75 (retry)")
        raise SystemExit(75)
    first = (tmp_path / "train" / "layer_2.res.attempt1.log").read_text()
    # the record is on a line of its own, after the bar
    assert "40/100\n" in first
    lines = first.splitlines()
    assert any(ln.endswith("saesuite.test: signal 10: checkpoint at step 40 written; "
                           "exiting 75 (retry)") for ln in lines)  # fmt: skip
    assert "job failed" in first  # the traceback of the exit
    assert path.read_text() == first

    path.unlink()  # what Snakemake does before the retry
    with job_log(path):  # attempt 2: attempt1's log is kept, so this is 2
        log.info("resuming layer_2.res from step 40")
    assert "resuming" in path.read_text() and "signal 10" not in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "layer_2.res.attempt1.log", "layer_2.res.log",
    ]  # fmt: skip
    assert (path.parent / "layer_2.res.attempt1.log").read_text() == first
