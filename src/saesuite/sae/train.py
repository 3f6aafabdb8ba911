"""JumpReLU training for every SAE of one site (rule `train`): the sparsity ladder and
widths of a site train in one job on the same batches, so the cache is read once per
group of SAEs that fits the device (on a CPU: once).

    python -m saesuite.sae.train --job job.json            # one process
    python -m saesuite.sae.train --job job.json --nproc 2  # torchrun (sae.launch)

With several processes, SAEs that fit a GPU train data-parallel (each process takes a
share of the batch); an SAE too wide for that is sharded by latents over the
processes (`saesuite.sae.shard`).

Schedule (Gemma Scope 1): Adam(β1=0, β2=0.999), lr warmed up along a cosine from
0.1·lr to lr, λ warmed up linearly from 0; both warm-ups are capped at a share of the
run so short runs still train (see config `train`). Checkpoints (weights, Adam state,
step, dead-latent counters, RNG) are written atomically every `checkpoint_every` steps
and on SIGTERM/SIGUSR1 (what SLURM sends before preemption), after which the job
exits with status 75 so Snakemake retries; a restarted job resumes bit for bit (on
the CPU, with the same number of threads: float reductions depend on it) unless the
checkpoint was written under another training config.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from saesuite.cluster.resources import (
    GPU_HEADROOM,
    fit_groups,
    n_prefixes,
    sae_gpu_bytes,
)
from saesuite.data.logs import OwnLineHandler, progress_interval
from saesuite.data.models import pick_device
from saesuite.data.store import ActivationReader
from saesuite.sae.jumprelu import JumpReLUSAE, prefix_ends
from saesuite.sae.launch import PREEMPTED_EXIT, torchrun
from saesuite.sae.shard import (
    LATENT_DIM,
    all_reduce_,
    bounds,
    clip_grad_norm_,
    gather_state,
)
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec import paths
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.hashing import derived_seed
from saesuite.spec.io import atomic_open, atomic_path, read_json, versions, write_json
from saesuite.spec.jobs import TrainJob
from saesuite.spec.metrics import DENSE_FREQUENCY, health_warnings
from saesuite.spec.sections import TrainConfig

log = logging.getLogger(__name__)
# device types with torch's fused Adam kernel
FUSED_ADAM_DEVICES = ("cpu", "cuda")


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(SystemExit):
    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT)


@dataclass
class Schedule:
    total_steps: int
    lr: float
    lr_warmup: int
    lam_warmup: int
    decay: str
    decay_steps: int

    def lr_at(self, step: int) -> float:
        if step < self.lr_warmup:  # cosine from 0.1·lr to lr
            t = step / self.lr_warmup
            return self.lr * (0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * t)))
        start = self.total_steps - self.decay_steps
        if self.decay != "none" and step >= start and self.decay_steps > 0:
            t = (step - start) / self.decay_steps
            f = 0.5 * (1 + math.cos(math.pi * t)) if self.decay == "cosine" else 1 - t
            return self.lr * f
        return self.lr

    def lam_factor(self, step: int) -> float:
        return 1.0 if self.lam_warmup == 0 else min(1.0, (step + 1) / self.lam_warmup)


def make_schedule(tokens: int, cfg: TrainConfig) -> Schedule:
    """Steps for a token budget; warm-ups capped at a share of the run."""
    total = max(1, tokens // cfg.batch_size)
    return Schedule(
        total_steps=total,
        lr=cfg.lr,
        lr_warmup=min(cfg.lr_warmup_steps, int(cfg.max_lr_warmup_fraction * total)),
        lam_warmup=min(
            cfg.lambda_warmup_steps, int(cfg.max_lambda_warmup_fraction * total)
        ),
        decay=cfg.lr_decay,
        decay_steps=int(cfg.lr_decay_fraction * total),
    )


class Member:
    """One SAE of the job with its optimiser, schedule and dead-latent counter."""

    def __init__(
        self, spec: Dictionary, d_in: int, cfg: TrainConfig, seed: int,
        device: str, latents: tuple[int, int] | None = None, d_out: int | None = None,
        out_dir: str = "",
    ):  # fmt: skip
        """`latents`: the block [start, stop) this process holds of a sharded SAE;
        `d_out`: a transcoder's target width (d_in by default); `out_dir`: where its
        outputs go (TrainJob.out_dir)."""
        self.spec = spec
        self.out_dir = out_dir
        self.sharded = latents is not None
        start, stop = latents or (0, spec.width)
        self.sae = JumpReLUSAE(
            d_in,
            stop - start,
            d_out=d_out,
            skip=spec.skip,
            apply_b_dec_to_input=not spec.paired,
            threshold_param=cfg.threshold_param,
            bandwidth=cfg.bandwidth,
            init_threshold=cfg.init_threshold,
            device=device,
        )
        self.sae.initialize(
            torch.Generator().manual_seed(seed),
            full_width=spec.width,
            start=start,
            encoder_scale=cfg.encoder_init_scale,
        )
        if cfg.decoder_init_norm != 1.0:  # decoder_norm: free (check_config)
            with torch.no_grad():
                self.sae.W_dec.mul_(cfg.decoder_init_norm)
        self.sae.to(device)
        self.opt = torch.optim.Adam(
            self.sae.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            # one kernel over each tensor: 5 ms a step against 24-37 ms for the
            # per-tensor and foreach loops at width 4096 on 2 cores (BENCHMARKS.md)
            fused=torch.device(device).type in FUSED_ADAM_DEVICES,
        )
        self.schedule = make_schedule(spec.tokens, cfg)
        # the Matryoshka loss's inner prefixes, local to this block of latents
        self.prefixes = prefix_ends(cfg.matryoshka_fractions, spec.width, start, stop)
        # tokens since each latent last fired
        self.since_fired = torch.zeros(stop - start, dtype=torch.int64)
        self.last_l0 = float(spec.width)
        # tokens each latent fired on since the last logged step, and tokens seen
        self.window_counts = torch.zeros(stop - start, dtype=torch.int64)
        self.window_tokens = 0


def sae_seed(seed: int, site: str, path: str) -> int:
    """Initialisation seed of one SAE, stable when the ladder around it changes."""
    return derived_seed(seed, site, path)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _reduce_grads(sae: JumpReLUSAE, world: int) -> None:
    if world == 1:
        return
    for p in sae.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def _shard_path(path: Path, rank: int, step: int) -> Path:
    return path.with_name(f"{path.stem}.shard{rank}.step{step}{path.suffix}")


def _member_state(members: list[Member]) -> list[dict[str, Any]]:
    return [
        {
            "sae": m.sae.state_dict(),
            "opt": m.opt.state_dict(),
            "since_fired": m.since_fired,
            "last_l0": m.last_l0,
            "window_counts": m.window_counts,
            "window_tokens": m.window_tokens,
        }
        for m in members
    ]


def _save_checkpoint(
    path: Path, step: int, members: list[Member], fingerprint: str,
    rank: int = 0, world: int = 1,
) -> None:  # fmt: skip
    """Rank 0 writes `path`. A sharded SAE's other blocks go to one file per rank and
    step, written before `path` names that step and removed once a later one does,
    so that the files `path` points to are always complete."""
    sharded = any(m.sharded for m in members)
    if rank != 0 and not sharded:  # data parallelism: every copy is the same
        return
    state = {
        "job": fingerprint,
        "saes": [m.spec.path for m in members],
        "shards": world if sharded else None,
        "step": step,
        "members": _member_state(members),
        "torch_rng": torch.get_rng_state(),
    }
    if sharded and rank != 0:
        with atomic_path(_shard_path(path, rank, step)) as tmp:
            torch.save(state, tmp)
    if sharded:
        dist.barrier()
    if rank == 0:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    if sharded:
        dist.barrier()
        if rank != 0:
            keep = _shard_path(path, rank, step)
            for old in path.parent.glob(f"{path.stem}.shard{rank}.step*{path.suffix}"):
                if old != keep:
                    old.unlink(missing_ok=True)


def _remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    for f in path.parent.glob(f"{path.stem}.shard*.step*{path.suffix}"):
        f.unlink(missing_ok=True)


def _checkpoint_head(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The SAEs a checkpoint holds and over how many shards, or None when it was
    written for another job (a changed config starts afresh)."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state.get("job") != fingerprint:
        log.warning("%s was written for another training config; starting afresh", path)
        return None
    return {"saes": list(state["saes"]), "shards": state.get("shards")}


def _load_checkpoint(path: Path, members: list[Member], rank: int = 0) -> int:
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state["saes"] != [m.spec.path for m in members]:
        raise RuntimeError(f"{path}: checkpoint holds SAEs {state['saes']}")
    if state.get("shards") and rank != 0:
        state = torch.load(
            _shard_path(path, rank, state["step"]), weights_only=True,
            map_location="cpu",
        )  # fmt: skip
    for m, s in zip(members, state["members"]):
        m.sae.load_state_dict(s["sae"])
        m.opt.load_state_dict(s["opt"])
        m.since_fired = s["since_fired"]
        m.last_l0 = s["last_l0"]
        if "window_counts" in s:  # checkpoints before the dense-latent count lack it
            m.window_counts, m.window_tokens = s["window_counts"], s["window_tokens"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["step"] < step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut short by kill -9
            continue
    with atomic_open(path) as f:
        f.write("".join(ln + "\n" for ln in keep))


def needs_sharding(
    width: int,
    d_in: int,
    cfg: TrainConfig,
    world: int,
    budget: float | None,
    skip: bool = False,
) -> bool:
    """Whether an SAE's latents are split over the job's processes: when its data-
    parallel copy does not fit `budget` and there is more than one process."""
    if world == 1 or budget is None:
        return False
    pre = n_prefixes(cfg.matryoshka_fractions)
    need = sae_gpu_bytes(cfg.batch_size, d_in, width, world, skip=skip, prefixes=pre)
    return need > budget


def sae_groups(
    saes: list[Dictionary],
    d_in: int,
    cfg: TrainConfig,
    world: int,
    budget: float | None,
) -> list[list[int]]:
    """Indices of `saes` in groups trained one after another, each within `budget`
    bytes per device (None: one group); an SAE too wide for data parallelism trains
    alone, sharded (`needs_sharding`). The batches are a function of the step and
    each SAE's initialisation of its own seed, so grouping does not change results."""
    pre = n_prefixes(cfg.matryoshka_fractions)
    sizes = [
        sae_gpu_bytes(cfg.batch_size, d_in, s.width, world, skip=s.skip, prefixes=pre)
        for s in saes
    ]
    alone = frozenset(
        i
        for i, s in enumerate(saes)
        if needs_sharding(s.width, d_in, cfg, world, budget, s.skip)
    )
    return fit_groups(sizes, budget, alone)


