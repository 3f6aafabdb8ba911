"""One running workflow per output root. Snakemake's own lock lives in each
checkout's `.snakemake/`, so two checkouts (or a `git worktree`) pointed at one
`output_root` would rewrite each other's files: the second rewrote the chunks the
first was training on. The Snakefile's `onstart` (the submitting Snakemake only: not
dry-runs, not the re-parse inside each cluster job) takes an exclusive `flock` on
`<root>/.saesuite.lock` for the output and the scratch root and keeps it for the
process's lifetime. The kernel drops it when that process ends, however it ends, so a
crashed run leaves no stale lock to remove; the file itself only names the holder.

Filesystems without locks (Lustre mounted without `-o flock`) refuse the call: the
run then goes on with a warning, unprotected, rather than not at all.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Any

from saesuite.spec import paths

log = logging.getLogger(__name__)
_HELD: list[IO[str]] = []  # open for the process's lifetime: closing one unlocks it


class RootInUse(RuntimeError):
    """Another run holds the lock of a root this run would write."""


def holder(checkout: str | os.PathLike) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "checkout": str(Path(checkout).resolve()),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def lock_roots(roots: list[str], checkout: str | os.PathLike) -> list[Path]:
    """Lock every root (duplicates once) for this process, or raise RootInUse naming
    the run that holds one (and lock none). Returns the lock files taken."""
    taken: list[IO[str]] = []
    for root in dict.fromkeys(str(Path(r).resolve()) for r in roots):
        Path(root).mkdir(parents=True, exist_ok=True)
        f = open(paths.run_lock(root), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            other = f.read().strip() or "it has not written its name yet"
            f.close()
            for g in taken:
                g.close()
            raise RootInUse(
                f"{root} is in use by another saesuite run ({other}): two runs writing "
                "one output root overwrite each other's files, and Snakemake's own "
                "lock is per checkout. Wait for that run to end, or give this one "
                "another output_root (and scratch_root). Its lock ends with its "
                "Snakemake process: there is nothing to remove."
            ) from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP: no locks on this filesystem
            log.warning(
                "%s: no lock (%s); runs sharing this root are not kept apart", root, err
            )
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder(checkout)) + "\n")
        f.flush()
        taken.append(f)
    _HELD.extend(taken)
    return [Path(f.name) for f in taken]


def release_roots() -> None:
    while _HELD:
        _HELD.pop().close()
