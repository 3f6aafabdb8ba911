"""The JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope, Lieberum et al. 2024):
the module, its straight-through estimators, the training loss, initialisation, the
decoder-norm constraint, and folding the input normalisation into released weights.

    sae = JumpReLUSAE(d_in=640, d_sae=4096)
    f = sae.encode(x)            # (B, d_sae)
    x_hat = sae.decode(f)        # (B, d_in)
    out = sae.training_loss(x, penalty="l0", coefficient=1e-3)

Public API, used by the trainer (`saesuite.sae.train`), evaluation and release.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from saesuite.sae.shard import fan_out, reduce_sum

Penalty = Literal["l0", "target_l0"]
INIT_BLOCK = 1 << 24  # floats drawn at a time while initialising


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The kernel K(u) = 1 if −½ < u < ½ else 0."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre · H(pre − θ); ∂/∂pre = H(pre − θ), ∂/∂θ := −(θ/ε)·K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        g_pre = grad * (pre > theta)
        g_theta = -(theta / eps) * rectangle((pre - theta) / eps) * grad
        return g_pre, g_theta.sum(0), None


class StepFn(torch.autograd.Function):
    """H(pre − θ); no gradient to pre, ∂/∂θ := −(1/ε)·K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        g_theta = -(1.0 / eps) * rectangle((pre - theta) / eps) * grad
        return None, g_theta.sum(0), None


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar: reconstruction + sparsity
    reconstruction: torch.Tensor  # scalar: mean over the batch of ‖x − x̂‖²
    sparsity: torch.Tensor  # scalar: the weighted sparsity penalty
    l0: torch.Tensor  # scalar: mean active latents per token
    feature_acts: torch.Tensor  # (B, d_sae), detached
    x_hat: torch.Tensor  # (B, d_in), detached


def sparsity_penalty(
    l0_per_token: torch.Tensor,
    penalty: Penalty,
    coefficient: float,
    target_l0: float | None,
) -> torch.Tensor:
    """λ·mean(L0) (Gemma Scope) or λ·mean((2/L0*)·(L0 − L0*)²) (Gemma Scope 2; per
    token, then the batch mean, as SAELens's "quadratic" mode)."""
    if penalty == "l0":
        return coefficient * l0_per_token.mean()
    if target_l0 is None or target_l0 <= 0:
        raise ValueError("penalty 'target_l0' needs a positive target_l0")
    return coefficient * (2.0 / target_l0 * (l0_per_token - target_l0) ** 2).mean()