def device_budget(device: str, world: int) -> float | None:
    """Bytes a group of SAEs may take on `device`: a share of the smallest GPU's
    memory over all processes (every process must form the same groups); None on
    the CPU."""
    if not device.startswith("cuda"):
        return None
    total = torch.tensor(float(torch.cuda.get_device_properties(device).total_memory))
    if world > 1:
        total = total.to(device)
        dist.all_reduce(total, op=dist.ReduceOp.MIN)
    return GPU_HEADROOM * float(total)


def train_site(
    job: TrainJob, stop_at: Callable[[int], bool] | None = None, *,
    reader: Any = None, init: dict[str, str] | None = None,
    info: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train every dictionary of `job` on its site, in groups that fit the device
    (`job.group_bytes` overrides what the GPU has); write their outputs.
    `stop_at(step)`: a stop signal for tests, as if one came after that step.
    Fine-tuning (`saesuite.sae.finetune`) passes its own `reader` (what
    ActivationReader offers: pair(step), d_in, d_out, n_valid), the trained folder
    each dictionary starts from (`init`, by path) and what to add to their sae.json
    (`info`, by path).

    A retried job skips the SAEs whose outputs it finished (listed in a marker file
    beside the checkpoint) and resumes the group in its checkpoint; a checkpoint or
    marker of another training config is discarded."""
    cfg = job.train
    paired = job.dictionaries[0].paired
    rank, world = _dist()
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.batch_size} not divisible by {world}")
    device = str(pick_device(cfg.device))
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    norm = read_json(job.normalization)
    scale = norm["scale"][job.site]
    target_scale = norm["scale"][job.output_site]
    reader = reader or ActivationReader(
        job.manifest,
        job.site,
        batch_size=cfg.batch_size,
        bucket=job.shuffle_bucket,
        seed=job.seed,
        scale=scale,
        target_site=job.output_site if paired else None,
        target_scale=target_scale,
    )
    fingerprint = job.fingerprint()
    ckpt = Path(job.checkpoint)
    marker = paths.done_marker(ckpt)
    done: dict[str, Any] = {}
    if marker.exists() and read_json(marker).get("job") == fingerprint:
        done = read_json(marker)["saes"]
    todo = [i for i, s in enumerate(job.dictionaries) if s.path not in done]
    budget = job.group_bytes or device_budget(device, world)

    def shards(idx: list[int]) -> int | None:
        d = job.dictionaries[idx[0]]
        one = len(idx) == 1 and needs_sharding(
            d.width, reader.d_in, cfg, world, budget, d.skip
        )
        return world if one else None

    # The checkpoint's group first, as it was formed (the GPU may differ this time),
    # unless it was sharded otherwise than this run would.
    held = _checkpoint_head(ckpt, fingerprint)
    first = [i for i in todo if held and job.dictionaries[i].path in held["saes"]]
    if held is not None and first and len(first) == len(held["saes"]):
        if held["shards"] != shards(first):
            log.warning(
                "%s holds SAEs trained over %s shard(s); this run takes %s: starting "
                "them afresh", ckpt, held["shards"] or 1, shards(first) or 1,
            )  # fmt: skip
            first = []
    else:  # another config's, or SAEs done
        first = []
    if not first and rank == 0:
        _remove_checkpoint(ckpt)
    if world > 1:
        dist.barrier()  # no process may read a checkpoint rank 0 is removing
    rest = [i for i in todo if i not in first]
    groups = [first] if first else []
    fitted = sae_groups([job.dictionaries[i] for i in rest], reader.d_in, cfg, world,
                        budget)  # fmt: skip
    groups += [[rest[j] for j in g] for g in fitted]

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    handlers = {
        s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)
    }
    try:
        for idx in groups:
            n_shards = shards(idx)
            members = [
                Member(
                    job.dictionaries[i], reader.d_in, cfg,
                    sae_seed(job.seed, job.site, job.dictionaries[i].path), device,
                    bounds(job.dictionaries[i].width, world, rank) if n_shards
                    else None, d_out=reader.d_out,
                    out_dir=job.out_dir(job.dictionaries[i]),
                )
                for i in idx
            ]  # fmt: skip
            if init:
                for m in members:
                    start_from(m, init[m.spec.path], rank, world)
            desc = job.site
            if len(groups) > 1 or done:
                desc += f" [{len(done) + len(idx)}/{len(job.dictionaries)} SAEs]"
            if n_shards and rank == 0:
                log.info("%s: width %d sharded over %d processes", desc,
                         members[0].spec.width, world)  # fmt: skip
            _train_group(job, members, reader, device, ckpt, fingerprint, stop, desc,
                         rank, world, stop_at)  # fmt: skip
            if n_shards:
                _gather_members(members, rank, world)
            if rank == 0:
                for m in members:
                    done[m.spec.path] = write_outputs(
                        m, job, scale, reader.n_valid, target_scale
                    ) | (info or {}).get(m.spec.path, {})
                    if info:  # the fine-tuning's own record, beside the trainer's
                        write_json(paths.sae_file(m.out_dir, "info"),
                                   done[m.spec.path])  # fmt: skip
                write_json(marker, {"job": fingerprint, "saes": done})
                _remove_checkpoint(ckpt)
            if world > 1:
                dist.barrier()  # the next group must not find this group's checkpoint
            del members
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if rank != 0:
        return []
    marker.unlink(missing_ok=True)
    return [done[s.path] for s in job.dictionaries]


@torch.no_grad()
def start_from(m: Member, sae_dir: str, rank: int = 0, world: int = 1) -> None:
    """`m`'s SAE ← the training state of a trained dictionary (its block of latents
    when sharded); Adam and the counters start afresh."""
    state = load_file(str(paths.sae_file(sae_dir, "state")))
    mine = m.sae.state_dict()
    if set(state) != set(mine):
        raise ValueError(
            f"{sae_dir}: its training state has {sorted(state)}, this dictionary "
            f"{sorted(mine)} (trained under another train.threshold_param?)"
        )
    if m.sharded:
        lo, hi = bounds(m.spec.width, world, rank)
        state = {k: v.narrow(LATENT_DIM[k], lo, hi - lo) if k in LATENT_DIM else v
                 for k, v in state.items()}  # fmt: skip
    for k, v in state.items():
        if v.shape != mine[k].shape:
            raise ValueError(f"{sae_dir}: {k} is {tuple(v.shape)}, not "
                             f"{tuple(mine[k].shape)}")  # fmt: skip
    m.sae.load_state_dict(state)


def _gather_members(members: list[Member], rank: int, world: int) -> None:
    """Replace each sharded SAE by the whole SAE on rank 0's CPU (for its outputs)."""
    for m in members:
        state = gather_state(m.sae.state_dict(), rank, world)
        if state is None:
            continue
        # as the shard was built: a transcoder's output width, skip matrix and input
        # (no b_dec subtracted) included
        full = JumpReLUSAE(
            m.sae.d_in, m.spec.width, d_out=m.sae.W_dec.shape[1], skip=m.sae.skip,
            apply_b_dec_to_input=m.sae.apply_b_dec_to_input,
            threshold_param=m.sae.threshold_param, bandwidth=m.sae.bandwidth,
            device="meta",
        )  # fmt: skip
        full.load_state_dict(state, assign=True)
        m.sae = full


