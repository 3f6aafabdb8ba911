"""JumpReLU training for every SAE of one site (rule `train`): the sparsity ladder and
widths of a site train in one job on the same batches, so the cache is read once per
group of SAEs that fits the device (on a CPU: once).

    python -m saesuite.sae.train --job job.json            # one process
    python -m saesuite.sae.train --job job.json --nproc 2  # torchrun (sae.launch)

With several processes, SAEs that fit a GPU train data-parallel (each process takes a
share of the batch); an SAE too wide for that is sharded by latents over the
processes (`saesuite.sae.shard`).

The loop and the CLI live here; one dictionary's state and step in `sae.member`, the
groups in `sae.groups`, checkpoints in `sae.checkpoint`, outputs in `sae.outputs`.
Checkpoints are written every `checkpoint_every` steps and on SIGTERM/SIGUSR1 (what
SLURM sends before preemption), after which the job exits with status 75 so
Snakemake retries; a restarted job resumes bit for bit (on the CPU, with the same
number of threads: float reductions depend on it) unless the checkpoint was written
under another training config.
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
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from saesuite.data.logs import OwnLineHandler, progress_interval
from saesuite.data.models import pick_device
from saesuite.data.reader import ActivationReader
from saesuite.sae.checkpoint import (
    checkpoint_head,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    truncate_log,
)
from saesuite.sae.groups import device_budget, needs_sharding, sae_groups
from saesuite.sae.launch import PREEMPTED_EXIT, torchrun
from saesuite.sae.member import Member, sae_seed, train_step
from saesuite.sae.outputs import gather_members, start_from, write_outputs
from saesuite.sae.shard import (
    bounds,
)
from saesuite.spec import paths
from saesuite.spec.io import read_json, write_json
from saesuite.spec.jobs import TrainJob
from saesuite.spec.metrics import health_warnings

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


class Preempted(SystemExit):
    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_site(
    job: TrainJob,
    stop_at: Callable[[int], bool] | None = None,
    *,
    reader: Any = None,
    init: dict[str, str] | None = None,
    info: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train every dictionary of `job` on its site, in groups that fit the device
    (`job.group_bytes` overrides what the GPU has); write their outputs.
    `stop_at(step)`: a stop signal for tests, as if one came after that step.
    Fine-tuning (`saesuite.sae.finetune`) passes its own `reader` (what
    ActivationReader offers: pair(step), d_in, d_out, n_valid), the trained folder
    each dictionary starts from (`init`, by path) and what to add to their sae.json
    (`info`, by path).

    A retried job skips the SAEs whose outputs it finished (listed in a marker file
    beside the checkpoint) and resumes the group in its checkpoint; a checkpoint or
    marker of another training config is discarded.

    Longer than 80 lines on purpose: the retry protocol (the marker, the
    checkpoint's group and shards, the groups after it) is one sequence whose steps
    decide each other's inputs."""
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
    held = checkpoint_head(ckpt, fingerprint)
    first = [i for i in todo if held and job.dictionaries[i].path in held["saes"]]
    if held is not None and first and len(first) == len(held["saes"]):
        if held["shards"] != shards(first):
            log.warning(
                "%s holds SAEs trained over %s shard(s); this run takes %s: starting "
                "them afresh",
                ckpt,
                held["shards"] or 1,
                shards(first) or 1,
            )
            first = []
    else:  # another config's, or SAEs done
        first = []
    if not first and rank == 0:
        remove_checkpoint(ckpt)
    if world > 1:
        dist.barrier()  # no process may read a checkpoint rank 0 is removing
    rest = [i for i in todo if i not in first]
    groups = [first] if first else []
    fitted = sae_groups(
        [job.dictionaries[i] for i in rest], reader.d_in, cfg, world, budget
    )
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
                    job.dictionaries[i],
                    reader.d_in,
                    cfg,
                    sae_seed(job.seed, job.site, job.dictionaries[i].path),
                    device,
                    bounds(job.dictionaries[i].width, world, rank)
                    if n_shards
                    else None,
                    d_out=reader.d_out,
                    out_dir=job.out_dir(job.dictionaries[i]),
                )
                for i in idx
            ]
            if init:
                for m in members:
                    start_from(m, init[m.spec.path], rank, world)
            desc = job.site
            if len(groups) > 1 or done:
                desc += f" [{len(done) + len(idx)}/{len(job.dictionaries)} SAEs]"
            if n_shards and rank == 0:
                log.info(
                    "%s: width %d sharded over %d processes",
                    desc,
                    members[0].spec.width,
                    world,
                )
            _train_group(
                job,
                members,
                reader,
                device,
                ckpt,
                fingerprint,
                stop,
                desc,
                rank,
                world,
                stop_at,
            )
            if n_shards:
                gather_members(members, rank, world)
            if rank == 0:
                for m in members:
                    done[m.spec.path] = write_outputs(
                        m, job, scale, reader.n_valid, target_scale
                    ) | (info or {}).get(m.spec.path, {})
                    if info:  # the fine-tuning's own record, beside the trainer's
                        write_json(paths.sae_file(m.out_dir, "info"), done[m.spec.path])
                write_json(marker, {"job": fingerprint, "saes": done})
                remove_checkpoint(ckpt)
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


def _train_group(
    job: TrainJob,
    members: list[Member],
    reader: ActivationReader,
    device: str,
    ckpt: Path,
    fingerprint: str,
    stop: dict[str, Any],
    desc: str,
    rank: int,
    world: int,
    stop_at: Callable[[int], bool] | None = None,
) -> None:
    """Train `members` on the same batches to the end of their schedules, from
    `ckpt` if it exists; checkpoint every `checkpoint_every` steps and on a signal
    (then raise Preempted). Longer than 80 lines on purpose: the loop and its stop
    and checkpoint protocol stay together, since every process must take the same
    branch at the same step."""
    cfg = job.train
    total = max(m.schedule.total_steps for m in members)
    logs = [paths.sae_file(m.out_dir, "log") for m in members]
    start = load_checkpoint(ckpt, members, rank) if ckpt.exists() else 0
    sharded = members[0].sharded  # a sharded SAE trains alone
    if rank == 0:
        for p in logs:
            p.parent.mkdir(parents=True, exist_ok=True)
            truncate_log(p, start)
        if start:
            log.info("resuming %s from step %d of %d", desc, start, total)
    # Data parallelism splits the batch; shards of latents all see the whole batch.
    local = (
        slice(None)
        if sharded
        else slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    )
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
                save_checkpoint(ckpt, done, members, fingerprint, rank, world)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", required=True, help="job JSON written by the train rule")
    ap.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes (GPUs); through torchrun when > 1",
    )
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
