"""Job logging for rule adapters: everything a job prints, including tqdm's progress
bars and Python warnings, goes to the rule's `log:` file.

Snakemake deletes a job's log before it runs the job again, which would lose the
line saying why the last attempt stopped (a preemption signal, an error). So each
attempt also writes `<log stem>.attempt<N>.log` beside the log (N one more than the
highest there), removed when the attempt succeeds: what is left is the story of every
attempt that did not, across retries and later runs alike."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class _Tee:
    """A text stream writing to several files, knowing whether it is at the start
    of a line (tqdm leaves its bar unterminated: '\\r' and no newline)."""

    encoding = "utf-8"

    def __init__(self, *files: IO[str]) -> None:
        self.files = files
        self.at_line_start = True

    def write(self, s: str) -> int:
        for f in self.files:
            f.write(s)
        if s:
            self.at_line_start = s.endswith("\n")
        return len(s)

    def flush(self) -> None:
        for f in self.files:
            f.flush()

    def isatty(self) -> bool:
        return False


class _OwnLineHandler(logging.StreamHandler):
    """Log records start on a line of their own, not glued to a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stream.at_line_start:
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
    """Redirect stdout/stderr and logging to `path` and to this attempt's own log
    (kept only if the attempt fails); pin torch's CPU threads."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    own = next_attempt_log(path)
    with (
        open(path, "a", buffering=1) as f,
        open(own, "w", buffering=1) as g,
    ):
        tee = _Tee(f, g)
        handler = _OwnLineHandler(tee)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
                yield
        except BaseException:
            logging.getLogger("saesuite").exception("job failed")
            raise
        finally:
            root.removeHandler(handler)
    own.unlink()  # reached only when the attempt succeeded


def progress_interval() -> float:
    """tqdm's mininterval: live on a terminal, one line per 10 s in a log file (rates
    stay readable and logs stay small)."""
    return 0.1 if sys.stderr.isatty() else 10.0
