"""The tiny workflow on a real single-node SLURM cluster (munge, slurmdbd with MariaDB,
slurmctld, slurmd; started by .ci/slurm-cluster) through the repository's profile,
config/profiles/slurm, with the test cluster's account and partition given on the
command line and no GPU requests (the tiny config leaves resources.gpu off).

While it runs, one training job gets SLURM's preemption warning by hand (`scancel
--signal=USR1`: what `--signal=USR1@600` sends before the time limit); the trainer
checkpoints and exits, the job ends FAILED, Snakemake resubmits it (resources.retries)
and it resumes from the checkpoint instead of starting over. sacct shows that every
job ran under SLURM. (A hard `scancel` is not used: the SLURM plugin 2.8 reads sacct's
"CANCELLED by 0" as still running and waits forever.)

Needs root and Debian's munge, slurmctld, slurmd, slurm-client, slurmdbd and
mariadb-server (.ci/system-deps installs them; CI sets SAESUITE_REQUIRE_SLURM=1, so
there a missing package fails the test instead of skipping it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from helpers import make_config, missing

from saesuite.spec.config import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / ".ci" / "slurm-cluster"
ACCOUNT = "saesuite"
# The long site: 4,000 steps of one SAE (~30 s here), so that it is still training
# when the test signals it, a second or two after its first checkpoint.
LONG = {"layers": [2], "sites": ["res"], "widths": [256],
        "sparsity": {"target_l0": [8]}, "tokens": 256 * 4000}  # fmt: skip


def _have_slurm() -> str | None:
    if os.geteuid() != 0:
        return "the test cluster needs root"
    for b in ("munged", "slurmctld", "slurmd", "slurmdbd", "mariadbd"):
        if not shutil.which(b, path="/usr/sbin:/usr/bin"):
            return f"{b} is not installed (run .ci/system-deps)"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _have_slurm()
    if why:
        missing(why, "SAESUITE_REQUIRE_SLURM")
    up = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    down = subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True)
    assert down.returncode == 0, down.stdout + down.stderr


def sacct(*fields: str, since: str) -> list[dict[str, str]]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", since, "-o", ",".join(fields)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def wait_until(what: str, predicate, proc: subprocess.Popen, timeout: float = 600):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"workflow ended before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    cfg = make_config(
        tiny_models["gemma3"],
        output_root="results",
        # Absolute roots elsewhere, as on a cluster's shared scratch.
        scratch_root=str(work / "scratch"),
        cache_root=str(work / "hfcache"),
        resources={"cpus": 1, "retries": 2},
    )
    # One site (two SAEs and the long one, in one training job): every rule still
    # runs under SLURM; the site-by-site work is what the local run tests.
    cfg["suite"] = [{**cfg["suite"][0], "layers": [2], "sites": ["res"]}, LONG]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    cmd = [
        sys.executable, "-m", "snakemake",
        "-s", str(REPO_ROOT / "Snakefile"),
        "--directory", str(work),
        "--profile", str(REPO_ROOT / "config" / "profiles" / "slurm"),
        "--configfile", str(work / "config.yaml"),
        "--default-resources", f"slurm_account={ACCOUNT}", "slurm_partition=debug",
        "--slurm-init-seconds-before-status-checks", "2",
        "--latency-wait", "5",
        "--jobs", "2",
    ]  # fmt: skip
    log = open(work / "snakemake.out", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        ckpt = work / "scratch" / "tiny" / "checkpoints" / "layer_2.res.pt"

        def long_job_running():
            # squeue: sacct stores the comment only once a job has ended
            out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"],
                                 capture_output=True, text=True).stdout  # fmt: skip
            ids = [line.split("|")[0] for line in out.splitlines()
                   if line.endswith("|rule_train_wildcards_tiny_2_res")]  # fmt: skip
            return ids[0] if ids and ckpt.exists() else None

        job_id = wait_until(
            "the long training job to checkpoint", long_job_running, proc
        )
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        rc = proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (work / "snakemake.out").read_text()
    assert rc == 0, output[-5000:]
    return work, since, job_id, output


def test_every_job_ran_under_slurm(slurm_run):
    work, since, cancelled, output = slurm_run
    jobs = sacct("JobID", "Comment", "State", "Account", "Partition", since=since)
    rules = [j["Comment"].split("_wildcards_")[0].removeprefix("rule_") for j in jobs]
    # one SLURM job per Snakemake job (all but the local `all`), plus the rerun
    assert sorted(set(rules)) == [
        "corpus", "eval_table", "evaluate", "extract", "manifest", "model",
        "normalize", "release", "report_figures", "tokens", "train",
        "transfer_rollouts", "transfer_table",
    ]  # fmt: skip
    assert rules.count("train") == 1 + 1 and rules.count("extract") == 4
    states = {j["JobID"]: j["State"] for j in jobs}
    assert states.pop(cancelled) == "FAILED"  # exit 75: checkpointed, try again
    assert set(states.values()) == {"COMPLETED"}, states
    assert {j["Account"] for j in jobs} == {ACCOUNT}
    assert {j["Partition"] for j in jobs} == {"debug"}
    # SLURM's own job logs land under logs/slurm (the profile), the rules' logs under
    # results/logs.
    slurm_logs = list((work / "logs" / "slurm").rglob("*.log"))
    assert len(slurm_logs) >= len(jobs) - 1
    assert (work / "results" / "logs" / "train" / "tiny" / "layer_2.res.log").exists()


def test_signalled_training_resumes_from_its_checkpoint(slurm_run):
    work, _, signalled, _ = slurm_run
    # The signalled job's SLURM log (kept: it failed) shows the trainer's "try again"
    # exit; Snakemake replaced the rule's log with the resubmitted job's, and the
    # first attempt's own log is kept beside it, the signal on a line of its own.
    first = work / "logs" / "slurm" / "rule_train" / "tiny_2_res" / f"{signalled}.log"
    assert "returned non-zero exit status 75" in first.read_text()
    logs = work / "results" / "logs" / "train" / "tiny"
    tried = (logs / "layer_2.res.attempt1.log").read_text().splitlines()
    assert any(" saesuite.sae.train: signal 10: checkpoint at step " in line
               and line.endswith("exiting 75 (retry)") for line in tried)  # fmt: skip
    assert not (logs / "layer_2.res.attempt2.log").exists()  # it succeeded
    log = (logs / "layer_2.res.log").read_text()
    resumed = [
        line for line in log.splitlines() if "resuming layer_2.res from step" in line
    ]
    assert len(resumed) == 1, log[-3000:]
    step = int(resumed[0].split("from step ")[1].split()[0])
    assert 0 < step < 4000
    # The training log of the long SAE has each logged step once, in order, to the end.
    sae = work / "results" / "tiny" / "saes" / "layer_2" / "res" / "width_256" / "l0_8"
    steps = [json.loads(line)["step"] for line in (sae / "train_log.jsonl").open()]
    assert steps == sorted(set(steps)) and steps[-1] == 3999
    assert not (work / "scratch" / "tiny" / "checkpoints" / "layer_2.res.pt").exists()


def test_outputs_record_no_absolute_paths(slurm_run):
    work, _, _, _ = slurm_run
    assert (work / "scratch" / "tiny" / "activations" / "manifest.json").exists()
    for f in (work / "results").rglob("*"):
        if f.is_file() and f.suffix in {".json", ".jsonl", ".yaml", ".md", ".csv"}:
            text = f.read_text()
            assert str(work) not in text, f
