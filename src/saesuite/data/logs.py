"""Job logging for rule adapters: everything a job prints, including tqdm's progress
bars, Python warnings and the output of the processes it starts (torchrun's
workers), goes to the rule's `log:` file.

Snakemake deletes a job's log before it runs the job again, which would lose the
line saying why the last attempt stopped (a preemption signal, an error). So an
attempt that fails copies what it wrote to `<log stem>.attempt<N>.log` beside the log
(N one more than the highest there): what is left is the story of every attempt
that did not succeed, across retries and later runs alike. (A process killed outright,
SIGKILL or the OOM killer, copies nothing; SLURM's own job log still has its end.)"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from saesuite.spec.io import atomic_path


class OwnLineHandler(logging.StreamHandler):
    """Log records start on a line of their own, not glued to a progress bar (tqdm
    leaves its bar unterminated, '\\r' and no newline). Reads the last byte of the
    stream when it is a regular file, whoever wrote it (this process or another)."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.stream.flush()
            fd = self.stream.fileno()
            st = os.fstat(fd)
            if st.st_size and stat.S_ISREG(st.st_mode):
                with open(f"/proc/self/fd/{fd}", "rb") as f:  # fd may be write-only
                    f.seek(st.st_size - 1)
                    if f.read(1) != b"\n":
                        self.stream.write("\n")
        super().emit(record)


def next_attempt_log(path: str | Path) -> Path:
    """`<stem>.attempt<N><suffix>` beside `path`, N after the attempts kept there."""
    path = Path(path)
    pattern = re.compile(
        re.escape(path.stem) + r"\.attempt(\d+)" + re.escape(path.suffix)
    )
    kept = [
        int(m.group(1))
        for p in path.parent.iterdir()
        if (m := pattern.fullmatch(p.name))
    ]
    return path.with_name(f"{path.stem}.attempt{max(kept, default=0) + 1}{path.suffix}")


@contextlib.contextmanager
def job_log(path: str | Path, threads: int | None = None) -> Iterator[None]:
    """Redirect stdout/stderr and logging to `path`, keeping a failed attempt's part
    of it (above); pin torch's CPU threads."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", buffering=1) as f,
        contextlib.redirect_stdout(f),
        contextlib.redirect_stderr(f),
    ):
        start = f.tell()
        handler = OwnLineHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            yield
        except BaseException:
            logging.getLogger("saesuite").exception("job failed")
            f.flush()
            with open(path, "rb") as log, atomic_path(next_attempt_log(path)) as tmp:
                log.seek(start)
                tmp.write_bytes(log.read())
            raise
        finally:
            root.removeHandler(handler)


def progress_interval() -> float:
    """tqdm's mininterval: live on a terminal, one line per 10 s in a log file (rates
    stay readable and logs stay small)."""
    return 0.1 if sys.stderr.isatty() else 10.0
