"""Evaluation metrics of SAEs on the held-out split (issue 4, first increment: the
metric core, not yet the rule).

Per SAE: L0, MSE, FVU (Σ‖x − x̂‖² / Σ‖x − mean x‖² over all evaluation tokens), mean
cosine similarity, next-token loss with the reconstruction spliced in at its site
(delta loss against the clean pass), the loss with the site zero-ablated and the
fraction of loss recovered, the KL divergence from the clean next-token distribution,
latent firing counts (dead latents, latents firing on > 10 % of tokens), and
reconstruction and delta loss by position.

Masking: positions whose mask is False (BOS, EOS, pad, chat user prefix) keep their
clean activation in every spliced pass and leave every mean; a next-token prediction
counts only where both its input and its target position are unmasked.
The clean pass runs once per batch and is shared by every SAE; the zero-ablated pass
once per site per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saesuite.config import Site
from saesuite.sae import JumpReLUSAE
from saesuite.sites import logits_with, site_hooks


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
    total: torch.Tensor = field(init=False)
    fired: torch.Tensor = field(init=False)
    pos_err: torch.Tensor = field(init=False)
    pos_n: torch.Tensor = field(init=False)
    n_pred: int = 0
    loss: float = 0.0
    clean: float = 0.0
    zero: float = 0.0
    kl: float = 0.0
    pos_delta: torch.Tensor = field(init=False)
    pos_pred: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.d_in, dtype=torch.float64)
        self.fired = torch.zeros(self.d_sae, dtype=torch.int64)
        self.pos_err = torch.zeros(self.ctx, dtype=torch.float64)
        self.pos_n = torch.zeros(self.ctx, dtype=torch.int64)
        self.pos_delta = torch.zeros(self.ctx, dtype=torch.float64)
        self.pos_pred = torch.zeros(self.ctx, dtype=torch.int64)

    def metrics(self) -> dict[str, object]:
        mean = self.total / self.n
        var = self.sq - self.n * float(mean.pow(2).sum())
        freq = self.fired.double() / self.n
        clean, loss, zero = (
            v / self.n_pred for v in (self.clean, self.loss, self.zero)
        )
        return {
            "tokens": self.n,
            "l0": self.l0 / self.n,
            "mse": self.err / self.n,
            "fvu": self.err / var,
            "cosine": self.cos / self.n,
            "clean_loss": clean,
            "spliced_loss": loss,
            "delta_loss": loss - clean,
            "zero_ablation_loss": zero,
            "loss_recovered": (zero - loss) / (zero - clean) if zero != clean else 1.0,
            "kl": self.kl / self.n_pred,
            "dead": int((self.fired == 0).sum()),
            "dense_latents": int((freq > 0.1).sum()),
            "log10_frequency": torch.log10(freq.clamp_min(1e-10)).tolist(),
            "mse_by_position": (self.pos_err / self.pos_n.clamp_min(1)).tolist(),
            "delta_loss_by_position": (
                self.pos_delta / self.pos_pred.clamp_min(1)
            ).tolist(),
        }


def _token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (B, T−1)."""
    B, T, V = logits.shape
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="none"
    ).view(B, T - 1)


def evaluate(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    saes: dict[str, tuple[Site, JumpReLUSAE]],
    batch_size: int = 2,
) -> dict[str, dict[str, object]]:
    """Metrics for every SAE in `saes` ({key: (site, released SAE on raw input)}) on
    sequences `ids` (N, T) with `mask` (N, T)."""
    ctx = ids.shape[1]
    sites = sorted({site for site, _ in saes.values()})
    acc = {k: Accumulator(s.d_in, s.d_sae, ctx) for k, (_, s) in saes.items()}
    device = next(model.parameters()).device
    for b0 in range(0, len(ids), batch_size):
        x_ids = ids[b0 : b0 + batch_size].long().to(device)
        m = mask[b0 : b0 + batch_size].to(device)
        pred = m[:, :-1] & m[:, 1:]  # (B, T−1): input and target both unmasked
        captured: dict[Site, torch.Tensor] = {}
        with torch.no_grad(), site_hooks(model, sites, captured=captured):
            clean_logits = model(input_ids=x_ids, use_cache=False).logits
        clean_loss = _token_loss(clean_logits, x_ids)
        clean_logp = clean_logits[:, :-1].float().log_softmax(-1)
        del clean_logits
        zero_loss = {}
        for site in sites:

            def zero(s: Site, x: torch.Tensor) -> torch.Tensor:
                return torch.where(m[..., None], torch.zeros_like(x), x)

            zero_loss[site] = _token_loss(
                logits_with(model, x_ids, [site], zero), x_ids
            )

        for key, (site, sae) in saes.items():
            a = acc[key]
            x = captured[site]
            with torch.no_grad():
                f = sae.encode(x)
                x_hat = sae.decode(f)
            xs, xh, fs = x[m].double(), x_hat[m].double(), f[m]
            a.n += len(xs)
            a.l0 += float((fs != 0).sum())
            err_tok = (xs - xh).pow(2).sum(-1)
            a.err += float(err_tok.sum())
            a.sq += float(xs.pow(2).sum())
            a.total += xs.sum(0).cpu()
            a.cos += float(F.cosine_similarity(xs, xh, dim=-1).sum())
            a.fired += (fs != 0).sum(0).cpu()
            pos = torch.arange(ctx, device=device).expand_as(m)[m]
            a.pos_err.index_add_(0, pos.cpu(), err_tok.cpu())
            a.pos_n.index_add_(0, pos.cpu(), torch.ones_like(pos.cpu()))

            def splice(s: Site, act: torch.Tensor, x_hat=x_hat) -> torch.Tensor:
                return torch.where(m[..., None], x_hat.to(act.dtype), act)

            logits = logits_with(model, x_ids, [site], splice)
            loss = _token_loss(logits, x_ids)
            logq = logits[:, :-1].float().log_softmax(-1)
            kl = (clean_logp.exp() * (clean_logp - logq)).sum(-1)
            del logits, logq
            a.n_pred += int(pred.sum())
            a.loss += float(loss[pred].double().sum())
            a.clean += float(clean_loss[pred].double().sum())
            a.zero += float(zero_loss[site][pred].double().sum())
            a.kl += float(kl[pred].double().sum())
            ppos = torch.arange(ctx - 1, device=device).expand_as(pred)[pred].cpu()
            a.pos_delta.index_add_(0, ppos, (loss - clean_loss)[pred].double().cpu())
            a.pos_pred.index_add_(0, ppos, torch.ones_like(ppos))
    return {k: a.metrics() for k, a in acc.items()}