def _train_group(
    job: TrainJob, members: list[Member], reader: ActivationReader, device: str,
    ckpt: Path, fingerprint: str, stop: dict[str, Any], desc: str, rank: int,
    world: int, stop_at: Callable[[int], bool] | None = None,
) -> None:  # fmt: skip
    """Train `members` on the same batches to the end of their schedules, from
    `ckpt` if it exists; checkpoint every `checkpoint_every` steps and on a signal
    (then raise Preempted)."""
    cfg = job.train
    total = max(m.schedule.total_steps for m in members)
    logs = [paths.sae_file(m.out_dir, "log") for m in members]
    start = _load_checkpoint(ckpt, members, rank) if ckpt.exists() else 0
    sharded = members[0].sharded  # a sharded SAE trains alone
    if rank == 0:
        for p in logs:
            p.parent.mkdir(parents=True, exist_ok=True)
            _truncate_log(p, start)
        if start:
            log.info("resuming %s from step %d of %d", desc, start, total)
    # Data parallelism splits the batch; shards of latents all see the whole batch.
    local = slice(None) if sharded else slice(
        rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world
    )  # fmt: skip
    files = [open(p, "a") for p in logs] if rank == 0 else []
    bar = tqdm(
        mininterval=progress_interval(),
        total=total * cfg.batch_size,
        initial=start * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        desc=desc,
        disable=rank != 0,
    )
    try:
        for step in range(start, total):
            x, y = reader.pair(step)
            x = x[local].to(device)
            y = None if y is None else y[local].to(device)
            for i, m in enumerate(members):
                if step >= m.schedule.total_steps:
                    continue
                stats = train_step(m, x, step, cfg, world, target=y)
                if not math.isfinite(stats["loss"]):
                    raise NonFiniteLoss(
                        f"non-finite loss {stats['loss']} at step {step} for SAE "
                        f"{m.spec.path} (site {job.site}); the last good "
                        f"checkpoint {ckpt} is kept. Lower train.lr or set "
                        "train.max_grad_norm and run again (a changed training "
                        "config starts the site afresh)"
                    )
                last = step == m.schedule.total_steps - 1
                if rank == 0 and (step % cfg.log_every == 0 or last):
                    files[i].write(json.dumps(stats) + "\n")
                    files[i].flush()
                if rank == 0 and last:
                    for w in health_warnings(m.spec.width, stats["dead"]):
                        log.warning("%s: %s at the end of training", m.spec.path, w)
                if i == 0:
                    bar.set_postfix(
                        loss=f"{stats['loss']:.4g}",
                        l0=f"{stats['l0']:.1f}",
                        fvu=f"{stats['fvu']:.3f}",
                    )
            bar.update(cfg.batch_size)
            done = step + 1
            if done == total:
                break
            injected = bool(stop_at and stop_at(done))  # before reading the flag
            stopping = stop["signal"] is not None or injected
            if world > 1:  # every process stops at the same step
                flag = torch.tensor([int(stopping)])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag)
            if stopping or done % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt, done, members, fingerprint, rank, world)
                if stopping:
                    log.warning(
                        "signal %d: checkpoint at step %d written; exiting %d (retry)",
                        stop["signal"] or 0,
                        done,
                        PREEMPTED_EXIT,
                    )
                    raise Preempted()
    finally:
        bar.close()
        for f in files:
            f.close()


