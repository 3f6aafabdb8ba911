"""Publishing release folders to the Hugging Face Hub (rule `publish`).

Dry-run is the default: a plan of every file with its size and sha256, whether the
repo exists, which files the Hub already holds with the same content (compared by the
LFS sha256, or the git blob id for small files) and which would be sent. With
`upload`, the token is checked first (HF_TOKEN or the saved login; never printed,
logged or written), the repo is created if missing, and the files still missing are
sent in commits of bounded size: an upload cut short and run again sends only what
is missing. Remote files the release does not have are listed and only deleted when
`delete_extra` asks for it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesuite.spec import paths
from saesuite.spec.io import sha256_file, write_json
from saesuite.spec.jobs import PublishJob

log = logging.getLogger(__name__)
SKIP = {".snakemake_timestamp"}  # Snakemake's marker in directory outputs


class PublishError(RuntimeError):
    """Publishing cannot go on; nothing more was sent."""


@dataclass(frozen=True)
class LocalFile:
    path_in_repo: str
    local: Path
    size: int
    sha256: str

    def git_blob_id(self) -> str:
        """What the Hub reports as `blob_id` for a file stored without LFS."""
        data = self.local.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_files(folder: str | Path) -> list[LocalFile]:
    folder = Path(folder)
    if not (folder / paths.RELEASE_MANIFEST).is_file():
        raise PublishError(f"{folder} is not a finished release folder (no manifest)")
    return [
        LocalFile(str(p.relative_to(folder)), p, p.stat().st_size, sha256_file(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in SKIP and not p.name.startswith(".")
    ]


def _same(local: LocalFile, remote: Any) -> bool:
    if getattr(remote, "lfs", None) is not None:
        return remote.lfs.sha256 == local.sha256
    return getattr(remote, "blob_id", None) == local.git_blob_id()


def make_plan(
    api: Any, repo_id: str, folder: str | Path, *, revision: str = "main"
) -> dict[str, Any]:
    """What publishing `folder` to `repo_id` would do (reads the Hub only)."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    files = local_files(folder)
    remote: dict[str, Any] = {}
    extra: list[str] = []
    state = "exists"
    try:
        paths = [f.path_in_repo for f in files]
        for i in range(0, len(paths), 500):
            for info in api.get_paths_info(
                repo_id, paths[i : i + 500], revision=revision, repo_type="model"
            ):
                remote[info.path] = info
        local_paths = set(paths)
        extra = sorted(
            item.path
            for item in api.list_repo_tree(
                repo_id, recursive=True, revision=revision, repo_type="model"
            )
            if hasattr(item, "size")
            and item.path not in local_paths
            and item.path != ".gitattributes"
        )
    except (RepositoryNotFoundError, RevisionNotFoundError):
        state = "missing"
    except HfHubHTTPError as err:
        state = f"error (HTTP {err.response.status_code})"
    except (OSError, *transport_errors()) as err:  # offline mode, DNS, proxy …
        state = f"unreachable ({type(err).__name__})"
    rows = []
    for f in files:
        same = f.path_in_repo in remote and _same(f, remote[f.path_in_repo])
        action = "skip" if same else "upload"
        rows.append(
            {
                "path": f.path_in_repo,
                "bytes": f.size,
                "sha256": f.sha256,
                "action": action,
            }
        )
    send = [r for r in rows if r["action"] == "upload"]
    return {
        "repo_id": repo_id,
        "revision": revision,
        "remote": state,
        "files": rows,
        "upload_files": len(send),
        "upload_bytes": sum(r["bytes"] for r in send),
        "remote_only": extra,
    }


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2 from
    huggingface_hub 2, httpx before)."""
    import importlib

    out = []
    for name in ("httpx2", "httpx"):
        try:
            out.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def check_token(api: Any) -> None:
    """Fail before anything is sent when there is no usable token."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or leave "
            "publish.upload off for a dry-run plan)"
        )
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.whoami(token=token)
    except HfHubHTTPError as err:  # 401 for a bad token
        raise PublishError(
            "the Hugging Face token (HF_TOKEN or the saved login) was rejected by the "
            f"Hub (HTTP {err.response.status_code}); nothing was published"
        ) from None
    except (OSError, *transport_errors()) as err:
        raise PublishError(
            f"the Hub could not be reached to check the token ({type(err).__name__}); "
            "nothing was published"
        ) from None


def batches(rows: list[dict[str, Any]], max_files: int, max_bytes: int):
    batch: list[dict[str, Any]] = []
    size = 0
    for r in rows:
        if batch and (len(batch) == max_files or size + r["bytes"] > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(r)
        size += r["bytes"]
    if batch:
        yield batch


def publish_folder(
    api: Any,
    repo_id: str,
    folder: str | Path,
    *,
    upload: bool,
    message: str,
    revision: str = "main",
    private: bool = False,
    delete_extra: bool = False,
    max_files: int = 100,
    max_bytes: int = 4 * 2**30,
) -> dict[str, Any]:
    """Dry-run plan, or the upload of what the Hub does not hold yet."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    folder = Path(folder)
    if upload:
        check_token(api)
    plan = make_plan(api, repo_id, folder, revision=revision)
    plan["mode"] = "upload" if upload else "dry-run"
    if not upload:
        return plan
    if plan["remote"] not in ("exists", "missing"):
        raise PublishError(
            f"reading {repo_id} from the Hub: {plan['remote']}; nothing was published"
        )
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    send = [r for r in plan["files"] if r["action"] == "upload"]
    commits = []
    parts = list(batches(send, max_files, max_bytes))
    for i, part in enumerate(parts, 1):
        ops = [CommitOperationAdd(r["path"], str(folder / r["path"])) for r in part]
        suffix = f" (part {i}/{len(parts)})" if len(parts) > 1 else ""
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=message + suffix,
            revision=revision,
            repo_type="model",
        )
        commits.append(getattr(info, "oid", None))
        log.info("%s: sent %d files%s", repo_id, len(part), suffix)
    if delete_extra and plan["remote_only"]:
        ops = [CommitOperationDelete(p) for p in plan["remote_only"]]
        api.create_commit(
            repo_id,
            ops,
            commit_message=f"{message}: remove files not in the release",
            revision=revision,
            repo_type="model",
        )
        plan["deleted"] = plan["remote_only"]
    plan["commits"] = commits
    return plan


def publish_release(
    job: PublishJob, *, folder: str | Path, out: str | Path, api: Any = None
) -> dict[str, Any]:
    """Rule `publish`: plan (or upload) one release folder; the record goes to `out`."""
    from huggingface_hub import HfApi

    result = publish_folder(
        api if api is not None else HfApi(),
        job.repo_id,
        folder,
        upload=job.upload,
        message=job.message,
        revision=job.revision,
        private=job.private,
        delete_extra=job.delete_extra,
    )
    write_json(out, result)
    log.info(
        "%s %s: %d of %d files (%.1f MB) %s; remote %s",
        result["mode"],
        job.repo_id,
        result["upload_files"],
        len(result["files"]),
        result["upload_bytes"] / 1e6,
        "sent" if job.upload else "to send",
        result["remote"],
    )
    return result
