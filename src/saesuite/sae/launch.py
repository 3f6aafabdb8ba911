"""Start a training job's processes through torchrun, so that preemption reaches them.

SLURM's `--signal=USR1@…` goes to every process of the job step; torchrun would die
of it (USR1's default action) and leave its workers behind, and so would this
launcher. Here torchrun ignores USR1, this process passes USR1 and TERM on to the
workers (for a signal sent to it alone, as `kill` from a shell does), and a job whose
workers checkpointed on a signal exits with `PREEMPTED_EXIT`, as a one-process
job does.

    python -m saesuite.sae.train --job job.json --nproc 2
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
FORWARDED = (signal.SIGUSR1, signal.SIGTERM)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again" (Snakemake retries the job)


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; none where it cannot be read)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def torchrun(job_file: str | Path, nproc: int) -> int:
    """Run `saesuite.sae.train` on `job_file` in `nproc` processes; the exit status."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "saesuite.sae.train",
        "--job",
        str(job_file),
    ]
    got: list[int] = []
    # sys.stdout/err may be a job's log file (saesuite.data.logs.job_log): hand it over.
    proc = subprocess.Popen(
        cmd, stdout=sys.stdout, stderr=sys.stderr, preexec_fn=_ignore_usr1
    )

    def forward(signum, _frame):
        got.append(signum)
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got and rc != 0:
        log.warning(
            "signal %d: the workers checkpointed; exiting %d (retry)",
            got[0],
            PREEMPTED_EXIT,
        )
        return PREEMPTED_EXIT
    return rc