def contiguous_grads(sae: torch.nn.Module) -> None:
    """Gradients as contiguous tensors. torch's fused CPU Adam (2.13) reads a
    gradient's storage as if it were contiguous, so a transposed view (the sparse
    step's ∂W_enc) silently updates the wrong entries (test_train checks it)."""
    for p in sae.parameters():
        if p.grad is not None and not p.grad.is_contiguous():
            p.grad = p.grad.contiguous()


@torch.no_grad()
def init_b_dec(m: Member, y: torch.Tensor, world: int) -> None:
    """b_dec ← the mean of the first batch's targets (over every process's share of
    the batch): an SAE then encodes x − mean from the first step, so the dataset's
    mean direction (large in the residual stream) no longer excites every latent."""
    mean = y.mean(0).to(m.sae.b_dec.dtype)
    if world > 1 and not m.sharded:  # data-parallel: each process has a slice
        dist.all_reduce(mean)
        mean /= world
    m.sae.b_dec.copy_(mean)


def dead_mask(m: Member, cfg: TrainConfig) -> torch.Tensor | None:
    """The latents the pre-activation loss revives: those that have not fired in
    `pre_act_window_tokens` (SAELens: `dead_feature_window` forward passes); None
    when the loss is off."""
    if not cfg.pre_act_coefficient > 0:
        return None
    return m.since_fired >= cfg.pre_act_window_tokens


