"""One training step's loss and gradients for a JumpReLU SAE, two ways:

- `dense_step`: autograd through `JumpReLUSAE.training_loss` (≈ 10·d·width FLOPs per
  token: encoder, decoder, and three matmuls backward);
- `sparse_step`: the same loss and the same gradients, written out by hand so that
  only active latents take part in decoding and in most of the backward pass. The
  encoder's forward matmul stays dense; decoding, ∂W_dec, ∂f and ∂W_enc run over the
  ~L0 active latents per token through `embedding_bag` (a gather-and-sum kernel), which
  is what makes JumpReLU training cheaper than dense once L0 ≪ width.

Both take the loss's options as one `LossTerms`, and a transcoder too (`target`: the
site it predicts; a skip connection's gradient is one dense matmul). Both fill `.grad`
of the SAE's parameters (accumulating, as autograd does) and return `StepStats`; with
`terms.sharded` the SAE is one process's block of latents (`saesuite.sae.shard`) and
the sums over latents are taken over all processes. Used by `saesuite.sae.train`;
tests check that both give equal gradients.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from saesuite.sae.jumprelu import (
    JumpReLUSAE,
    LossTerms,
    frequency_penalty,
    rectangle,
    sparsity_penalty,
)
from saesuite.sae.shard import all_reduce_

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks")
GATHER_BLOCK = 1 << 15  # active entries per gather-dot block: bounds temporary memory


class StepStats(NamedTuple):
    loss: float
    reconstruction: float  # mean ‖x − x̂‖²
    l0: float  # mean active latents per token
    fvu: float  # Σ‖x − x̂‖² / Σ‖x − mean x‖² over the batch
    counts: torch.Tensor  # (d_sae,) int64: the batch's tokens each latent fires on

    @property
    def fired(self) -> torch.Tensor:
        """(d_sae,) bool: latents active on this batch."""
        return self.counts > 0


def _fvu(err_sq_sum: torch.Tensor, x: torch.Tensor) -> float:
    var = (x - x.mean(0)).pow(2).sum()
    return float(err_sq_sum / var.clamp_min(1e-30))


def dense_step(
    sae: JumpReLUSAE,
    x: torch.Tensor,
    terms: LossTerms,
    *,
    target: torch.Tensor | None = None,
    dead: torch.Tensor | None = None,
) -> StepStats:
    y = x if target is None else target
    out = sae.training_loss(x, terms, target=target, dead=dead)
    out.loss.backward()
    err = (y - out.x_hat).pow(2).sum()
    return StepStats(
        float(out.loss.detach()),
        float(out.reconstruction.detach()),
        float(out.l0),
        _fvu(err, y),
        (out.feature_acts != 0).sum(0),
    )


def _add_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g
    else:
        p.grad += g


def _bag_sum(
    weight: torch.Tensor,
    index: torch.Tensor,
    bag_sizes: torch.Tensor,
    psw: torch.Tensor,
) -> torch.Tensor:
    """out[k] = Σ_{i in bag k} psw[i] · weight[index[i]] (bags are consecutive)."""
    offsets = torch.zeros_like(bag_sizes)
    offsets[1:] = bag_sizes.cumsum(0)[:-1]
    return F.embedding_bag(
        index,
        weight,
        offsets,
        mode="sum",
        per_sample_weights=psw,
        include_last_offset=False,
    )


def _sampled_dot(
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    per_row: torch.Tensor,
) -> torch.Tensor:
    """(a @ bᵀ)[rows, cols] for row-major sorted (rows, cols), computed only there
    (torch's sampled dense-dense matmul on a CSR pattern). The pattern's values must
    be zeros, not uninitialised memory: beta = 0 still multiplies them (0 · NaN)."""
    crow = torch.zeros(a.shape[0] + 1, dtype=torch.int64, device=a.device)
    crow[1:] = per_row.cumsum(0)
    pattern = torch.sparse_csr_tensor(
        crow,
        cols,
        torch.zeros(len(cols), dtype=a.dtype, device=a.device),
        size=(a.shape[0], b.shape[0]),
    )
    return torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()


def _gather_dot(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor):
    """(a[ia] * b[ib]).sum(1), in blocks so the gathered rows stay small."""
    out = torch.empty(len(ia), dtype=a.dtype, device=a.device)
    for s in range(0, len(ia), GATHER_BLOCK):
        e = s + GATHER_BLOCK
        out[s:e] = (a[ia[s:e]] * b[ib[s:e]]).sum(1)
    return out


@torch.no_grad()
def sparse_step(
    sae: JumpReLUSAE,
    x: torch.Tensor,
    terms: LossTerms,
    *,
    target: torch.Tensor | None = None,
    dead: torch.Tensor | None = None,
) -> StepStats:
    """The training step of `dense_step`, its decoder and backward on the active
    latents only. Longer than 80 lines on purpose: one hand-derived backward whose
    intermediates (the active list, the estimator's kernel window, the error) every
    gradient shares; split, they would be recomputed or passed along as a dozen
    tensors."""
    t = terms
    penalty, lambda_, target_l0 = t.penalty, t.lambda_, t.target_l0
    prefixes, mu, max_frequency = t.prefixes, t.frequency_coefficient, t.max_frequency
    pre_act_coefficient = t.pre_act_coefficient
    reduce = all_reduce_ if terms.sharded else (lambda v: v)
    y = x if target is None else target
    B, d_sae = x.shape[0], sae.d_sae
    theta = sae.threshold.detach()
    eps = sae.bandwidth
    xc = x - sae.b_dec if sae.apply_b_dec_to_input else x  # (B, d_in)
    pre = torch.addmm(sae.b_enc, xc, sae.W_enc)  # (B, d_sae): the one dense matmul
    # One pass over (B, d_sae) finds both the active latents and those inside the
    # estimator's kernel window (θ − ε/2, θ + ε/2); the rest works on that list.
    r, c = (pre > theta - eps / 2).nonzero(as_tuple=True)  # row-major
    v = pre[r, c]
    is_active = v > theta[c]
    in_kernel = v < theta[c] + eps / 2
    rows, cols, vals = r[is_active], c[is_active], v[is_active]
    kr, kc, kv = r[in_kernel], c[in_kernel], v[in_kernel]
    l0_tok = torch.bincount(rows, minlength=B)  # (B,) of this module's latents

    # Latents fall in groups [ends[g], ends[g+1]): one for the whole SAE, or the
    # Matryoshka prefixes' differences. Group g's decoded part P_g feeds every
    # reconstruction from prefix g on, so its gradient is G_g = Σ_{j ≥ g} ∂/∂x̂_j.
    ends = (0, *prefixes, d_sae)
    base = sae.b_dec + x @ sae.W_skip if sae.skip else sae.b_dec
    if prefixes:
        grp = torch.bucketize(
            cols, torch.tensor(ends[1:-1], device=x.device), right=True
        )
        masks = [grp == g for g in range(len(ends) - 1)]
        parts = torch.stack(
            [
                _bag_sum(
                    sae.W_dec, cols[m], torch.bincount(rows[m], minlength=B), vals[m]
                )
                for m in masks
            ]
        )
        parts = reduce(parts)  # (groups, B, d_out): summed over shards in one call
        x_hats = base + parts.cumsum(0)  # reconstruction from each prefix
        errs = x_hats - y
        err = errs[-1]
        inner_sq = errs[:-1].pow(2).sum()
        # G_g: suffix sums of the per-prefix gradients (2/B)·err_j
        G = (errs * (2.0 / B)).flip(0).cumsum(0).flip(0)
    else:
        # Decode over active latents only: x̂[b] = b_dec + Σ_c f[b,c] W_dec[c].
        x_hat = reduce(_bag_sum(sae.W_dec, cols, l0_tok, vals)) + sae.b_dec
        if sae.skip:  # whole on every process: added once, after the sum over shards
            x_hat += x @ sae.W_skip
        err = x_hat - y
        inner_sq = err.new_zeros(())
        G = (err * (2.0 / B))[None]
    err_sq = err.pow(2).sum()
    recon = err_sq / B
    l0_f = reduce(l0_tok.to(x.dtype))  # over all latents
    sparse = sparsity_penalty(l0_f, penalty, lambda_, target_l0)

    # ∂/∂f at active latents: G_g[b] · W_dec[c] for latent c of group g
    if prefixes:
        g_f = torch.empty_like(vals)
        for g, m in enumerate(masks):
            if m.any():
                per_row = torch.bincount(rows[m], minlength=B)
                g_f[m] = _sampled_dot(G[g], sae.W_dec, rows[m], cols[m], per_row)
    else:
        g_f = _sampled_dot(G[0], sae.W_dec, rows, cols, l0_tok)  # (nnz,)

    # Per-latent bags (sorted by latent) for ∂W_dec, ∂W_enc and ∂b_enc.
    order = torch.argsort(cols, stable=True)
    r_by_c, c_sorted = rows[order], cols[order]
    per_latent = torch.bincount(c_sorted, minlength=d_sae)
    if mu > 0:  # this module's latents; a shard's are its own
        freq = per_latent.to(x.dtype) / B
        fpen = frequency_penalty(freq, mu, max_frequency)
        sparse = sparse + reduce(fpen.clone())
        # ∂penalty/∂p_i, and ∂p_i/∂θ_i = −(1/ε)·Σ_b K / B through the step
        dfreq = 2 * mu * (freq - max_frequency).clamp_min(0.0)
        dfreq /= max_frequency * B
    # sorted by latent, each group's entries are one slice: [starts[g], starts[g+1])
    vals_sorted = vals[order]
    if prefixes:
        starts = torch.cat([per_latent.new_zeros(1), per_latent.cumsum(0)])
        starts = starts[list(ends)].tolist()
        g_Wdec = torch.zeros_like(sae.W_dec)  # (d_sae, d_out)
        for g, (lo, hi) in enumerate(zip(ends[:-1], ends[1:])):
            a, b = starts[g], starts[g + 1]
            if hi > lo:  # a shard may hold none of a group's latents
                g_Wdec[lo:hi] = _bag_sum(
                    G[g], r_by_c[a:b], per_latent[lo:hi], vals_sorted[a:b]
                )
    else:
        g_Wdec = _bag_sum(G[0], r_by_c, per_latent, vals_sorted)  # (d_sae, d_out)
    g_pre = g_f[order]  # JumpReLU passes the gradient where active
    g_Wenc_T = _bag_sum(xc, r_by_c, per_latent, g_pre)  # (d_sae, d_in)
    g_benc = torch.zeros(d_sae, dtype=x.dtype, device=x.device)
    g_benc.index_add_(0, c_sorted, g_pre)

    # θ: the straight-through estimates, only where |pre − θ| < ε/2.
    g_theta = torch.zeros(d_sae, dtype=x.dtype, device=x.device)
    if len(kr):
        k = rectangle((kv - theta[kc]) / eps)
        if prefixes:  # row g·B + b of the stacked G is G_g[b]
            kg = torch.bucketize(
                kc, torch.tensor(ends[1:-1], device=x.device), right=True
            )
            g_f_k = _gather_dot(G.flatten(0, 1), kg * B + kr, sae.W_dec, kc)
        else:
            g_f_k = _gather_dot(G[0], kr, sae.W_dec, kc)
        # reconstruction through JumpReLU: −(θ/ε) K g_f
        g_theta.index_add_(0, kc, -(theta[kc] / eps) * k * g_f_k)
        # sparsity through the step: −(1/ε) K ∂penalty/∂L0_b
        if penalty == "l0":
            dpen = torch.full((B,), lambda_ / B, dtype=x.dtype, device=x.device)
        else:
            dpen = lambda_ * (4.0 / target_l0) * (l0_f - target_l0) / B
        g_theta.index_add_(0, kc, -(1.0 / eps) * k * dpen[kr])
        if mu > 0:
            g_theta.index_add_(0, kc, -(1.0 / eps) * k * dfreq[kc])

    if pre_act_coefficient > 0 and dead is not None:
        # c·mean_b Σ_dead relu(θ − pre) (jumprelu.pre_act_penalty): a dense
        # (B, n_dead) block, dead latents only; reduced on every shard, even one
        # with none dead, so that the processes' collectives stay in step
        idx = dead.nonzero(as_tuple=True)[0]
        gap = (theta[idx] - pre[:, idx]).clamp_min(0.0)  # (B, n_dead)
        sparse = sparse + reduce(pre_act_coefficient * gap.sum() / B)
        g_below = (gap > 0).to(x.dtype) * (-pre_act_coefficient / B)  # ∂/∂pre
        g_Wenc_T.index_add_(0, idx, g_below.T @ xc)
        g_benc.index_add_(0, idx, g_below.sum(0))
        g_theta.index_add_(0, idx, -g_below.sum(0))

    g_bdec = G[0].sum(0)
    if sae.apply_b_dec_to_input:  # xc = x − b_dec feeds the encoder
        g_bdec -= reduce(sae.W_enc @ g_benc)

    if sae.skip:  # in every prefix's reconstruction; the same on every shard
        _add_grad(sae.W_skip, x.T @ G[0])  # (d_in, d_out)
    _add_grad(sae.W_dec, g_Wdec)
    _add_grad(sae.W_enc, g_Wenc_T.T)
    _add_grad(sae.b_enc, g_benc)
    _add_grad(sae.b_dec, g_bdec)
    if sae.threshold_param == "log":
        _add_grad(sae.log_threshold, g_theta * theta)  # dθ/dlogθ = θ
    else:
        _add_grad(sae.threshold_raw, g_theta)

    return StepStats(
        float(recon + inner_sq / B + sparse),
        float(recon),
        float(l0_f.mean()),
        _fvu(err_sq, y),
        per_latent,
    )
