"""Training one cross-layer transcoder or crosscoder (rule `train_clt`): row-aligned
batches of every site it reads and writes from the activation cache (a CLT: each
layer's MLP input and output; a crosscoder: each layer's residual stream, read once),
each site divided by its own scalar, through `CrossLayerTranscoder.training_loss`
with the train section's schedule, Adam, clipping and penalties, as an SAE's job runs
them (`sae.member`). A weakly causal crosscoder is the same module over residual
sites: its k-th layer's latents write its k-th and later layers.

    python -m saesuite.sae.clt_train --job job.json

One process. Checkpoints every `checkpoint_every` steps and on SIGTERM/SIGUSR1, then
exit 75 so Snakemake retries; a retried job resumes bit for bit on the CPU (the same
threads), unless its checkpoint was written for another training config. Outputs, as
an SAE's folder: `train_state.safetensors` (as trained, on x / c), `sae.safetensors`
(each site's scalar folded in, raw units), `sae.json`, `train_log.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from saesuite.data.logs import OwnLineHandler, progress_interval
from saesuite.data.models import pick_device
from saesuite.data.reader import ActivationReader
from saesuite.sae.checkpoint import remove_checkpoint, truncate_log
from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.sae.jumprelu import LossTerms
from saesuite.sae.launch import PREEMPTED_EXIT
from saesuite.sae.member import FUSED_ADAM_DEVICES, make_schedule, sae_seed
from saesuite.spec import paths
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import atomic_path, read_json, versions, write_json
from saesuite.spec.jobs import TrainJob
from saesuite.spec.metrics import health_warnings
from saesuite.spec.sections import TrainConfig

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT)


def clt_outliers(x: torch.Tensor, y: torch.Tensor, multiple: float) -> torch.Tensor:
    """Bool (B,): tokens whose input or output at any layer has a norm above
    `multiple` × that site's median over the batch (`sae.outliers`'s rule, per
    site): the whole token leaves, since its layers are one sample."""
    out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for t in (x, y):
        norms = t.norm(dim=-1)  # (B, L)
        out |= (norms > multiple * norms.median(dim=0).values).any(dim=1)
    return out


def clt_bucket(shuffle_bucket: int, n_sites: int) -> int:
    """Rows of a CLT's shuffle bucket: `activations.shuffle_bucket` holds one site's
    rows; a CLT's rows hold all of its sites, so the bucket takes as many bytes as
    an SAE job's (262,144 rows of gemma-3-270m's 36 MLP sites would be 24 GB)."""
    return max(1, shuffle_bucket // n_sites)


def build(d: Dictionary, d_in: int, d_out: int, cfg: TrainConfig, seed: int):
    """The CLT of `d` initialised (`CrossLayerTranscoder.initialize`), with its Adam."""
    clt = CrossLayerTranscoder(
        len(d.layers),
        d_in,
        d.width,
        d_out,
        bandwidth=cfg.bandwidth,
        init_threshold=cfg.init_threshold,
    )
    clt.initialize(
        torch.Generator().manual_seed(seed), encoder_scale=cfg.encoder_init_scale
    )
    return clt


class CLTState:
    """One CLT in training: module, optimiser, schedule and the counters an SAE's
    `Member` keeps, per encoder layer."""

    def __init__(self, job: TrainJob, d_in: int, d_out: int, device: str):
        (self.spec,) = job.dictionaries
        cfg = job.train
        seed = sae_seed(job.seed, self.spec.kind, self.spec.path)
        self.clt = build(self.spec, d_in, d_out, cfg, seed).to(device)
        # One Adam over every tensor, the decoders' dense gradients included: a
        # row-sparse exact Adam measured 3.5× slower at 18 layers, since nearly every
        # latent fires in a batch (BENCHMARKS.md, "A cross-layer transcoder's step
        # by layers")
        self.opt = torch.optim.Adam(
            self.clt.parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            fused=torch.device(device).type in FUSED_ADAM_DEVICES,
        )
        self.schedule = make_schedule(self.spec.tokens, cfg)
        L, w = self.clt.n_layers, self.spec.width
        self.since_fired = torch.zeros(L, w, dtype=torch.int64)

    def state(self, step: int, fingerprint: str) -> dict[str, Any]:
        return {
            "job": fingerprint,
            "step": step,
            "clt": self.clt.state_dict(),
            "opt": self.opt.state_dict(),
            "since_fired": self.since_fired,
            "torch_rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> int:
        self.clt.load_state_dict(state["clt"])
        self.opt.load_state_dict(state["opt"])
        self.since_fired = state["since_fired"]
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"])


def clt_step(
    s: CLTState, x: torch.Tensor, y: torch.Tensor, step: int, cfg: TrainConfig
) -> dict[str, Any]:
    """One optimiser step on a batch x, y (B, L, d), scaled; the logged numbers."""
    spec, sched = s.spec, s.schedule
    dropped = 0
    if cfg.max_norm_multiple:
        out = clt_outliers(x, y, cfg.max_norm_multiple)
        dropped = int(out.sum())
        x, y = x[~out], y[~out]
    lr = sched.lr_at(step)
    for group in s.opt.param_groups:
        group["lr"] = lr
    if step == 0 and cfg.b_dec_init == "mean":
        with torch.no_grad():
            s.clt.b_dec.copy_(y.mean(0))
    factor = sched.lam_factor(step)
    term = LossTerms(
        penalty=spec.penalty,
        lambda_=spec.lambda_ * factor,
        target_l0=spec.target_l0,
        frequency_coefficient=cfg.frequency_coefficient * factor,
        max_frequency=cfg.max_frequency,
        pre_act_coefficient=cfg.pre_act_coefficient,
    )
    dead = None
    if cfg.pre_act_coefficient > 0:
        dead = (s.since_fired >= cfg.pre_act_window_tokens).to(x.device)
    out = s.clt.training_loss(x, y, (term,) * s.clt.n_layers, dead=dead)
    s.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(s.clt.parameters(), cfg.max_grad_norm)
    s.opt.step()
    with torch.no_grad():  # θ must stay positive
        s.clt.threshold_raw.clamp_(min=1e-6)
    counts = out.counts.cpu()
    s.since_fired += len(x)
    s.since_fired[counts > 0] = 0
    var = (y - y.mean(0)).pow(2).sum(-1).mean(0)  # (L,)
    fvu = (out.reconstruction / var.clamp_min(1e-30)).tolist()
    window = min(cfg.dead_window_tokens, (step + 1) * cfg.batch_size)
    return {
        "step": step,
        "tokens": (step + 1) * cfg.batch_size,
        "loss": float(out.loss.detach()),
        "l0": float(out.l0.mean()),
        "fvu": sum(fvu) / len(fvu),
        "l0_by_layer": out.l0.tolist(),
        "fvu_by_layer": fvu,
        "dead": int((s.since_fired >= window).sum()),
        "lr": lr,
        "lambda": spec.lambda_ * factor,
        "outliers": dropped,
    }


def train_clt(
    job: TrainJob, stop_at: Callable[[int], bool] | None = None
) -> dict[str, Any]:
    """Train the one CLT of `job` and write its folder; its sae.json record.
    `stop_at(step)`: a stop signal for tests, as if one came after that step."""
    cfg = job.train
    (spec,) = job.dictionaries
    if not spec.spans:
        raise ValueError(f"{spec.path} is a {spec.kind}, not a cross-layer dictionary")
    device = str(pick_device(cfg.device))
    scale = read_json(job.normalization)["scale"]
    # each site once (a crosscoder reads and writes the same ones), in column order
    names = list(dict.fromkeys(x.name for x in (*spec.reads, *spec.writes)))
    reader = ActivationReader.of_sites(
        job.manifest,
        [(n, scale[n]) for n in names],
        cfg.batch_size,
        clt_bucket(job.shuffle_bucket, len(names)),
        job.seed,
    )
    col = {n: i for i, n in enumerate(names)}
    ins = [col[x.name] for x in spec.reads]
    outs = [col[x.name] for x in spec.writes]
    s = CLTState(job, reader.widths[ins[0]], reader.widths[outs[0]], device)
    fingerprint = job.fingerprint()
    ckpt = Path(job.checkpoint)
    start = 0
    if ckpt.exists():
        held = torch.load(ckpt, weights_only=True, map_location="cpu")
        if held.get("job") == fingerprint:
            start = s.load(held)
        else:
            log.warning("%s was written for another training config: afresh", ckpt)
    out_dir = Path(job.out_dir(spec))
    log_path = paths.sae_file(out_dir, "log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    truncate_log(log_path, start)
    if start:
        log.info("resuming %s from step %d", spec.path, start)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    handlers = {
        q: signal.signal(q, on_signal) for q in (signal.SIGTERM, signal.SIGUSR1)
    }
    total = s.schedule.total_steps
    bar = tqdm(
        mininterval=progress_interval(),
        total=total * cfg.batch_size,
        initial=start * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        desc=spec.path,
    )
    stats: dict[str, Any] = {}
    try:
        with open(log_path, "a") as f:
            for step in range(start, total):
                parts = reader.split(reader.batch(step))
                x = torch.stack([parts[i] for i in ins], dim=1).to(device)
                y = torch.stack([parts[i] for i in outs], dim=1).to(device)
                stats = clt_step(s, x, y, step, cfg)
                if not math.isfinite(stats["loss"]):
                    raise RuntimeError(
                        f"non-finite loss {stats['loss']} at step {step} for "
                        f"{spec.path}; lower train.lr or set train.max_grad_norm"
                    )
                if step % cfg.log_every == 0 or step == total - 1:
                    f.write(json.dumps(stats) + "\n")
                    f.flush()
                bar.set_postfix(l0=f"{stats['l0']:.1f}", fvu=f"{stats['fvu']:.3f}")
                bar.update(cfg.batch_size)
                done = step + 1
                if done == total:
                    break
                stopping = stop["signal"] is not None or bool(stop_at and stop_at(done))
                if stopping or done % cfg.checkpoint_every == 0:
                    with atomic_path(ckpt) as tmp:
                        torch.save(s.state(done, fingerprint), tmp)
                    if stopping:
                        log.warning("checkpoint at step %d; exiting %d", done, 75)
                        raise Preempted()
    finally:
        bar.close()
        for q, h in handlers.items():
            signal.signal(q, h)
    for w in health_warnings(spec.width * len(ins), stats.get("dead", 0)):
        log.warning("%s: %s at the end of training", spec.path, w)
    info = write_clt_outputs(s, job, scale, reader.n_valid, stats)
    remove_checkpoint(ckpt)
    return info


def write_clt_outputs(
    s: CLTState,
    job: TrainJob,
    scale: dict[str, float],
    n_valid: int,
    last: dict[str, Any],
) -> dict[str, Any]:
    """The folder of a trained CLT: its state as trained, its weights with each
    site's scalar folded in, and its record."""
    spec = s.spec
    out = Path(job.out_dir(spec))
    clt = s.clt.to("cpu")
    with atomic_path(paths.sae_file(out, "state")) as tmp:
        save_file({k: v.contiguous() for k, v in clt.state_dict().items()}, str(tmp))
    c_in = [scale[x.name] for x in spec.reads]
    c_out = [scale[x.name] for x in spec.writes]
    clt.fold_normalization(c_in, c_out)
    with atomic_path(paths.sae_file(out, "weights")) as tmp:
        save_file({k: v.contiguous() for k, v in clt.state_dict().items()}, str(tmp))
    sched = s.schedule
    info = {
        **job.identity,
        "config_hash": job.config_hash,
        "dictionary": spec.kind,
        **spec.to_dict(),
        "layers": list(spec.layers),
        "path": spec.path,
        "penalty": spec.penalty,
        "value": spec.value,
        "d_in": clt.d_in,
        "d_out": clt.d_out,
        "steps": sched.total_steps,
        "train": job.train.to_dict(),
        "seed": job.seed,
        "normalization_scale": c_in,
        "target_normalization_scale": c_out,
        "final": {k: last.get(k) for k in ("l0_by_layer", "fvu_by_layer", "dead")},
        "cache_tokens": n_valid,
        "epochs": sched.total_steps * job.train.batch_size / n_valid,
        "versions": versions(),
    }
    write_json(paths.sae_file(out, "info"), info)
    return info


def load_clt(sae_dir: str | Path) -> CrossLayerTranscoder:
    """A trained CLT's weights in raw units (`sae.safetensors`) from its folder."""
    state = load_file(paths.sae_file(sae_dir, "weights"))
    L, d_in, width = state["W_enc"].shape
    clt = CrossLayerTranscoder(L, d_in, width, state["b_dec"].shape[1])
    clt.load_state_dict(state)
    clt.bandwidth = read_json(paths.sae_file(sae_dir, "info"))["train"]["bandwidth"]
    return clt.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", required=True, help="job JSON written by rule train_clt")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=[OwnLineHandler(sys.stderr)],
    )
    train_clt(TrainJob.from_dict(read_json(args.job)))


if __name__ == "__main__":
    sys.exit(main())
