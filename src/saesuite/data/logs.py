"""Job logging for rule adapters: everything a job prints, including tqdm's progress
bars and Python warnings, goes to the rule's `log:` file."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def job_log(path: str | Path, threads: int | None = None) -> Iterator[None]:
    """Redirect stdout/stderr and logging to `path`; pin torch's CPU threads."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "a", buffering=1) as f,
        contextlib.redirect_stdout(f),
        contextlib.redirect_stderr(f),
    ):
        handler = logging.StreamHandler(f)
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
            raise
        finally:
            root.removeHandler(handler)


def progress_interval() -> float:
    """tqdm's mininterval: live on a terminal, one line per 10 s in a log file (rates
    stay readable and logs stay small)."""
    return 0.1 if sys.stderr.isatty() else 10.0
