"""Evaluation metrics of SAEs (the `evaluate` rule's core).

Per SAE: L0, MSE, FVU (Σ‖x − x̂‖² / Σ‖x − mean x‖² over all evaluation tokens), mean
cosine similarity, next-token loss with the reconstruction spliced in at its site
(delta loss against the clean pass), the loss with the site zero-ablated and the
fraction of loss recovered, the KL divergence from the clean next-token distribution,
latent firing frequencies (dead latents, latents firing on > 10 % of tokens, a
log10-frequency histogram), and reconstruction and delta loss by position.

Masking: positions whose mask is False (BOS, EOS, pad, chat user prefix) keep their
clean activation in every spliced pass and leave every mean; a next-token prediction
counts only where both its input and its target position are unmasked.

Cost: the language-model head dominates small models (~3× the body of gemma-3-270m),
so the loss metrics run on the first `loss_sequences` sequences and the
reconstruction metrics, which need no head, on all of them. Per batch of loss
sequences the clean pass runs once and is shared by every SAE; each zero-ablated
(per site) and spliced (per SAE) pass replays the clean output of the layer before
its site and computes only the layers from the site on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from saesuite.cluster.resources import GPU_HEADROOM, fit_groups
from saesuite.data.logs import progress_interval
from saesuite.data.models import load_model
from saesuite.data.sites import (
    capture,
    layer_outputs,
    logits_from,
    site_hooks,
    site_width,
)
from saesuite.data.tokens import load_tokens
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec import paths
from saesuite.spec.io import atomic_path, versions, write_json
from saesuite.spec.jobs import EvalJob
from saesuite.spec.metrics import DENSE_FREQUENCY, health_warnings, scalar_metrics
from saesuite.spec.sections import EvaluateConfig
from saesuite.spec.sites import Site

ENCODE_BYTES = 2**31  # work tensors while encoding one SAE's batch
HIST_EDGES = np.linspace(-10.0, 0.0, 41)  # log10 frequency, 0.25 wide
log = logging.getLogger(__name__)


@dataclass
class Accumulator:
    """Running sums for one SAE (float64 where they grow large)."""

    d_in: int
    d_sae: int
    ctx: int
    n: int = 0
    l0: float = 0.0
    err: float = 0.0
    sq: float = 0.0
    cos: float = 0.0
    n_pred: int = 0
    loss: float = 0.0
    clean: float = 0.0
    zero: float = 0.0
    kl: float = 0.0
    total: torch.Tensor = field(init=False)
    fired: torch.Tensor = field(init=False)
    pos_err: torch.Tensor = field(init=False)
    pos_n: torch.Tensor = field(init=False)
    pos_delta: torch.Tensor = field(init=False)
    pos_pred: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.d_in, dtype=torch.float64)
        self.fired = torch.zeros(self.d_sae, dtype=torch.int64)
        self.pos_err = torch.zeros(self.ctx, dtype=torch.float64)
        self.pos_n = torch.zeros(self.ctx, dtype=torch.int64)
        self.pos_delta = torch.zeros(self.ctx, dtype=torch.float64)
        self.pos_pred = torch.zeros(self.ctx, dtype=torch.int64)

    def add_reconstruction(
        self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, m: torch.Tensor
    ) -> None:
        xs, xh, fs = x[m].double(), x_hat[m].double(), f[m]
        pos = torch.arange(self.ctx, device=m.device).expand_as(m)[m].cpu()
        err_tok = (xs - xh).pow(2).sum(-1)
        self.n += len(xs)
        self.l0 += float((fs != 0).sum())
        self.err += float(err_tok.sum())
        self.sq += float(xs.pow(2).sum())
        self.total += xs.sum(0).cpu()
        self.cos += float(F.cosine_similarity(xs, xh, dim=-1).sum())
        self.fired += (fs != 0).sum(0).cpu()
        self.pos_err.index_add_(0, pos, err_tok.cpu())
        self.pos_n.index_add_(0, pos, torch.ones_like(pos))

    def add_loss(
        self,
        pred: torch.Tensor,
        loss: torch.Tensor,
        clean: torch.Tensor,
        zero: torch.Tensor,
        kl: torch.Tensor,
    ) -> None:
        self.n_pred += int(pred.sum())
        self.loss += float(loss[pred].double().sum())
        self.clean += float(clean[pred].double().sum())
        self.zero += float(zero[pred].double().sum())
        self.kl += float(kl[pred].double().sum())
        pos = torch.arange(self.ctx - 1, device=pred.device).expand_as(pred)[pred].cpu()
        self.pos_delta.index_add_(0, pos, (loss - clean)[pred].double().cpu())
        self.pos_pred.index_add_(0, pos, torch.ones_like(pos))

    def frequencies(self) -> torch.Tensor:
        """Share of evaluation tokens each latent fired on."""
        return self.fired.double() / max(self.n, 1)

    def metrics(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no unmasked evaluation tokens")
        mean = self.total / self.n
        var = self.sq - self.n * float(mean.pow(2).sum())
        freq = self.frequencies()
        live = freq[freq > 0].log10().numpy()
        counts, _ = np.histogram(live, bins=HIST_EDGES)
        out: dict[str, Any] = {
            "tokens": self.n,
            "l0": self.l0 / self.n,
            "mse": self.err / self.n,
            "fvu": self.err / var,
            "cosine": self.cos / self.n,
            "dead": int((self.fired == 0).sum()),
            "dense_latents": int((freq > DENSE_FREQUENCY).sum()),
            "log10_frequency_histogram": {
                "edges": HIST_EDGES.tolist(),
                "counts": counts.tolist(),
                "below_range": int((live < HIST_EDGES[0]).sum()),
            },
            "mse_by_position": (self.pos_err / self.pos_n.clamp_min(1)).tolist(),
            "loss_tokens": self.n_pred,
        }
        if self.n_pred == 0:
            return out
        clean, loss, zero = (
            v / self.n_pred for v in (self.clean, self.loss, self.zero)
        )
        recovered = (zero - loss) / (zero - clean) if zero != clean else 1.0
        return {
            **out,
            "clean_loss": clean,
            "spliced_loss": loss,
            "delta_loss": loss - clean,
            "zero_ablation_loss": zero,
            "loss_recovered": recovered,
            "kl": self.kl / self.n_pred,
            "delta_loss_by_position": (
                self.pos_delta / self.pos_pred.clamp_min(1)
            ).tolist(),
        }


class NextToken:
    """Next-token statistics of one pass's logits (B, T, V), computed without any
    further (B, T, V) temporary: over a 262k vocabulary those passes over memory,
    not the head's matmul, would dominate the cost of a spliced pass."""

    def __init__(self, logits: torch.Tensor, ids: torch.Tensor) -> None:
        self.logits = logits.float()
        self.lse = torch.logsumexp(self.logits, -1)  # (B, T)
        target = self.logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        self.loss = self.lse[:, :-1] - target  # cross-entropy, (B, T−1)

    def log_probs(self) -> torch.Tensor:
        """log q = logits − lse, in place: the logits are used up."""
        logq = self.logits.sub_(self.lse[..., None])
        del self.logits
        return logq

    def as_reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This (clean) pass as the reference of KLs: p (B, T, V) and Σ p log p
        (B, T); uses up the logits."""
        logp = self.log_probs()
        p = logp.exp()
        return p, _dot(p, logp)

    def kl_from(self, p: torch.Tensor, neg_entropy: torch.Tensor) -> torch.Tensor:
        """KL(p ‖ q) = Σ p log p − Σ p log q, with q this pass's distribution and p
        a clean one (`as_reference`); (B, T−1). Both sums are over the same float32
        p, so KL(p ‖ p) is exactly 0: the older Σ p·logits − lse took Σ p as 1,
        while in float32 over 262,144 entries it is not, and read 2.5e-3 nats high.
        Uses up the logits."""
        return (neg_entropy - _dot(p, self.log_probs()))[:, :-1]


def _dot(p: torch.Tensor, logq: torch.Tensor, block: int = 1 << 24) -> torch.Tensor:
    """Σ_v p·log q over the last axis of two (B, T, V) float32 tensors, summed in
    float64 (float32 sums over 262,144 entries put 2.6e-5 nats of error in a KL of
    1e-3; float64 leaves the inputs' own rounding, 3e-6), a block of rows at a time
    so the float64 copies stay under `block` elements."""
    B, T, V = p.shape
    p, logq = p.view(B * T, 1, V), logq.view(B * T, V, 1)
    rows = max(1, block // V)
    out = [
        torch.bmm(p[i : i + rows].double(), logq[i : i + rows].double())
        for i in range(0, B * T, rows)
    ]
    return torch.cat(out).view(B, T)


def _reconstruct(
    sae: JumpReLUSAE,
    x: torch.Tensor,
    m: torch.Tensor,
    acc: Accumulator,
    encode_bytes: int,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """x̂ of a batch (B, T, d), its reconstruction metrics added to `acc`; for a
    transcoder, its prediction ŷ of the target batch `y` from x. Encoded a few
    sequences at a time: (rows, T, width) pre-activations, mask and latents of a
    2^20-latent SAE take 12 GB per 1,024 tokens."""
    y = x if y is None else y
    rows = max(1, encode_bytes // (3 * 4 * x.shape[1] * sae.d_sae))
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), rows):
            xi = x[i : i + rows].to(sae.W_enc.dtype)
            f = sae.encode(xi)
            x_hat = sae.decode(f, xi).to(y.dtype)
            acc.add_reconstruction(y[i : i + rows], x_hat, f, m[i : i + rows])
            parts.append(x_hat)
    return torch.cat(parts)


Entry = tuple[Site, JumpReLUSAE] | tuple[Site, Site, JumpReLUSAE]


def _entry(e: Entry) -> tuple[Site, Site, JumpReLUSAE]:
    """(input site, output site, dictionary): an SAE's two sites are one."""
    return (e[0], e[0], e[1]) if len(e) == 2 else e


def evaluate(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    saes: dict[str, Entry],
    *,
    batch_size: int = 8,
    loss_sequences: int | None = None,
    loss_batch_size: int = 2,
    progress: Any = None,
    resume: bool = True,
    encode_bytes: int = ENCODE_BYTES,
) -> dict[str, Accumulator]:
    """Accumulated metrics of every SAE in `saes` ({key: (site, released SAE on raw
    input)}, or for a transcoder {key: (input site, output site, released
    transcoder)}: encoded at its input, spliced in at its output) on sequences `ids`
    (N, T) with `mask` (N, T): reconstruction on all N, loss on the first
    `loss_sequences` (None = all). `progress(n)` is told of every
    finished batch of n sequences. `resume=False` recomputes the layers before
    each site in its spliced passes (for benchmarks). `encode_bytes` bounds the
    work tensors of encoding (`_reconstruct`)."""
    n_seq, ctx = ids.shape
    n_loss = n_seq if loss_sequences is None else min(loss_sequences, n_seq)
    entries = {k: _entry(e) for k, e in saes.items()}
    sites = sorted({s for i, o, _ in entries.values() for s in (i, o)})
    spliced_at = sorted({o for _, o, _ in entries.values()})
    acc = {k: Accumulator(s.d_out, s.d_sae, ctx) for k, (_, _, s) in entries.items()}
    device = next(model.parameters()).device
    resume_layers = sorted({s.layer - 1 for s in spliced_at if s.layer > 0 and resume})

    def after(site: Site, kept: dict[int, Any]) -> tuple[int, Any] | None:
        return (
            (site.layer - 1, kept[site.layer - 1]) if site.layer - 1 in kept else None
        )

    for b0 in range(0, n_loss, loss_batch_size):
        x_ids = ids[b0 : b0 + loss_batch_size].long().to(device)
        m = mask[b0 : b0 + loss_batch_size].to(device)
        pred = m[:, :-1] & m[:, 1:]  # (B, T−1): input and target both unmasked
        captured: dict[Site, torch.Tensor] = {}
        kept: dict[int, Any] = {}
        with (
            torch.no_grad(),
            site_hooks(model, sites, captured=captured),
            layer_outputs(model, resume_layers, kept),
        ):
            clean = NextToken(model(input_ids=x_ids, use_cache=False).logits, x_ids)
        # The clean distribution p and Σ p log p, kept for every SAE's KL.
        p, neg_entropy = clean.as_reference()

        def masked(new: torch.Tensor):
            def replace(_s: Site, act: torch.Tensor) -> torch.Tensor:
                return torch.where(m[..., None], new.to(act.dtype), act)

            return replace

        zero_loss = {
            site: NextToken(
                logits_from(
                    model,
                    x_ids,
                    [site],
                    masked(torch.zeros_like(captured[site])),
                    after(site, kept),
                ),
                x_ids,
            ).loss
            for site in spliced_at
        }
        for key, (site_in, site, sae) in entries.items():
            x_hat = _reconstruct(
                sae, captured[site_in], m, acc[key], encode_bytes, captured[site]
            )
            spliced = NextToken(
                logits_from(model, x_ids, [site], masked(x_hat), after(site, kept)),
                x_ids,
            )
            kl = spliced.kl_from(p, neg_entropy)
            acc[key].add_loss(pred, spliced.loss, clean.loss, zero_loss[site], kl)
            del spliced
        if progress:
            progress(len(x_ids))

    for b0 in range(n_loss, n_seq, batch_size):
        x_ids = ids[b0 : b0 + batch_size].long().to(device)
        m = mask[b0 : b0 + batch_size].to(device)
        captured = capture(model, x_ids, sites)
        for key, (site_in, site, sae) in entries.items():
            _reconstruct(
                sae, captured[site_in], m, acc[key], encode_bytes, captured[site]
            )
        if progress:
            progress(len(x_ids))
    return acc


def load_released(sae_dir: str | Path) -> JumpReLUSAE:
    """A trained SAE as released (folded: it takes raw activations)."""
    return JumpReLUSAE.from_release(load_file(str(paths.sae_file(sae_dir, "weights"))))


def released_shape(sae_dir: str | Path) -> tuple[int, int]:
    """(d_in, d_sae) of a released SAE, read from its header only."""
    with safe_open(str(paths.sae_file(sae_dir, "weights")), "pt") as f:
        d_in, d_sae = f.get_slice("W_enc").get_shape()
    return d_in, d_sae


def released_bytes(sae_dir: str | Path) -> int:
    """Bytes of a released dictionary's tensors (a skip-transcoder's W_skip too), read
    from its header only."""
    with safe_open(str(paths.sae_file(sae_dir, "weights")), "pt") as f:
        return sum(4 * math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def device_sae_budget(model: torch.nn.Module, ev: EvaluateConfig, ctx: int):
    """Bytes of SAE weights one pass may hold on the model's GPU (None on CPU): what
    the GPU has after the model, less the work of encoding and the head's logits."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    vocab = model.config.vocab_size
    logits = 3 * ev.loss_batch_size * ctx * vocab * 4  # clean, spliced, p
    work = ENCODE_BYTES + logits
    return max(0.0, GPU_HEADROOM * total - torch.cuda.memory_allocated(device) - work)


def evaluate_layer(
    job: EvalJob,
    *,
    data_path: str | Path,
    cache_root: str | Path,
    out: str | Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rule `evaluate`: every SAE of one layer on one model and data set. Writes a
    JSON and a per-latent frequency file per SAE, then the layer summary `out`.
    Each dictionary is encoded at its input site and spliced in at its output site:
    an SAE's two sites are one; a transcoder reads an MLP's input and predicts its
    output (spec.dictionary.KINDS), its metrics those of the prediction.

    On a GPU the SAEs are loaded and evaluated in groups whose weights fit beside the
    model (`job.group_bytes` overrides the budget); each group repeats the clean
    passes, which gives the same metrics as one group."""
    ev = job.evaluate
    ids, mask = load_tokens(data_path)
    ctx = ids.shape[1]
    n_seq = len(ids) if ev.tokens is None else max(1, ev.tokens // ctx)
    n_loss = n_seq if ev.loss_tokens is None else max(1, ev.loss_tokens // ctx)
    ids, mask = ids[:n_seq], mask[:n_seq]
    shapes = [released_shape(s.dir) for s in job.members]
    model = load_model(job.model_cfg, cache_root)
    for s, (d_in, _) in zip(job.members, shapes):
        site = s.dictionary.input_site
        want = site_width(model, site.kind)
        if d_in != want:
            raise ValueError(
                f"SAE {s.key} has d_in {d_in}, but site {site.name} of model "
                f"'{job.evaluated_on}' is {want} wide: the two models "
                "differ in shape; pair only models of one architecture (models.*.base)"
            )
    device = next(model.parameters()).device
    budget = job.group_bytes or device_sae_budget(model, ev, ctx)
    groups = fit_groups([released_bytes(s.dir) for s in job.members], budget)
    acc: dict[str, Accumulator] = {}
    start = time.perf_counter()
    with tqdm(
        total=n_seq * len(groups),
        unit="seq",
        desc="evaluate",
        mininterval=progress_interval(),
    ) as bar:
        for g in groups:
            members = [job.members[i] for i in g]
            saes = {
                m.key: (
                    m.dictionary.input_site,
                    m.dictionary.output_site,
                    load_released(m.dir).to(device),
                )
                for m in members
            }
            acc.update(
                evaluate(
                    model,
                    ids,
                    mask,
                    saes,
                    batch_size=ev.batch_size,
                    loss_sequences=n_loss,
                    loss_batch_size=ev.loss_batch_size,
                    progress=bar.update,
                )
            )
            del saes
    elapsed = time.perf_counter() - start
    meta = {**(extra or {}), "data_path": str(data_path)}
    summary = []
    for s in job.members:
        metrics = acc[s.key].metrics()
        freq = acc[s.key].frequencies().float()
        with atomic_path(paths.frequencies(s.out)) as tmp:
            save_file({"frequency": freq}, str(tmp))
        evaluation = {**job.evaluation(s), **meta}
        write_json(
            s.out,
            {"identity": s.identity, "evaluation": evaluation, "metrics": metrics},
        )
        summary.append(
            {
                "key": s.key,
                "path": s.dictionary.path,
                "trained_on": s.dictionary.model,
                "json": s.out,
                **scalar_metrics(metrics),
            }
        )
        d_sae = shapes[job.members.index(s)][1]
        for w in health_warnings(d_sae, metrics["dead"], metrics.get("loss_recovered")):
            log.warning("%s on %s: %s", s.key, job.evaluated_on, w)
    log.info(
        "%d SAEs in %d group(s) on %d sequences (%d with loss metrics) in %.1f s",
        len(job.members),
        len(groups),
        n_seq,
        min(n_loss, n_seq),
        elapsed,
    )
    result = {
        "evaluated_on": job.evaluated_on,
        "data": job.data,
        **meta,
        "versions": versions(),
        "saes": summary,
    }
    write_json(out, result)
    return result
