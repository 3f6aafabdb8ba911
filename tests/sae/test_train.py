"""Training: schedule, learning on synthetic sparse data, outputs, kill -9 and signal
resumption (bit for bit), non-finite loss, and data-parallel equality (gloo)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saesuite.cluster.memory import sae_gpu_bytes
from saesuite.data.reader import write_normalization
from saesuite.data.store import write_chunk, write_manifest
from saesuite.sae.checkpoint import truncate_log
from saesuite.sae.groups import needs_sharding, sae_groups
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.sae.member import Member, make_schedule, sae_seed, train_step
from saesuite.sae.train import NonFiniteLoss, Preempted, train_site
from saesuite.spec.config import REPO_ROOT
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import read_json, write_json
from saesuite.spec.jobs import TrainJob
from saesuite.spec.sections import TrainConfig
from saesuite.spec.sites import Site

D, ATOMS = 16, 48
TRAIN = TrainConfig.defaults({
    "batch_size": 128, "lr": 3e-3, "lr_warmup_steps": 1000, "lr_decay": "none",
    "lr_decay_fraction": 0.2, "adam_beta1": 0.0, "adam_beta2": 0.999, "adam_eps": 1e-8,
    "lambda_warmup_steps": 10000, "max_lr_warmup_fraction": 0.05,
    "max_lambda_warmup_fraction": 0.2, "bandwidth": 0.001, "init_threshold": 0.001,
    "threshold_param": "direct", "step": "auto", "sparse_density": 0.3,
    "checkpoint_every": 10, "log_every": 5, "dead_window_tokens": 5000,
    "device": "cpu", "nproc": 1,
})  # fmt: skip


def sparse_data(n: int, seed: int = 0) -> torch.Tensor:
    """Each token: a positive mix of ~3 of 48 random unit atoms (a true dictionary)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, ATOMS, generator=g) < 3 / ATOMS) * torch.rand(
        n, ATOMS, generator=g
    )
    return 5.0 * codes @ atoms


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    x = sparse_data(8192)
    infos = []
    for c in range(2):
        part = x[c * 4096 : (c + 1) * 4096]
        mask = torch.ones(4096, dtype=torch.bool)
        mask[::64] = False
        base = root / f"chunk_{c:05d}"
        write_chunk(
            f"{base}.safetensors", f"{base}.json",
            {"layer_0.res": part, "input_ids": torch.zeros(4096, dtype=torch.int32),
             "mask": mask},
            {"chunk": c},
        )  # fmt: skip
        infos.append(f"{base}.json")
    write_manifest(infos, root / "manifest.json", {"model": "synthetic"})
    write_normalization(root / "manifest.json", ["layer_0.res"], root / "norm.json")
    return root


def make_job(store: Path, out: Path, tokens=128 * 60, **train) -> TrainJob:
    saes = tuple(
        Dictionary.of("synthetic", "sae", 0, "res", 64, tokens, lambda_=lam)
        for lam in (1e-3, 3e-2)
    )
    return TrainJob(
        model="synthetic",
        root=str(out),
        seed=3,
        shuffle_bucket=2048,
        train=TRAIN.replace(**train),
        identity={"model": "synthetic"},
        dictionaries=saes,
        manifest=str(store / "manifest.json"),
        normalization=str(store / "norm.json"),
        checkpoint=str(out / "ckpt.pt"),
    )


def test_schedule_scales_warmups_and_shapes():
    cfg = TRAIN.replace(batch_size=4096, lr=7e-5)
    s = make_schedule(1_000_000, cfg)
    assert s.total_steps == 244 and s.lr_warmup == 12 and s.lam_warmup == 48
    assert s.lr_at(0) == pytest.approx(7e-6)
    assert s.lr_at(6) == pytest.approx(7e-5 * 0.55)
    assert s.lr_at(12) == s.lr_at(200) == 7e-5
    assert s.lam_factor(23) == pytest.approx(0.5) and s.lam_factor(100) == 1.0
    big = make_schedule(4 * 10**9, cfg)  # Gemma Scope's own run: nothing capped
    assert (big.lr_warmup, big.lam_warmup) == (1000, 10000)
    for decay in ("linear", "cosine"):
        d = make_schedule(1_000_000, cfg.replace(lr_decay=decay))
        assert d.lr_at(d.total_steps - d.decay_steps) == pytest.approx(7e-5)
        assert d.lr_at(d.total_steps - 1) < 7e-5 * 0.05