def train_step(
    m: Member, x: torch.Tensor, step: int, cfg: TrainConfig, world: int,
    target: torch.Tensor | None = None,
) -> dict:  # fmt: skip
    """One optimiser step of `m` on batch x (and a transcoder's target batch)."""
    spec, sched = m.spec, m.schedule
    lr = sched.lr_at(step)
    for group in m.opt.param_groups:
        group["lr"] = lr
    lambda_ = spec.lambda_ * sched.lam_factor(step)
    mode = cfg.step
    if mode == "auto":
        mode = "sparse" if m.last_l0 < cfg.sparse_density * spec.width else "dense"
    fn = sparse_step if mode == "sparse" else dense_step
    if step == 0 and cfg.b_dec_init == "mean":
        init_b_dec(m, x if target is None else target, world)
    mu = cfg.frequency_coefficient * sched.lam_factor(step)
    dead = dead_mask(m, cfg)
    stats = fn(m.sae, x, target=target, penalty=spec.penalty, lambda_=lambda_,
               target_l0=spec.target_l0, sharded=m.sharded, frequency_coefficient=mu,
               max_frequency=cfg.max_frequency, prefixes=m.prefixes,
               pre_act_coefficient=cfg.pre_act_coefficient,
               dead=None if dead is None else dead.to(x.device))  # fmt: skip
    counts = stats.counts
    loss, l0, fvu, recon = stats.loss, stats.l0, stats.fvu, stats.reconstruction
    if world > 1 and not m.sharded:  # sharded: every process has the whole sums
        buf = torch.tensor([loss, l0, fvu, recon], dtype=torch.float64)
        dist.all_reduce(buf)
        loss, l0, fvu, recon = (buf / world).tolist()
        counts = counts.clone()
        dist.all_reduce(counts)  # over every process's share of the batch
    counts = counts.cpu()  # one device→host copy per step, for both counters
    fired = counts > 0
    if not m.sharded:
        _reduce_grads(m.sae, world)
    contiguous_grads(m.sae)
    unit = cfg.decoder_norm == "unit"
    if unit:
        m.sae.remove_parallel_decoder_grad()
    if cfg.max_grad_norm:  # a sharded SAE's norm spans every process
        if m.sharded:
            clip_grad_norm_(m.sae, cfg.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(m.sae.parameters(), cfg.max_grad_norm)
    m.opt.step()
    m.opt.zero_grad(set_to_none=True)
    if unit:
        m.sae.normalize_decoder()
    if m.sae.threshold_param == "direct":  # θ must stay positive
        with torch.no_grad():
            m.sae.threshold_raw.clamp_(min=1e-6)
    m.last_l0 = l0
    m.since_fired += cfg.batch_size
    m.since_fired[fired] = 0
    m.window_counts += counts
    m.window_tokens += cfg.batch_size
    dead = dense = None  # counted only for the steps that are logged
    if step % cfg.log_every == 0 or step == sched.total_steps - 1:
        # not fired in the window, or (a run shorter than it) in the whole run so far
        window = min(cfg.dead_window_tokens, (step + 1) * cfg.batch_size)
        dead_t = (m.since_fired >= window).sum()
        dead = int(all_reduce_(dead_t) if m.sharded else dead_t)
        # latents firing on more than DENSE_FREQUENCY of the tokens since the last log
        dense_t = (m.window_counts > DENSE_FREQUENCY * m.window_tokens).sum()
        dense = int(all_reduce_(dense_t) if m.sharded else dense_t)
        m.window_counts.zero_()
        m.window_tokens = 0
    return {
        "step": step,
        "tokens": (step + 1) * cfg.batch_size,
        "loss": loss,
        "reconstruction": recon,
        "l0": l0,
        "fvu": fvu,
        "dead": dead,
        "dense": dense,
        "lr": lr,
        "lambda": lambda_,
        "path": mode,
    }


def write_outputs(
    m: Member, job: TrainJob, scale: float, n_valid: int,
    target_scale: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Per SAE: folded release weights, raw training state, and reproduction JSON.
    `target_scale`: a transcoder's target site's scalar (its input's is `scale`)."""
    out = Path(m.out_dir)
    sae = m.sae.to("cpu")
    with atomic_path(paths.sae_file(out, "state")) as tmp:
        save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(tmp))
    paired = m.spec.paired
    released = sae.fold_normalization(scale, target_scale if paired else None)
    with atomic_path(paths.sae_file(out, "weights")) as tmp:
        save_file(released.release_tensors(), str(tmp))
    info = {
        **job.identity,
        "config_hash": job.config_hash,
        "site": job.site,
        "layer": m.spec.layer,
        "kind": m.spec.input_site.kind,
        "width": m.spec.width,
        "penalty": m.spec.penalty,
        "value": m.spec.value,
        "coefficient": m.spec.lambda_,
        "tokens": m.spec.tokens,
        "path": m.spec.path,
        "d_in": sae.d_in,
        "steps": m.schedule.total_steps,
        "schedule": {
            "lr_warmup_steps": m.schedule.lr_warmup,
            "lambda_warmup_steps": m.schedule.lam_warmup,
            "lr_decay_steps": m.schedule.decay_steps
            if m.schedule.decay != "none"
            else 0,
        },
        "train": job.train.to_dict(),
        "seed": job.seed,
        "normalization_scale": scale,
        **(
            {
                "dictionary": m.spec.kind,
                "output_site": job.output_site,
                "d_out": sae.d_out,
                "target_normalization_scale": target_scale,
            }
            if paired
            else {}
        ),
        "cache_tokens": n_valid,
        "epochs": m.schedule.total_steps * job.train.batch_size / n_valid,
        "versions": versions(),
    }
    write_json(paths.sae_file(out, "info"), info)
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", required=True, help="job JSON written by the train rule")
    ap.add_argument("--nproc", type=int, default=1,
                    help="processes (GPUs); through torchrun when > 1")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(  # records on their own line, after any progress bar
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=[OwnLineHandler(sys.stderr)],
    )
    if args.nproc > 1:
        sys.exit(torchrun(args.job, args.nproc))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # NCCL for tensors on GPUs; gloo for the small CPU ones (stop flags, stats)
        gpu = torch.cuda.is_available()
        if gpu:  # NCCL's collectives (barriers too) run on the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
    try:
        train_site(TrainJob.from_dict(read_json(args.job)))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