class JumpReLUSAE(nn.Module):
    """A JumpReLU SAE with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
    b_dec [d_in] and one threshold θ > 0 per latent.

    While training, b_dec is subtracted before the encoder (apply_b_dec_to_input);
    released SAEs (`fold_normalization`) work on raw activations without it, as
    Gemma Scope's params.npz files do.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        threshold_param: Literal["direct", "log"] = "direct",
        apply_b_dec_to_input: bool = True,
        bandwidth: float = 0.001,
        init_threshold: float = 0.001,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if threshold_param not in ("direct", "log"):
            raise ValueError(
                f"threshold_param must be 'direct' or 'log', not {threshold_param!r}"
            )
        self.d_in, self.d_sae = d_in, d_sae
        self.threshold_param = threshold_param
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.bandwidth = bandwidth
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        theta = torch.full((d_sae,), init_threshold, **kw)
        if threshold_param == "log":
            self.log_threshold = nn.Parameter(theta.log())
        else:
            self.threshold_raw = nn.Parameter(theta)

    # --- parameters -------------------------------------------------------------
    @property
    def threshold(self) -> torch.Tensor:
        if self.threshold_param == "log":
            return self.log_threshold.exp()
        return self.threshold_raw

    @torch.no_grad()
    def initialize(
        self,
        generator: torch.Generator | None = None,
        *,
        full_width: int | None = None,
        start: int = 0,
    ) -> JumpReLUSAE:
        """He-uniform W_dec with unit-norm rows, W_enc = W_decᵀ, zero biases. A shard
        (`saesuite.sae.shard`) takes latents start.. of the `full_width` SAE the same
        seed gives: rows are drawn in blocks and the others dropped, so memory stays at
        a block however wide the SAE."""
        full_width = full_width or self.d_sae
        bound = math.sqrt(6.0 / self.d_in)  # He-uniform, fan_in = d_in
        w = torch.empty(self.d_sae, self.d_in, dtype=torch.float32)
        block = max(1, INIT_BLOCK // self.d_in)
        for lo in range(0, min(full_width, start + self.d_sae), block):
            hi = min(lo + block, full_width)
            rows = torch.empty(hi - lo, self.d_in).uniform_(
                -bound, bound, generator=generator
            )
            a, b = max(lo, start), min(hi, start + self.d_sae)
            if a < b:
                w[a - start : b - start] = rows[a - lo : b - lo]
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        return self

    # --- inference ----------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc  # (B, d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f = JumpReLU_θ(pre), (B, d_in) → (B, d_sae)."""
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """x̂ = f W_dec + b_dec, (B, d_sae) → (B, d_in)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # --- training -----------------------------------------------------------------
    def training_loss(
        self,
        x: torch.Tensor,
        *,
        penalty: Penalty = "l0",
        coefficient: float = 0.0,
        target_l0: float | None = None,
        sharded: bool = False,
    ) -> LossOutput:
        """‖x − x̂‖² + sparsity, with the straight-through estimators; dense path.
        `sharded`: this module holds one block of the latents (`saesuite.sae.shard`);
        the reconstruction and L0 are summed over the processes holding the others."""
        fan, total = (fan_out, reduce_sum) if sharded else (_identity, _identity)
        xc = fan(x - self.b_dec) if self.apply_b_dec_to_input else x
        pre = xc @ self.W_enc + self.b_enc
        theta = self.threshold
        f = JumpReLUFn.apply(pre, theta, self.bandwidth)
        x_hat = total(f @ self.W_dec) + self.b_dec
        recon = (x - x_hat).pow(2).sum(-1).mean()
        l0 = total(StepFn.apply(pre, theta, self.bandwidth).sum(-1))  # (B,)
        sparse = sparsity_penalty(l0, penalty, coefficient, target_l0)
        return LossOutput(
            recon + sparse,
            recon,
            sparse,
            l0.mean().detach(),
            f.detach(),
            x_hat.detach(),
        )

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component parallel to each (unit) decoder row, so Adam
        does not fight the norm constraint."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        parallel = (self.W_dec.grad * w).sum(1, keepdim=True)
        self.W_dec.grad -= parallel * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    # --- release ------------------------------------------------------------------
    @torch.no_grad()
    def fold_normalization(self, scale: float) -> JumpReLUSAE:
        """The SAE on raw activations, for one trained on x_raw / C with b_dec
        subtracted before the encoder:
            b_enc′ = C·b_enc − C·(W_enc · b_dec),  b_dec′ = C·b_dec,  θ′ = C·θ.
        Its latents are C times the trained ones; its reconstruction is C times.
        W_enc and W_dec are unchanged and shared with this SAE, not copied (a 2^20-
        latent SAE's matrices are tens of GB)."""
        out = JumpReLUSAE(
            self.d_in,
            self.d_sae,
            threshold_param="direct",
            apply_b_dec_to_input=False,
            bandwidth=self.bandwidth * scale,
            dtype=self.W_enc.dtype,
            device="meta",
        )
        b_enc = self.b_enc
        if self.apply_b_dec_to_input:
            b_enc = b_enc - self.b_dec @ self.W_enc
        state = {
            "W_enc": self.W_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_enc": scale * b_enc,
            "b_dec": scale * self.b_dec,
            "threshold_raw": scale * self.threshold,
        }
        out.load_state_dict(state, assign=True)
        return out

    def release_tensors(self) -> dict[str, torch.Tensor]:
        """W_enc, W_dec, b_enc, b_dec, threshold (Gemma Scope's names), contiguous."""
        if self.apply_b_dec_to_input:
            raise ValueError("fold_normalization() first: released SAEs take raw input")
        return {
            "W_enc": self.W_enc.detach().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_enc": self.b_enc.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
            "threshold": self.threshold.detach().contiguous(),
        }

    @classmethod
    def from_release(cls, tensors: dict[str, torch.Tensor]) -> JumpReLUSAE:
        d_in, d_sae = tensors["W_enc"].shape
        sae = cls(d_in, d_sae, apply_b_dec_to_input=False, dtype=tensors["W_enc"].dtype)
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, name).copy_(tensors[name])
            sae.threshold_raw.copy_(tensors["threshold"])
        return sae
