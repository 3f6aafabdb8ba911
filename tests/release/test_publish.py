"""Publishing against an in-memory stand-in for the Hugging Face Hub: the Hub cannot
be reached from here, so `FakeHub` answers the HfApi calls saesuite makes
(whoami, create_repo, get_paths_info, list_repo_tree, create_commit with real
CommitOperationAdd/Delete objects) and keeps the repo's files in memory. Checked:
the dry-run plan, skipping what the Hub already holds, resuming after a failed
commit, nothing deleted unless asked, clear errors for a missing or rejected token
with nothing published, and the token never written to disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from saesuite.release.publish import (
    PublishError,
    make_plan,
    publish_folder,
    publish_release,
)
from saesuite.spec.io import write_json
from saesuite.spec.jobs import PublishJob

REPO = "someone/saesuite-tiny-res"
TOKEN = "hf_thisIsTheSecretTestToken0123456789"


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "https://hub.test"))


class FakeHub:
    """In-memory stand-in for the Hugging Face Hub at the HfApi boundary."""

    def __init__(self, fail_on_commit: int | None = None):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[tuple[str, list[str], str]] = []
        self.fail_on_commit = fail_on_commit

    def whoami(self, token=None):
        if token != TOKEN:
            raise HfHubHTTPError("401 Unauthorized", response=_response(401))
        return {"name": "someone"}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None):
        if repo_id in self.repos and not exist_ok:
            raise HfHubHTTPError("409 Conflict", response=_response(409))
        self.repos.setdefault(repo_id, {})

    def _files(self, repo_id):
        if repo_id not in self.repos:
            raise RepositoryNotFoundError("404", response=_response(404))
        return self.repos[repo_id]

    @staticmethod
    def _info(path: str, data: bytes) -> RepoFile:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = None
        if path.endswith((".safetensors", ".npz", ".png")):  # as .gitattributes does
            sha = hashlib.sha256(data).hexdigest()
            lfs = {"size": len(data), "oid": sha, "pointerSize": 134}
        return RepoFile(path=path, size=len(data), oid=blob, lfs=lfs)

    def get_paths_info(self, repo_id, paths, *, revision=None, repo_type=None):
        files = self._files(repo_id)
        return [self._info(p, files[p]) for p in paths if p in files]

    def list_repo_tree(
        self, repo_id, *, recursive=False, revision=None, repo_type=None
    ):
        return [self._info(p, d) for p, d in sorted(self._files(repo_id).items())]

    def create_commit(self, repo_id, operations, *, commit_message, revision=None,
                      repo_type=None):  # fmt: skip
        if self.fail_on_commit == len(self.commits) + 1:
            self.fail_on_commit = None
            raise HfHubHTTPError("500 Server Error", response=_response(500))
        files = self._files(repo_id)
        touched = []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            else:
                assert isinstance(op, CommitOperationDelete)
                del files[op.path_in_repo]
            touched.append(op.path_in_repo)
        self.commits.append((repo_id, touched, commit_message))


@pytest.fixture
def release(tmp_path) -> Path:
    folder = tmp_path / "release" / "someone--saesuite-tiny-res"
    for i in range(5):
        sub = folder / f"resid_post/layer_{i}_width_4k_l0_20"
        sub.mkdir(parents=True)
        (sub / "params.safetensors").write_bytes(bytes([i]) * (1000 + i))
        (sub / "config.json").write_text(f'{{"layer": {i}}}')
    (folder / "README.md").write_text("# card\n")
    (folder / ".snakemake_timestamp").write_text("")
    write_json(folder / "release_manifest.json", {"repo_id": REPO})
    return folder


@pytest.fixture
def token(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hc, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return monkeypatch


def test_dry_run_plans_everything_and_sends_nothing(release, token):
    hub = FakeHub()
    plan = publish_folder(hub, REPO, release, upload=False, message="m")
    assert plan["mode"] == "dry-run" and plan["remote"] == "missing"
    paths = [r["path"] for r in plan["files"]]
    assert len(paths) == 12 and ".snakemake_timestamp" not in paths
    assert plan["upload_files"] == 12
    files = [p for p in release.rglob("*") if p.is_file()]
    assert plan["upload_bytes"] == sum(
        p.stat().st_size for p in files if p.name != ".snakemake_timestamp"
    )
    assert hub.repos == {} and hub.commits == []


def test_upload_then_nothing_then_only_the_changed_file(release, token):
    hub = FakeHub()
    done = publish_folder(hub, REPO, release, upload=True, message="saesuite: tiny")
    assert done["upload_files"] == 12 and len(hub.commits) == 1
    assert hub.commits[0][2] == "saesuite: tiny"
    for p in release.rglob("*"):
        if p.is_file() and p.name != ".snakemake_timestamp":
            assert hub.repos[REPO][str(p.relative_to(release))] == p.read_bytes()
    again = publish_folder(hub, REPO, release, upload=True, message="m")
    assert again["upload_files"] == 0 and len(hub.commits) == 1
    (release / "README.md").write_text("# card, edited\n")  # non-LFS: git blob id
    (release / "resid_post/layer_3_width_4k_l0_20/params.safetensors").write_bytes(b"x")
    third = publish_folder(hub, REPO, release, upload=True, message="m")
    assert sorted(hub.commits[-1][1]) == [
        "README.md", "resid_post/layer_3_width_4k_l0_20/params.safetensors"
    ]  # fmt: skip
    assert third["upload_files"] == 2


def test_an_interrupted_upload_resumes_with_what_is_missing(release, token):
    hub = FakeHub(fail_on_commit=2)
    with pytest.raises(HfHubHTTPError):
        publish_folder(hub, REPO, release, upload=True, message="m", max_files=5)
    first = set(hub.commits[0][1])
    assert len(first) == 5 and set(hub.repos[REPO]) == first
    plan = make_plan(hub, REPO, release)
    assert plan["upload_files"] == 7
    publish_folder(hub, REPO, release, upload=True, message="m", max_files=5)
    sent = [p for _, paths, _ in hub.commits for p in paths]
    assert len(sent) == 12 == len(set(sent))  # every file once, none twice


def test_remote_only_files_stay_unless_asked(release, token):
    hub = FakeHub()
    hub.repos[REPO] = {"old/params.safetensors": b"old", ".gitattributes": b"*"}
    plan = publish_folder(hub, REPO, release, upload=True, message="m")
    assert plan["remote_only"] == ["old/params.safetensors"]
    assert "old/params.safetensors" in hub.repos[REPO]
    publish_folder(hub, REPO, release, upload=True, message="m", delete_extra=True)
    assert "old/params.safetensors" not in hub.repos[REPO]
    assert ".gitattributes" in hub.repos[REPO]


def test_missing_or_rejected_token_publishes_nothing(release, token):
    hub = FakeHub()
    token.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="no Hugging Face token.*HF_TOKEN"):
        publish_folder(hub, REPO, release, upload=True, message="m")
    token.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(PublishError, match="rejected by the Hub \\(HTTP 401\\)") as err:
        publish_folder(hub, REPO, release, upload=True, message="m")
    assert "hf_wrong" not in str(err.value)
    assert hub.repos == {} and hub.commits == []


def test_the_rule_function_never_writes_the_token(release, token, tmp_path):
    """publish_release (what rule publish runs) with logging to a job log: no file
    under the results folder holds the token."""
    from saesuite.data.logs import job_log

    results = tmp_path / "release" / ".."
    hub = FakeHub()
    job = PublishJob(REPO, upload=True, private=False, delete_extra=False,
                     revision="main", message="saesuite: tiny")  # fmt: skip
    out = tmp_path / "publish" / "someone--saesuite-tiny-res.upload.json"
    with job_log(tmp_path / "logs" / "publish.log"):
        publish_release(job, folder=release, out=out, api=hub)
    assert len(hub.repos[REPO]) == 12
    written = [p for p in results.resolve().rglob("*") if p.is_file()]
    assert out in written and len(written) > 12
    for p in written:
        assert TOKEN.encode() not in p.read_bytes(), p


def test_offline_the_plan_says_unreachable_and_upload_stops(release, token):
    """The real HfApi with huggingface_hub's offline switch on (as on this machine)."""
    import huggingface_hub.constants as hc
    from huggingface_hub import HfApi

    token.setattr(hc, "HF_HUB_OFFLINE", True)
    plan = make_plan(HfApi(), REPO, release)
    assert plan["remote"].startswith("unreachable") and plan["upload_files"] == 12
    with pytest.raises(
        PublishError, match="could not be reached.*nothing was published"
    ):
        publish_folder(HfApi(), REPO, release, upload=True, message="m")
