"""One dictionary of a train job with its optimiser, schedule and counters, and its
training step (`train_step`): what the loop in `saesuite.sae.train` runs for each
dictionary on each batch, and what benchmarks and tests call directly.

Schedule (Gemma Scope 1): Adam(β1=0, β2=0.999), lr warmed up along a cosine from
0.1·lr to lr, λ warmed up linearly from 0; both warm-ups are capped at a share of the
run so short runs still train (config `train`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms, prefix_ends
from saesuite.sae.outliers import drop_outliers
from saesuite.sae.shard import (
    all_reduce_,
    clip_grad_norm_,
)
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.hashing import derived_seed
from saesuite.spec.metrics import DENSE_FREQUENCY
from saesuite.spec.sections import TrainConfig

# device types with torch's fused Adam kernel
FUSED_ADAM_DEVICES = ("cpu", "cuda")


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
        self,
        spec: Dictionary,
        d_in: int,
        cfg: TrainConfig,
        seed: int,
        device: str,
        latents: tuple[int, int] | None = None,
        d_out: int | None = None,
        out_dir: str = "",
    ):
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


def _reduce_grads(sae: JumpReLUSAE, world: int) -> None:
    if world == 1:
        return
    for p in sae.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


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


def global_fvu(reconstruction: float, y: torch.Tensor) -> float:
    """The FVU of the global batch of a data-parallel step, Σ‖y − ŷ‖² / Σ‖y − ȳ‖²
    with ȳ the mean over every process's rows (not the mean of the processes' FVUs,
    each about its own rows' mean). `reconstruction`: this process's mean ‖y − ŷ‖²."""
    n = y.shape[0]
    y64 = y.detach().double()
    head = torch.tensor(
        [reconstruction * n, float(y64.pow(2).sum()), n], dtype=torch.float64
    )
    buf = torch.cat([head, y64.sum(0).cpu()])
    dist.all_reduce(buf)
    err, total_sq, count = buf[:3].tolist()
    spread = total_sq - float(buf[3:].pow(2).sum()) / count
    return err / max(spread, 1e-30)


def _total(n: int, world: int, sharded: bool) -> int:
    """A count over every process's share of the batch (sharded: each has it all)."""
    if world == 1 or sharded:
        return n
    t = torch.tensor([n], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t)


def train_step(
    m: Member,
    x: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    world: int,
    target: torch.Tensor | None = None,
) -> dict:
    """One optimiser step of `m` on batch x (and a transcoder's target batch).
    Longer than 80 lines on purpose: it reads top to bottom as the order a resumed or
    sharded run must repeat bit for bit (statistics, their reduction over processes,
    gradients, clipping, Adam, the decoder projection, θ's clamp, the counters)."""
    spec, sched = m.spec, m.schedule
    dropped = 0
    if cfg.max_norm_multiple:
        x, target, dropped = drop_outliers(
            x, target, cfg.max_norm_multiple, cfg.outlier_mode
        )
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
    terms = LossTerms(
        penalty=spec.penalty,
        lambda_=lambda_,
        target_l0=spec.target_l0,
        frequency_coefficient=mu,
        max_frequency=cfg.max_frequency,
        prefixes=m.prefixes,
        pre_act_coefficient=cfg.pre_act_coefficient,
        sharded=m.sharded,
    )
    dead = None if dead is None else dead.to(x.device)
    stats = fn(m.sae, x, terms, target=target, dead=dead)
    counts = stats.counts
    loss, l0, fvu, recon = stats.loss, stats.l0, stats.fvu, stats.reconstruction
    if world > 1 and not m.sharded:  # sharded: every process has the whole sums
        buf = torch.tensor([loss, l0, recon], dtype=torch.float64)
        dist.all_reduce(buf)
        loss, l0, recon = (buf / world).tolist()
        fvu = global_fvu(stats.reconstruction, x if target is None else target)
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
    } | (
        {"outliers": _total(dropped, world, m.sharded)} if cfg.max_norm_multiple else {}
    )