def test_training_learns_the_dictionary_and_writes_outputs(store, tmp_path):
    job = make_job(store, tmp_path, tokens=128 * 300)
    results = train_site(job)
    assert len(results) == 2
    logs = [
        [json.loads(ln) for ln in (Path(job.out_dir(s)) / "train_log.jsonl").open()]
        for s in job.dictionaries
    ]
    for lines in logs:
        assert lines[0]["step"] == 0 and lines[-1]["step"] == 299
        assert lines[-1]["fvu"] < 0.5 * lines[0]["fvu"]
        assert {"loss", "reconstruction", "l0", "dead", "lr", "lambda"} <= set(lines[0])
        assert lines[0]["path"] == "dense"  # θ starts tiny: half the latents fire
    # the larger λ buys a smaller L0, and then trains on the sparse path
    assert logs[1][-1]["l0"] < logs[0][-1]["l0"]
    assert logs[1][-1]["l0"] < 0.3 * 64 and logs[1][-1]["path"] == "sparse"
    info = read_json(Path(job.out_dir(job.dictionaries[0])) / "sae.json")
    C = read_json(store / "norm.json")["scale"]["layer_0.res"]
    assert info["normalization_scale"] == C and info["steps"] == 300
    assert info["schedule"] == {
        "lr_warmup_steps": 15,
        "lambda_warmup_steps": 60,
        "lr_decay_steps": 0,
    }
    assert "torch" in info["versions"]
    # the released SAE works on raw activations
    out = Path(job.out_dir(job.dictionaries[0]))
    released = JumpReLUSAE.from_release(load_file(out / "sae.safetensors"))
    state = load_file(out / "train_state.safetensors")
    trained = JumpReLUSAE(D, 64)
    trained.load_state_dict(state)
    x = sparse_data(64, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(
            released(x), C * trained(x / C), rtol=1e-4, atol=1e-4
        )
        fvu = ((released(x) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.3
    assert not Path(job.checkpoint).exists()  # removed once the outputs exist


def run_cli(job: TrainJob, path: Path, nproc: int = 1) -> subprocess.Popen:
    """The trainer's CLI in a subprocess (through torchrun for nproc > 1); its output
    goes to <path>.log (a pipe nobody reads would fill up and stall it)."""
    write_json(path, job.to_dict())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = open(f"{path}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "saesuite.sae.train", "--job", str(path),
         "--nproc", str(nproc)],
        env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc.log = Path(f"{path}.log")  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout)
    return proc.log.read_text(errors="replace")


def final_bytes(job: TrainJob) -> list[bytes]:
    return [
        (Path(job.out_dir(s)) / name).read_bytes()
        for s in job.dictionaries
        for name in ("train_state.safetensors", "sae.safetensors")
    ]


@pytest.fixture
def one_thread():
    """In-process runs with the thread count of the CLI runs (OMP_NUM_THREADS=1):
    CPU float reductions, and so the bytes, depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def train_in_process(job: TrainJob) -> list[bytes]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_site(job)
    finally:
        torch.set_num_threads(old)
    return final_bytes(job)


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """The bytes of an uninterrupted run of 1500 steps (long enough to signal a CLI
    run mid-way), trained in this process on one thread."""
    job = make_job(store, tmp_path_factory.mktemp("ref"), tokens=128 * 1500)
    return train_in_process(job), job


SHORT = 128 * 300  # tokens of the in-process stop and resume tests


@pytest.fixture(scope="module")
def short_reference(store, tmp_path_factory):
    job = make_job(store, tmp_path_factory.mktemp("short"), tokens=SHORT)
    return train_in_process(job)


def wait_for(path: Path, proc: subprocess.Popen, timeout=120):
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.log.read_text()
        assert time.time() - t < timeout
        time.sleep(0.02)


def test_kill_9_then_resume_is_bit_identical(store, tmp_path, reference):
    """A real SIGKILL to the CLI mid-run; the retry resumes from the last periodic
    checkpoint and ends with the bytes of the uninterrupted run."""
    want, _ = reference
    job = make_job(store, tmp_path, tokens=128 * 1500)
    p = run_cli(job, tmp_path / "job.json")
    wait_for(Path(job.checkpoint), p)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -9
    resumed_from = torch.load(job.checkpoint, weights_only=True)["step"]
    assert 0 < resumed_from < 1500
    again = run_cli(job, tmp_path / "job.json")
    out = output(again)
    assert again.returncode == 0, out
    assert f"resuming layer_0.res from step {resumed_from}" in out
    assert final_bytes(job) == want
    lines = (Path(job.out_dir(job.dictionaries[0])) / "train_log.jsonl").read_text()
    steps = [json.loads(ln)["step"] for ln in lines.splitlines()]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_sigusr1_to_the_cli_checkpoints_and_exits_for_retry(store, tmp_path):
    """The real signal path: SLURM's USR1 reaches the process, which checkpoints at
    once (no periodic checkpoint is due) and exits 75 so Snakemake retries."""
    job = make_job(store, tmp_path, tokens=128 * 1500, checkpoint_every=1000)
    p = run_cli(job, tmp_path / "job.json")
    wait_for(Path(job.out_dir(job.dictionaries[0])) / "train_log.jsonl", p)
    p.send_signal(signal.SIGUSR1)
    out = output(p)
    assert p.returncode == 75, out
    step = torch.load(job.checkpoint, weights_only=True)["step"]
    assert 0 < step < 1000  # the signal wrote it
    assert f"signal {int(signal.SIGUSR1)}: checkpoint at step {step} written" in out


@pytest.mark.parametrize("at", [1, 170, 299])
def test_a_stop_at_any_step_resumes_bit_identical(
    store, tmp_path, short_reference, one_thread, at
):
    """SIGTERM (as from `scancel`) arrives after step `at`: the in-process handler
    checkpoints there and exits 75; the retry ends with the uninterrupted bytes."""
    want = short_reference
    job = make_job(store, tmp_path, tokens=SHORT, checkpoint_every=1000)

    def sigterm(step: int) -> bool:
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets the stop flag
        return False

    with pytest.raises(Preempted) as stopped:
        train_site(job, stop_at=sigterm)
    assert stopped.value.code == 75
    assert torch.load(job.checkpoint, weights_only=True)["step"] == at
    train_site(job)
    assert final_bytes(job) == want
    assert not Path(job.checkpoint).exists()


def test_groups_that_fit_a_device_train_like_one_job_and_resume(
    store, tmp_path, short_reference, one_thread, caplog
):
    """With room on a device for one SAE, the two SAEs of the job train one after the
    other: the same bytes as together. A stop during the second group checkpoints
    it; the retry resumes there and does not retrain the first."""
    want = short_reference
    job = make_job(store, tmp_path, tokens=SHORT, checkpoint_every=1000)
    specs = list(job.dictionaries)
    one = sae_gpu_bytes(job.train.batch_size, D, 64, 1)
    assert sae_groups(specs, D, job.train, 1, 2 * one) == [[0, 1]]
    assert sae_groups(specs, D, job.train, 1, one) == [[0], [1]]
    assert sae_groups(specs, D, job.train, 1, None) == [[0, 1]]
    # Over 2 processes each SAE needs less (half the batch's work tensors): both fit
    two = sae_gpu_bytes(job.train.batch_size, D, 64, 2)
    assert sae_groups(specs, D, job.train, 2, 2 * two) == [[0, 1]]
    # and one that fits no device data-parallel trains alone, sharded
    assert not needs_sharding(64, D, job.train, 2, two)
    assert needs_sharding(64, D, job.train, 2, two - 1)
    assert not needs_sharding(64, D, job.train, 1, two - 1)  # nothing to shard over
    assert sae_groups(specs, D, job.train, 2, two - 1) == [[0], [1]]
    job = replace(job, group_bytes=one)
    first = Path(job.out_dir(job.dictionaries[0])) / "sae.safetensors"
    with pytest.raises(Preempted):  # stop at step 120 of the second group
        train_site(job, stop_at=lambda step: first.exists() and step == 120)
    ckpt = Path(job.checkpoint)
    marker = ckpt.with_name("ckpt.done.json")
    paths = [d.path for d in job.dictionaries]
    assert list(read_json(marker)["saes"]) == paths[:1] and first.exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["saes"] == paths[1:] and state["step"] == 120
    mtime = first.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="saesuite"):
        train_site(job)
    assert "resuming layer_0.res [2/2 SAEs] from step 120" in caplog.text
    assert "[1/2 SAEs]" not in caplog.text  # the first SAE was not trained again
    assert final_bytes(job) == want and first.stat().st_mtime_ns == mtime
    assert not marker.exists() and not ckpt.exists()


def test_a_checkpoint_of_another_config_is_not_resumed(
    store, tmp_path, short_reference, one_thread, caplog
):
    """Stopped, then run with a changed training config (log_every: it shapes the
    logs, not the weights): the run starts afresh instead of resuming a checkpoint
    written under other settings, and ends where a fresh run ends."""
    want = short_reference
    job = make_job(store, tmp_path, tokens=SHORT, checkpoint_every=1000)
    with pytest.raises(Preempted):
        train_site(job, stop_at=lambda step: step == 100)
    assert Path(job.checkpoint).exists()
    changed = replace(job, train=job.train.replace(log_every=7))
    assert changed.fingerprint() != job.fingerprint()
    # where the files are and the config's hash are not part of the fingerprint
    moved = replace(job, checkpoint="/elsewhere/ckpt.pt", config_hash="abc")
    assert moved.fingerprint() == job.fingerprint()
    caplog.clear()
    with caplog.at_level("INFO", logger="saesuite"):
        train_site(changed)
    assert "written for another training config; starting afresh" in caplog.text
    assert "resuming" not in caplog.text
    assert final_bytes(job) == want


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path):
    job = make_job(store, tmp_path, lr=1e35, checkpoint_every=1, lr_warmup_steps=0)
    with pytest.raises(NonFiniteLoss, match="non-finite loss .* step"):
        train_site(job)
    state = torch.load(job.checkpoint, weights_only=True)
    assert state["step"] >= 1
    for m in state["members"]:
        assert all(torch.isfinite(v).all() for v in m["sae"].values())


def test_resume_drops_log_lines_after_the_checkpoint_and_cut_lines(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 0}\n{"step": 10}\n{"step": 20}\n{"step": 3')
    truncate_log(log, 20)
    assert log.read_text() == '{"step": 0}\n{"step": 10}\n'


def test_an_sae_trains_the_same_whatever_the_ladder_around_it(store, tmp_path):
    """Its seed comes from (seed, site, path): dropping the other rung of the ladder
    leaves the λ = 0.03 SAE's bytes as they were; another config seed changes them."""
    both = make_job(store, tmp_path / "both", tokens=128 * 20)
    alone = replace(make_job(store, tmp_path / "alone", tokens=128 * 20),
                    dictionaries=both.dictionaries[1:])  # fmt: skip
    train_site(both)
    train_site(alone)
    name = "train_state.safetensors"
    got = (Path(alone.out_dir(alone.dictionaries[0])) / name).read_bytes()
    assert got == (Path(both.out_dir(both.dictionaries[1])) / name).read_bytes()
    assert sae_seed(3, "layer_0.res", "lambda_0.03") != sae_seed(
        4, "layer_0.res", "lambda_0.03"
    )
    # pinned: a change of the derivation would silently change every suite's SAEs
    assert sae_seed(0, "layer_1.res", "a") == 1447239775895933308


def test_a_layers_plain_and_skip_transcoders_train_in_one_job_as_if_alone(tmp_path):
    """One train job reads the cache once for a layer's plain and skip-transcoders
    (Dictionary.job mlp_in_to_mlp): each one's bytes are those it gets in a job of
    its own, which is what two separate jobs wrote."""
    root = tmp_path / "store"
    root.mkdir()
    x = sparse_data(4096, seed=1)
    y = x @ torch.randn(D, D, generator=torch.Generator().manual_seed(2)) / 4
    mask = torch.ones(4096, dtype=torch.bool)
    mask[::64] = False
    write_chunk(
        f"{root}/chunk_00000.safetensors", f"{root}/chunk_00000.json",
        {"layer_0.mlp_in": x, "layer_0.mlp": y,
         "input_ids": torch.zeros(4096, dtype=torch.int32), "mask": mask},
        {"chunk": 0},
    )  # fmt: skip
    write_manifest([f"{root}/chunk_00000.json"], root / "manifest.json", {"model": "s"})
    sites = ["layer_0.mlp_in", "layer_0.mlp"]
    write_normalization(root / "manifest.json", sites, root / "norm.json")
    pair = tuple(
        Dictionary.of("s", kind, 0, "mlp", 32, 128 * 20, lambda_=1e-3)
        for kind in ("transcoder", "skip_transcoder")
    )
    assert {d.job for d in pair} == {"mlp_in_to_mlp"}

    def job(out: str, dictionaries) -> TrainJob:
        return TrainJob(
            model="s", root=str(tmp_path / out), seed=3, shuffle_bucket=2048,
            train=TRAIN, identity={"model": "s"}, dictionaries=dictionaries,
            manifest=str(root / "manifest.json"),
            normalization=str(root / "norm.json"),
            checkpoint=str(tmp_path / out / "ckpt.pt"),
        )  # fmt: skip

    both = job("both", pair)
    train_site(both)
    for d in pair:
        alone = job(d.kind, (d,))
        train_site(alone)
        for name in ("train_state.safetensors", "sae.safetensors"):
            got = (Path(both.out_dir(d)) / name).read_bytes()
            assert got == (Path(alone.out_dir(d)) / name).read_bytes(), (d.kind, name)
    state = load_file(str(Path(both.out_dir(pair[1])) / "train_state.safetensors"))
    assert "W_skip" in state


def test_each_sae_logs_its_own_last_step(store, tmp_path):
    job = make_job(store, tmp_path, tokens=128 * 30)
    short = replace(job.dictionaries[1], tokens=128 * 12)  # a smaller budget, same job
    job = replace(job, dictionaries=(job.dictionaries[0], short))
    train_site(job)
    last = [
        json.loads(
            (Path(job.out_dir(s)) / "train_log.jsonl").read_text().splitlines()[-1]
        )
        for s in job.dictionaries
    ]
    assert [x["step"] for x in last] == [29, 11]
    assert read_json(Path(job.out_dir(job.dictionaries[1])) / "sae.json")["steps"] == 12


def mixed_job(store: Path, out: Path) -> TrainJob:
    """Two SAEs, 64 and 16 latents, with a device budget (per process, 2 processes)
    that holds the narrow one data-parallel but not the wide one: that one trains
    alone with its latents split between the processes."""
    job = make_job(store, out, tokens=128 * 80)
    narrow = replace(job.dictionaries[1], width=16)
    b = job.train.batch_size
    budget = sae_gpu_bytes(b, D, 16, 2)
    assert sae_gpu_bytes(b, D, 64, 2) > budget
    return replace(job, dictionaries=(job.dictionaries[0], narrow), group_bytes=budget)


def test_two_processes_train_as_one_data_parallel_and_sharded(store, tmp_path):
    """The one torchrun run that checks results: over 2 gloo processes the narrow SAE
    trains data-parallel and the wide one sharded; both end where one process ends
    (few steps: over long runs float-order differences grow, as they would between
    any two reduction orders), and the logs carry whole-SAE statistics."""
    job = mixed_job(store, tmp_path / "two")
    one = replace(mixed_job(store, tmp_path / "one"), group_bytes=None)
    train_site(one)
    p = run_cli(job, tmp_path / "job.json", nproc=2)
    text = output(p)
    assert p.returncode == 0, text
    assert "width 64 sharded over 2 processes" in text
    assert "width 16 sharded" not in text
    for a, b in zip(job.dictionaries, one.dictionaries, strict=True):
        for name in ("train_state.safetensors", "sae.safetensors"):
            sa = load_file(Path(job.out_dir(a)) / name)
            sb = load_file(Path(one.out_dir(b)) / name)
            assert sa.keys() == sb.keys()
            for k in sa:
                assert sa[k].shape == sb[k].shape  # the whole SAE, gathered
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
        assert not torch.equal(sa["W_enc"], JumpReLUSAE(D, a.width).W_enc)  # trained
        info = read_json(Path(job.out_dir(a)) / "sae.json")
        assert info["width"] == a.width and info["steps"] == 80
        logs = [json.loads(ln) for ln in open(Path(job.out_dir(a)) / "train_log.jsonl")]
        ref = [json.loads(ln) for ln in open(Path(one.out_dir(b)) / "train_log.jsonl")]
        assert [r["step"] for r in logs] == [r["step"] for r in ref]
        assert logs[-1]["step"] == 79 and math.isfinite(logs[-1]["loss"])
        # sharded: the logs hold whole-SAE statistics; data-parallel, the FVU is the
        # global batch's (the mean of the two halves' FVUs is not)
        for x, y in zip(logs, ref, strict=True):
            assert x["fvu"] == pytest.approx(y["fvu"], rel=1e-3)
            if a.width == 64:
                assert x["l0"] == pytest.approx(y["l0"], abs=0.05)
                assert x["dead"] == y["dead"]


SHARDED = 128 * 300  # long enough to signal a sharded run mid-way (~5 s of steps)


def sharded_job(store: Path, out: Path) -> TrainJob:
    """A job whose SAEs, by the device budget it claims, fit no GPU whole: with two
    processes each SAE trains alone with its latents split between them."""
    job = make_job(store, out, tokens=SHARDED, checkpoint_every=10**4)
    return replace(job, group_bytes=1)


def test_a_preempted_sharded_job_resumes_from_every_shard_and_not_on_one(
    store, tmp_path, tmp_path_factory, one_thread, caplog
):
    """SIGUSR1 to the launcher (SLURM signals every process; here the launcher passes
    it on): every shard checkpoints at the same step and the job exits 75. The retry
    resumes all shards there and ends with the bytes of an uninterrupted sharded run.
    The same checkpoint, found by a one-process run, is not resumed: it starts afresh
    and ends as unsharded training does."""
    ref_dir = tmp_path_factory.mktemp("sharded_ref")
    ref = sharded_job(store, ref_dir)
    p = run_cli(ref, ref_dir / "job.json", nproc=2)
    assert p.wait(300) == 0, p.log.read_text()
    want = final_bytes(ref)

    job = sharded_job(store, tmp_path)
    p = run_cli(job, tmp_path / "job.json", nproc=2)
    wait_for(Path(job.out_dir(job.dictionaries[0])) / "train_log.jsonl", p)
    time.sleep(0.5)
    p.send_signal(signal.SIGUSR1)
    out = output(p)
    assert p.returncode == 75, out
    # each worker's signal line on a line of its own, not glued to its progress bar
    said = re.findall(r"^\S+ \S+ __main__: signal 10: checkpoint at step", out, re.M)
    assert len(said) == 2, out[-3000:]
    ckpt = Path(job.checkpoint)
    state = torch.load(ckpt, weights_only=True)
    assert state["shards"] == 2 and 0 < state["step"] < 300
    assert state["members"][0]["sae"]["W_dec"].shape == (32, D)  # rank 0's half
    other = ckpt.with_name(f"ckpt.shard1.step{state['step']}.pt")
    assert sorted(p.name for p in tmp_path.glob("ckpt*.pt")) == ["ckpt.pt", other.name]
    kept = tmp_path_factory.mktemp("kept")
    for f in tmp_path.glob("ckpt*"):
        shutil.copy2(f, kept / f.name)

    again = run_cli(job, tmp_path / "job.json", nproc=2)
    text = output(again)[len(out) :]
    assert again.returncode == 0, text
    assert f"resuming layer_0.res [1/2 SAEs] from step {state['step']}" in text
    assert final_bytes(job) == want
    assert not list(tmp_path.glob("ckpt*"))

    for f in kept.iterdir():  # the preempted state again, now for one process
        shutil.copy2(f, tmp_path / f.name)
    caplog.clear()
    with caplog.at_level("INFO", logger="saesuite"):
        train_site(job)  # one process: nothing to shard over
    assert "trained over 2 shard(s); this run takes 1: starting them afresh" in (
        caplog.text
    )
    assert "resuming" not in caplog.text
    unsharded = make_job(store, tmp_path_factory.mktemp("plain"), tokens=SHARDED)
    assert final_bytes(job) == train_in_process(unsharded)
    assert not list(tmp_path.glob("ckpt*.pt"))


def test_a_dictionary_writing_another_site_than_it_reads_is_refused(store, tmp_path):
    """The identity itself refuses sites its kind does not relate, so no job (nor
    its JSON) can carry one."""
    d = make_job(store, tmp_path).dictionaries[0]
    with pytest.raises(ValueError, match="an SAE reconstructs the site it reads"):
        replace(d, writes=(Site(0, "mlp"),))
    with pytest.raises(ValueError, match="an SAE reconstructs the site it reads"):
        Dictionary.from_dict({**d.to_dict(), "writes": ["layer_0.mlp"]})
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory) -> Path:
    """An MLP's input and output: y = x S (a dense linear part) + a sparse code of x
    through other atoms, ten times the input's scale, so that C_y ≠ C_x."""
    root = tmp_path_factory.mktemp("pairs")
    g = torch.Generator().manual_seed(7)
    x = sparse_data(8192)
    S = torch.randn(D, D, generator=g) / D**0.5
    atoms = torch.randn(D, D, generator=g) / D**0.5
    y = 10.0 * (x @ S + torch.relu(x @ atoms - 0.5))
    infos = []
    for c in range(2):
        part = slice(c * 4096, (c + 1) * 4096)
        mask = torch.ones(4096, dtype=torch.bool)
        mask[::64] = False
        base = root / f"chunk_{c:05d}"
        write_chunk(f"{base}.safetensors", f"{base}.json",
                    {"layer_0.mlp_in": x[part], "layer_0.mlp": y[part],
                     "input_ids": torch.zeros(4096, dtype=torch.int32), "mask": mask},
                    {"chunk": c})  # fmt: skip
        infos.append(f"{base}.json")
    write_manifest(infos, root / "manifest.json", {"model": "synthetic"})
    sites = ["layer_0.mlp_in", "layer_0.mlp"]
    write_normalization(root / "manifest.json", sites, root / "norm.json")
    return root


def transcoder_job(store: Path, out: Path, kinds=("transcoder", "skip_transcoder")):
    dicts = tuple(
        Dictionary.of("synthetic", kind, 0, "mlp", 64, 128 * 240, lambda_=1e-3)
        for kind in kinds
    )
    return TrainJob(
        model="synthetic", root=str(out), seed=3, shuffle_bucket=2048, train=TRAIN,
        identity={"model": "synthetic"}, dictionaries=dicts,
        manifest=str(store / "manifest.json"),
        normalization=str(store / "norm.json"), checkpoint=str(out / "ckpt.pt"),
    )  # fmt: skip


def test_transcoders_train_on_row_aligned_pairs_and_release_on_raw_units(
    pair_store, tmp_path
):
    """Plain and skip-transcoders from the same cache: the released weights (both
    scalars and the skip matrix folded in) predict the raw MLP output from the raw
    input exactly as the trained state does on normalised data, and the skip
    connection takes the dense linear part the latents cannot."""
    from saesuite.data.reader import ActivationReader
    from saesuite.sae.jumprelu import JumpReLUSAE

    results = train_site(transcoder_job(pair_store, tmp_path))
    norm = read_json(pair_store / "norm.json")["scale"]
    c_x, c_y = norm["layer_0.mlp_in"], norm["layer_0.mlp"]
    assert c_y > 3 * c_x
    raw = ActivationReader(pair_store / "manifest.json", "layer_0.mlp_in", 2048, 8192,
                           target_site="layer_0.mlp")  # fmt: skip
    x, y = raw.pair(0)
    fvu = {}
    for info in results:
        out = tmp_path / "synthetic" / "saes" / info["path"]
        assert info["output_site"] == "layer_0.mlp"
        assert info["target_normalization_scale"] == pytest.approx(c_y)
        released = JumpReLUSAE.from_release(load_file(out / "sae.safetensors"))
        assert released.skip == (info["dictionary"] == "skip_transcoder")
        state = load_file(out / "train_state.safetensors")
        trained = JumpReLUSAE(D, 64, skip=released.skip, apply_b_dec_to_input=False)
        trained.load_state_dict(state)
        with torch.no_grad():
            want = c_y * trained(x / c_x)
            torch.testing.assert_close(released(x), want, rtol=1e-4, atol=1e-4)
            err = (y - released(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
        fvu[info["dictionary"]] = float(err)
    assert fvu["skip_transcoder"] < 0.5 * fvu["transcoder"] and fvu["transcoder"] < 1, (
        fvu
    )


def test_an_sae_in_a_transcoder_job_is_refused(pair_store, tmp_path):
    job = transcoder_job(pair_store, tmp_path, kinds=("transcoder",))
    with pytest.raises(ValueError, match="an SAE reconstructs the site it reads"):
        replace(job.dictionaries[0], kind="sae")  # an SAE reading mlp_in, writing mlp
    sae = Dictionary.of("synthetic", "sae", 0, "mlp", 64, 128, lambda_=1e-3)
    with pytest.raises(ValueError, match="dictionaries that read and write the same"):
        replace(job, dictionaries=(job.dictionaries[0], sae))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("group_bytes", [None, 1], ids=["data_parallel", "sharded"])
def test_two_processes_train_a_skip_transcoder_as_one(
    pair_store, tmp_path, group_bytes
):
    """Issue 16: a skip-transcoder job over 2 gloo processes, data-parallel or (a
    device budget it fits no GPU by) latent-sharded with W_skip whole on each, ends
    where one process ends (80 steps; float-order differences only)."""

    def short(out: Path) -> TrainJob:
        job = transcoder_job(pair_store, out, kinds=("skip_transcoder",))
        return replace(job, dictionaries=(replace(job.dictionaries[0],
                                                  tokens=128 * 80),))  # fmt: skip

    one = short(tmp_path / "one")
    train_site(one)
    two = replace(short(tmp_path / "two"), group_bytes=group_bytes)
    p = run_cli(two, tmp_path / "job.json", nproc=2)
    text = output(p)
    assert p.returncode == 0, text
    assert ("sharded over 2 processes" in text) == (group_bytes == 1)
    a, b = two.dictionaries[0], one.dictionaries[0]
    for name in ("train_state.safetensors", "sae.safetensors"):
        sa = load_file(Path(two.out_dir(a)) / name)
        sb = load_file(Path(one.out_dir(b)) / name)
        assert sa.keys() == sb.keys() and "W_skip" in sa
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
    assert read_json(Path(two.out_dir(a)) / "sae.json")["steps"] == 80


def test_fused_adam_steps_equal_per_tensor_adam_on_the_sparse_path():
    """The trainer's fused Adam takes the same steps as torch's per-tensor Adam (an
    independent implementation), also for the sparse step's transposed ∂W_enc: torch
    2.13's fused CPU kernel misreads non-contiguous gradients, which
    `contiguous_grads` guards against (without it W_enc differs by ~1e-2 here)."""
    cfg = TRAIN.replace(step="sparse", lr=1e-2, lr_warmup_steps=0)
    spec = Dictionary.of("synthetic", "sae", 0, "res", 64, 128 * 5, lambda_=1e-3)
    fused = Member(spec, D, cfg, seed=3, device="cpu")
    assert fused.opt.defaults["fused"]
    plain = Member(spec, D, cfg, seed=3, device="cpu")
    plain.opt = torch.optim.Adam(
        plain.sae.parameters(), lr=cfg.lr, betas=(0.0, 0.999),
        eps=cfg.adam_eps, foreach=False,
    )  # fmt: skip
    x = sparse_data(128 * 5, seed=4)
    for step in range(5):
        batch = x[step * 128 : (step + 1) * 128]
        a = train_step(fused, batch, step, cfg, 1)
        b = train_step(plain, batch, step, cfg, 1)
        assert a["path"] == b["path"] == "sparse"
    for (name, p), q in zip(fused.sae.named_parameters(), plain.sae.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
