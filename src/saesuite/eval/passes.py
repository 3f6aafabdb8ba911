"""Evaluation metrics of SAEs and the passes that measure them (the `evaluate` rule's
core, run by `eval.evaluate.evaluate_layer`).

Per SAE: L0, MSE, FVU (Σ‖x − x̂‖² / Σ‖x − mean x‖² over all evaluation tokens), mean
cosine similarity, next-token loss with the reconstruction spliced in at its site
(delta loss against the clean pass), the loss with the site zero-ablated and the
fraction of loss recovered, the KL divergence from the clean next-token distribution,
latent firing frequencies (dead latents, latents firing on > 10 % of tokens, a
log10-frequency histogram), and reconstruction and delta loss by position.

Masking: positions whose mask is False (BOS, EOS, pad, chat user prefix) keep their
clean activation in every spliced pass and leave every mean; a next-token prediction
counts only where both its input and its target position are unmasked. A dictionary
trained without its site's outlier tokens (`sae.outliers`: attention sinks) is
evaluated without them the same way, per batch of sequences: they keep their clean
activation in its spliced pass and leave its reconstruction metrics, which report how
many there were and the FVU with them counted (`fvu_with_outliers`). Its loss tokens
stay every SAE's: the predictions at and after a sink still see the splice elsewhere.

Cost: the language-model head dominates small models (~3× the body of gemma-3-270m),
so the loss metrics run on the first `loss_sequences` sequences and the
reconstruction metrics, which need no head, on all of them. Per batch of loss
sequences the clean pass runs once and is shared by every SAE; each zero-ablated
(per site) and spliced (per SAE) pass replays the clean output of the layer before
its site and computes only the layers from the site on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from saesuite.data.sites import (
    capture,
    layer_outputs,
    logits_from,
    site_hooks,
)
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.sae.outliers import norm_outliers
from saesuite.spec.metrics import DENSE_FREQUENCY
from saesuite.spec.sites import Site
from saesuite.spec.sizes import ENCODE_BYTES, KL_BLOCK

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
    o_n: int = 0  # outlier tokens: left out of the metrics above, counted here
    o_err: float = 0.0
    o_sq: float = 0.0
    o_total: torch.Tensor = field(init=False)
    total: torch.Tensor = field(init=False)
    fired: torch.Tensor = field(init=False)
    pos_err: torch.Tensor = field(init=False)
    pos_n: torch.Tensor = field(init=False)
    pos_delta: torch.Tensor = field(init=False)
    pos_pred: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.d_in, dtype=torch.float64)
        self.o_total = torch.zeros(self.d_in, dtype=torch.float64)
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

    def add_outliers(
        self, x: torch.Tensor, x_hat: torch.Tensor, o: torch.Tensor
    ) -> None:
        """Outlier tokens `o` (B, T): only their count and their part of the FVU
        with them counted."""
        xs, xh = x[o].double(), x_hat[o].double()
        self.o_n += len(xs)
        self.o_err += float((xs - xh).pow(2).sum())
        self.o_sq += float(xs.pow(2).sum())
        self.o_total += xs.sum(0).cpu()

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

    def _fvu_with_outliers(self) -> float:
        n = self.n + self.o_n
        mean = (self.total + self.o_total) / n
        var = self.sq + self.o_sq - n * float(mean.pow(2).sum())
        return (self.err + self.o_err) / var

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
            "outlier_tokens": self.o_n,
            "fvu_with_outliers": self._fvu_with_outliers(),
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


def _dot(p: torch.Tensor, logq: torch.Tensor, block: int = KL_BLOCK) -> torch.Tensor:
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
    o: torch.Tensor | None = None,
) -> torch.Tensor:
    """x̂ of a batch (B, T, d), its reconstruction metrics on the tokens of mask `m`
    added to `acc`, and those of outlier tokens `o` (B, T) apart; for a
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
            if o is not None:
                acc.add_outliers(y[i : i + rows], x_hat, o[i : i + rows])
            parts.append(x_hat)
    return torch.cat(parts)


Entry = tuple[Site, JumpReLUSAE] | tuple[Site, Site, JumpReLUSAE]


def outlier_split(
    m: torch.Tensor, x: torch.Tensor, y: torch.Tensor, multiple: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the tokens a dictionary is scored and spliced on, its outlier tokens) of a
    batch with mask `m`: where its input `x` or its target `y` is an outlier
    (`sae.outliers.norm_outliers`), as training left them out; `multiple` None:
    (m, None)."""
    if not multiple:
        return m, None
    o = norm_outliers(x, multiple, m)
    if y is not x:  # a transcoder's target: an SAE's is its input
        o |= norm_outliers(y, multiple, m)
    return m & ~o, o


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
    max_norm_multiple: dict[str, float | None] | None = None,
) -> dict[str, Accumulator]:
    """Accumulated metrics of every SAE in `saes` ({key: (site, released SAE on raw
    input)}, or for a transcoder {key: (input site, output site, released
    transcoder)}: encoded at its input, spliced in at its output) on sequences `ids`
    (N, T) with `mask` (N, T): reconstruction on all N, loss on the first
    `loss_sequences` (None = all). `progress(n)` is told of every
    finished batch of n sequences. `resume=False` recomputes the layers before
    each site in its spliced passes (for benchmarks). `encode_bytes` bounds the
    work tensors of encoding (`_reconstruct`). `max_norm_multiple` ({key:
    multiple}) leaves a dictionary's outlier tokens out as BOS is (`outlier_split`).

    Longer than 80 lines on purpose: per batch the clean pass, each site's
    zero-ablation and each dictionary's spliced pass share the kept layer outputs and
    the clean logits, held for that batch only."""
    n_seq, ctx = ids.shape
    n_loss = n_seq if loss_sequences is None else min(loss_sequences, n_seq)
    entries = {k: _entry(e) for k, e in saes.items()}
    sites = sorted({s for i, o, _ in entries.values() for s in (i, o)})
    spliced_at = sorted({o for _, o, _ in entries.values()})
    acc = {k: Accumulator(s.d_out, s.d_sae, ctx) for k, (_, _, s) in entries.items()}
    multiple = max_norm_multiple or {}
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

        def masked(new: torch.Tensor, where: torch.Tensor = m):
            def replace(_s: Site, act: torch.Tensor) -> torch.Tensor:
                return torch.where(where[..., None], new.to(act.dtype), act)

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
            x, y = captured[site_in], captured[site]
            m_e, o = outlier_split(m, x, y, multiple.get(key))
            x_hat = _reconstruct(sae, x, m_e, acc[key], encode_bytes, y, o)
            spliced = NextToken(
                logits_from(
                    model, x_ids, [site], masked(x_hat, m_e), after(site, kept)
                ),
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
            x, y = captured[site_in], captured[site]
            m_e, o = outlier_split(m, x, y, multiple.get(key))
            _reconstruct(sae, x, m_e, acc[key], encode_bytes, y, o)
        if progress:
            progress(len(x_ids))
    return acc
