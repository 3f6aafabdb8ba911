"""The cross-layer transcoder (CLT; Ameisen et al. 2025, Gemma Scope 2): a JumpReLU
dictionary whose layer-i latents read layer i's input site and write to the MLP
outputs of every layer j ≥ i,

    f_i = JumpReLU_θi(x_i W_enc,i + b_enc,i),   ŷ_j = Σ_{i≤j} f_i W_dec,i→j + b_dec,j,

trained on Σ_j ‖y_j − ŷ_j‖² plus each layer's sparsity penalty (its own target L0).
Layer i's decoder is one (width, (L − i)·d_out) matrix, its blocks i→i, i→i+1, …

The decode runs over the active latents only (`embedding_bag`: a gather-and-sum per
token, forward and backward), so a step costs the L dense encoders plus
Σ_i L0_i·(L − i)·d_out, not Σ_i width·(L − i)·d_out: with L0 ≪ width the encoders
dominate and the cost grows about linearly with the layers. `decode_dense` is the
same sum as dense matmuls, the reference the tests hold the sparse one to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from saesuite.sae.jumprelu import (
    JumpReLUFn,
    LossTerms,
    StepFn,
    frequency_penalty,
    pre_act_penalty,
    sparsity_penalty,
)


class CLTOutput(NamedTuple):
    loss: torch.Tensor  # scalar: Σ_j reconstruction + Σ_i sparsity
    reconstruction: torch.Tensor  # (L,) mean ‖y_j − ŷ_j‖² per output layer
    l0: torch.Tensor  # (L,) mean active latents per token, per encoder layer
    y_hat: torch.Tensor  # (B, L, d_out), detached
    counts: torch.Tensor  # (L, width) int64: tokens each latent fired on


class CrossLayerTranscoder(nn.Module):
    def __init__(
        self,
        n_layers: int,
        d_in: int,
        width: int,
        d_out: int | None = None,
        *,
        bandwidth: float = 0.001,
        init_threshold: float = 0.001,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        L, d_out = n_layers, d_out or d_in
        self.n_layers, self.d_in, self.width, self.d_out = L, d_in, width, d_out
        self.bandwidth = bandwidth
        kw = {"dtype": dtype}
        self.W_enc = nn.Parameter(torch.zeros(L, d_in, width, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, width, **kw))
        self.threshold_raw = nn.Parameter(torch.full((L, width), init_threshold, **kw))
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.zeros(width, (L - i) * d_out, **kw)) for i in range(L)
        )
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **kw))

    @property
    def threshold(self) -> torch.Tensor:
        return self.threshold_raw

    @torch.no_grad()
    def initialize(
        self, generator: torch.Generator | None = None, encoder_scale: float = 1.0
    ) -> CrossLayerTranscoder:
        """Each decoder block He-uniform with unit-norm rows, scaled by 1/√(L − i)
        (a latent's summed write over its layers keeps unit size); each encoder drawn
        the same way, as W_enc,i = s·(unit rows)ᵀ; zero biases."""
        bound = math.sqrt(6.0 / self.d_in)
        for i, w in enumerate(self.W_dec):
            rows = torch.empty(w.shape, dtype=w.dtype).uniform_(
                -bound, bound, generator=generator
            )
            blocks = rows.view(self.width, -1, self.d_out)
            blocks /= blocks.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            w.copy_(blocks.view_as(w) / math.sqrt(self.n_layers - i))
        for i in range(self.n_layers):
            rows = torch.empty(self.width, self.d_in, dtype=self.W_enc.dtype).uniform_(
                -bound, bound, generator=generator
            )
            self.W_enc[i].copy_(
                encoder_scale * (rows / rows.norm(dim=1, keepdim=True)).T
            )
        self.b_enc.zero_()
        self.b_dec.zero_()
        return self

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_in) → (B, L, width): each layer's encoder on its own input."""
        return torch.einsum("bld,ldw->blw", x, self.W_enc) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def encode_layer(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Layer i's latents (N, width) from its input alone, x (N, d_in)."""
        pre = x @ self.W_enc[i] + self.b_enc[i]
        return pre * (pre > self.threshold[i])

    def predict_layer(self, latents: dict[int, torch.Tensor], j: int) -> torch.Tensor:
        """ŷ_j = b_dec,j + Σ_{i≤j} f_i W_dec,i→j from the latents of layers ≤ j
        ({i: (N, width)}, `encode_layer`): a replacement model's MLP output j."""
        d = self.d_out
        y = self.b_dec[j]
        for i in range(j + 1):
            y = y + latents[i] @ self.W_dec[i][:, (j - i) * d : (j - i + 1) * d]
        return y

    def decode_dense(self, f: torch.Tensor) -> torch.Tensor:
        """(B, L, width) → (B, L, d_out) with every latent's dense matmul: the
        reference for `decode`."""
        B, L = f.shape[0], self.n_layers
        y = self.b_dec.expand(B, L, self.d_out).clone()
        for i in range(L):
            y[:, i:] += (f[:, i] @ self.W_dec[i]).view(B, L - i, self.d_out)
        return y

    def decode(
        self, f: torch.Tensor, support: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The same as `decode_dense`, over each layer's active latents only, or the
        entries of `support` (bool, as f): training adds those just below θ, inside
        the estimator's kernel window, whose zero values θ's gradient needs ∂/∂f of."""
        B, L = f.shape[0], self.n_layers
        support = f != 0 if support is None else support
        parts = [self.b_dec.expand(B, L, self.d_out)]
        for i in range(L):
            rows, cols = support[:, i].nonzero(as_tuple=True)  # row-major: by token
            counts = torch.bincount(rows, minlength=B)
            offsets = torch.zeros_like(counts)
            offsets[1:] = counts.cumsum(0)[:-1]
            out = F.embedding_bag(
                cols,
                self.W_dec[i],
                offsets,
                mode="sum",
                per_sample_weights=f[:, i][rows, cols],
            )  # (B, (L − i)·d_out)
            parts.append(F.pad(out.view(B, L - i, self.d_out), (0, 0, i, 0)))
        return torch.stack(parts).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fold_normalization(
        self, in_scales: Sequence[float], out_scales: Sequence[float]
    ) -> CrossLayerTranscoder:
        """The same map on raw activations, for a CLT trained on x_i / c_i
        (`in_scales`) against y_j / d_j (`out_scales`), each site's own scalar:
        layer i's latents grow by c_i (W_enc,i unchanged, b_enc,i and θ_i × c_i), so
        block i→j of its decoder takes d_j / c_i and b_dec,j takes d_j. In place;
        returns self."""
        L = self.n_layers
        if len(in_scales) != L or len(out_scales) != L:
            raise ValueError(
                f"{len(in_scales)} input and {len(out_scales)} output scales for "
                f"{L} layers"
            )
        c = torch.tensor(in_scales, dtype=self.b_enc.dtype)
        d = torch.tensor(out_scales, dtype=self.b_enc.dtype)
        self.b_enc.mul_(c[:, None])
        self.threshold_raw.mul_(c[:, None])
        for i, w in enumerate(self.W_dec):
            blocks = w.view(self.width, L - i, self.d_out)
            blocks.mul_((d[i:] / c[i])[None, :, None])
        self.b_dec.mul_(d[:, None])
        return self

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        terms: tuple[LossTerms, ...],
        *,
        dense: bool = False,
        dead: torch.Tensor | None = None,
    ) -> CLTOutput:
        """Σ_j mean ‖y_j − ŷ_j‖² + Σ_i penalties_i, with the straight-through
        estimators; `terms[i]` is encoder layer i's: its sparsity penalty (its own
        target L0), the frequency penalty and the pre-activation loss of its `dead`
        latents ((L, width) bool), as an SAE's (`LossTerms`; Matryoshka prefixes are
        not a CLT's). `dense`: decode with `decode_dense` (the reference path)."""
        if len(terms) != self.n_layers:
            raise ValueError(f"{len(terms)} LossTerms for {self.n_layers} layers")
        pre = self.pre_acts(x)
        theta = self.threshold
        f = JumpReLUFn.apply(pre, theta, self.bandwidth)
        if dense:
            y_hat = self.decode_dense(f)
        else:  # active latents and those θ's kernel window reaches from below
            y_hat = self.decode(f, pre.detach() > theta.detach() - self.bandwidth / 2)
        recon = (y - y_hat).pow(2).sum(-1).mean(0)  # (L,)
        fires = StepFn.apply(pre, theta, self.bandwidth)  # (B, L, width)
        l0 = fires.sum(-1)  # (B, L)
        extra = torch.zeros((), dtype=recon.dtype, device=recon.device)
        for i, t in enumerate(terms):
            extra = extra + sparsity_penalty(
                l0[:, i], t.penalty, t.lambda_, t.target_l0
            )
            if t.frequency_coefficient > 0:
                extra = extra + frequency_penalty(
                    fires[:, i].mean(0), t.frequency_coefficient, t.max_frequency
                )
            if dead is not None and t.pre_act_coefficient > 0 and bool(dead[i].any()):
                extra = extra + pre_act_penalty(
                    pre[:, i], theta[i], dead[i], t.pre_act_coefficient
                )
        counts = (pre.detach() > theta.detach()).sum(0)
        return CLTOutput(
            recon.sum() + extra,
            recon.detach(),
            l0.mean(0).detach(),
            y_hat.detach(),
            counts,
        )
