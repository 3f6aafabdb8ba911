"""The JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope, Lieberum et al. 2024):
the module, its straight-through estimators, the training loss, initialisation, the
decoder-norm constraint, and folding the input normalisation into released weights.

    sae = JumpReLUSAE(d_in=640, d_sae=4096)
    f = sae.encode(x)            # (B, d_sae)
    x_hat = sae.decode(f)        # (B, d_in)
    out = sae.training_loss(x, LossTerms(penalty="l0", lambda_=1e-3))

Public API, used by the trainer (`saesuite.sae.train`), evaluation and release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LossTerms:
    """What one training step minimises besides ‖y − ŷ‖²: the options object of
    `JumpReLUSAE.training_loss`, `dense_step` and `sparse_step` (built per step by
    `saesuite.sae.member.train_step` from the dictionary and `TrainConfig`).

    penalty/lambda_/target_l0: the L0 term (`sparsity_penalty`); frequency_*: the
    `frequency_penalty` above `max_frequency` (off at 0); prefixes: the Matryoshka
    prefix ends (`prefix_ends`; () = one reconstruction); pre_act_coefficient: the
    `pre_act_penalty` of the dead latents (off at 0); sharded: the module holds one
    block of the latents (`saesuite.sae.shard`) and sums over latents span every
    process."""

    penalty: Penalty = "l0"
    lambda_: float = 0.0
    target_l0: float | None = None
    frequency_coefficient: float = 0.0
    max_frequency: float = 1.0
    prefixes: tuple[int, ...] = ()
    pre_act_coefficient: float = 0.0
    sharded: bool = False


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
    lambda_: float,
    target_l0: float | None,
) -> torch.Tensor:
    """λ·mean(L0) (Gemma Scope) or λ·mean((2/L0*)·(L0 − L0*)²) (Gemma Scope 2; per
    token, then the batch mean, as SAELens's "quadratic" mode)."""
    if penalty == "l0":
        return lambda_ * l0_per_token.mean()
    if target_l0 is None or target_l0 <= 0:
        raise ValueError("penalty 'target_l0' needs a positive target_l0")
    return lambda_ * (2.0 / target_l0 * (l0_per_token - target_l0) ** 2).mean()


def frequency_penalty(
    frequency: torch.Tensor, coefficient: float, max_frequency: float
) -> torch.Tensor:
    """μ · Σ_i max(0, p_i − p_max)² / p_max, p_i the share of the batch's tokens on
    which latent i fires (through the step's straight-through estimator, so only θ
    learns from it, as from the L0 term).

    Gemma Scope 2 adds "a frequency penalty which prevented the formation of
    high-frequency features" and publishes no formula; this is ours. It is zero for
    every latent at or below p_max, so it leaves the L0 target's trade-off alone
    there, and it grows quadratically above: ∂/∂p_i = 2μ(p_i − p_max)/p_max, so a
    latent firing on twice p_max is pushed up its threshold 2μ per unit of
    frequency, against λ from the linear L0 term (choose μ ≫ λ to forbid it)."""
    over = (frequency - max_frequency).clamp_min(0.0)
    return coefficient * over.pow(2).sum() / max_frequency


def pre_act_penalty(
    pre: torch.Tensor, theta: torch.Tensor, dead: torch.Tensor, coefficient: float
) -> torch.Tensor:
    """c · mean_b Σ_{i dead} relu(θ_i − pre_{b,i}) (Anthropic's pre-activation loss,
    as SAELens applies it: to dead latents only). SAELens also weights each latent
    by ‖W_dec[i]‖; this term does not (the same with unit decoder rows; with
    train.decoder_norm: free it is what BENCHMARKS.md measured). It pulls a dead
    latent's pre-activations up to its threshold, and the threshold down, on every
    token, until it fires."""
    gap = (theta[dead] - pre[:, dead]).clamp_min(0.0)
    return coefficient * gap.sum() / pre.shape[0]


def prefix_ends(
    fractions: list[float] | tuple[float, ...],
    width: int,
    start: int = 0,
    stop: int | None = None,
) -> tuple[int, ...]:
    """The Matryoshka loss's inner prefixes of a `width`-latent SAE, latents
    [0, round(f·width)) for each fraction f, as ends local to the block [start, stop)
    a shard holds (clipped to it, so every shard has as many; the full width is
    always a prefix and not listed)."""
    stop = width if stop is None else stop
    ends = sorted({max(1, round(f * width)) for f in fractions})
    return tuple(min(max(e - start, 0), stop - start) for e in ends if e < width)


class JumpReLUSAE(nn.Module):
    """A JumpReLU SAE with W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae],
    b_dec [d_out] and one threshold θ > 0 per latent; d_out = d_in for an SAE.

    A transcoder (Gemma Scope; Dunefsky et al. 2024) reads one site and predicts
    another: `d_out` may differ from d_in, b_dec is an output bias only
    (apply_b_dec_to_input=False), and `skip=True` adds an affine skip connection
    x W_skip [d_in, d_out] to the prediction (Gemma Scope 2's skip-transcoders),
    initialised to zero.

    While training, an SAE subtracts b_dec before the encoder (apply_b_dec_to_input);
    released SAEs (`fold_normalization`) work on raw activations without it, as
    Gemma Scope's params.npz files do.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        d_out: int | None = None,
        skip: bool = False,
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
        d_out = d_in if d_out is None else d_out
        if apply_b_dec_to_input and d_out != d_in:
            raise ValueError(
                f"b_dec ({d_out}) cannot be subtracted from the input ({d_in}): a "
                "transcoder takes apply_b_dec_to_input=False"
            )
        self.d_in, self.d_sae, self.d_out, self.skip = d_in, d_sae, d_out, skip
        self.threshold_param = threshold_param
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.bandwidth = bandwidth
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        if skip:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, **kw))
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
        encoder_scale: float = 1.0,
    ) -> JumpReLUSAE:
        """He-uniform W_dec with unit-norm rows, W_enc = s·W_decᵀ (a transcoder whose
        sites differ in width draws W_enc the same way, after W_dec), zero biases and
        skip connection. s = `encoder_scale`: 1 is Gemma Scope's initialisation;
        SAELens's (decoder rows of norm 0.1, W_enc = W_decᵀ) is s = 0.01 with the
        unit-norm decoder this module keeps, as a latent's contribution f·W_dec is
        what counts. A shard (`saesuite.sae.shard`) takes latents start.. of the
        `full_width` SAE the same seed gives: rows are drawn in blocks and the others
        dropped, so memory stays at a block however wide the SAE."""
        full_width = full_width or self.d_sae
        w = self._unit_rows(generator, full_width, start, self.d_out)
        self.W_dec.copy_(w)
        if self.d_out != self.d_in:
            w = self._unit_rows(generator, full_width, start, self.d_in)
        self.W_enc.copy_(encoder_scale * w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.skip:
            self.W_skip.zero_()
        return self

    def _unit_rows(
        self, generator: torch.Generator | None, full_width: int, start: int, d: int
    ) -> torch.Tensor:
        """Rows start..start+d_sae of a (full_width, d) He-uniform draw, unit norm."""
        bound = math.sqrt(6.0 / self.d_in)  # He-uniform, fan_in = d_in
        w = torch.empty(self.d_sae, d, dtype=torch.float32)
        block = max(1, INIT_BLOCK // d)
        for lo in range(0, min(full_width, start + self.d_sae), block):
            hi = min(lo + block, full_width)
            rows = torch.empty(hi - lo, d).uniform_(-bound, bound, generator=generator)
            a, b = max(lo, start), min(hi, start + self.d_sae)
            if a < b:
                w[a - start : b - start] = rows[a - lo : b - lo]
        return w / w.norm(dim=1, keepdim=True)

    # --- inference ----------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc  # (B, d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f = JumpReLU_θ(pre), (B, d_in) → (B, d_sae)."""
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """x̂ = f W_dec + b_dec (+ x W_skip with a skip connection, which needs the
        input x), (B, d_sae) → (B, d_out)."""
        out = f @ self.W_dec + self.b_dec
        if self.skip:
            if x is None:
                raise ValueError("a skip-transcoder decodes from its input too: pass x")
            out = out + x @ self.W_skip
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    # --- training -----------------------------------------------------------------
    def training_loss(
        self,
        x: torch.Tensor,
        terms: LossTerms = LossTerms(),
        *,
        target: torch.Tensor | None = None,
        dead: torch.Tensor | None = None,
    ) -> LossOutput:
        """‖y − ŷ‖² + the `terms`, with the straight-through estimators; dense
        path. y is `target` (a transcoder's output site) or x itself (an SAE);
        `dead` (bool, this module's latents) feeds the pre-activation penalty.
        With `terms.prefixes`, the Matryoshka loss: Σ over the inner prefixes P of
        ‖y − ŷ_P‖², ŷ_P decoded from latents [0, P) only (biases and skip connection
        included), added to the full reconstruction's term (SAELens's Matryoshka
        SAEs: unweighted); `reconstruction` stays the full one's. Sharded, the
        reconstruction and L0 are summed over the processes holding the others."""
        t = terms
        fan, total = (fan_out, reduce_sum) if t.sharded else (_identity, _identity)
        y = x if target is None else target
        xc = fan(x - self.b_dec) if self.apply_b_dec_to_input else x
        pre = xc @ self.W_enc + self.b_enc
        theta = self.threshold
        f = JumpReLUFn.apply(pre, theta, self.bandwidth)
        x_hat = total(f @ self.W_dec) + self.b_dec
        if self.skip:  # every process holds the whole skip matrix: added once
            x_hat = x_hat + x @ self.W_skip
        recon = (y - x_hat).pow(2).sum(-1).mean()
        inner = recon.new_zeros(())
        partial, lo = self.b_dec, 0
        if t.prefixes and self.skip:
            partial = partial + x @ self.W_skip
        for hi in t.prefixes:
            partial = partial + total(f[:, lo:hi] @ self.W_dec[lo:hi])
            inner = inner + (y - partial).pow(2).sum(-1).mean()
            lo = hi
        fires = StepFn.apply(pre, theta, self.bandwidth)  # (B, d_sae)
        l0 = total(fires.sum(-1))  # (B,)
        sparse = sparsity_penalty(l0, t.penalty, t.lambda_, t.target_l0)
        if t.frequency_coefficient > 0:  # a shard sums its own latents' terms
            freq = frequency_penalty(
                fires.mean(0), t.frequency_coefficient, t.max_frequency
            )
            sparse = sparse + total(freq)
        if t.pre_act_coefficient > 0 and dead is not None:
            sparse = sparse + total(
                pre_act_penalty(pre, theta, dead, t.pre_act_coefficient)
            )
        return LossOutput(
            recon + inner + sparse,
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
    def fold_normalization(
        self, scale: float, target_scale: float | None = None
    ) -> JumpReLUSAE:
        """The dictionary on raw activations, for one trained on x_raw / C_x (and, a
        transcoder, to predict y_raw / C_y; C_y = C_x for an SAE), with b_dec
        subtracted before the encoder if it was (r = C_y / C_x):
            W_enc′ = r·W_enc,  b_enc′ = C_y·(b_enc − W_encᵀ b_dec),  θ′ = C_y·θ,
            b_dec′ = C_y·b_dec,  W_skip′ = r·W_skip;  W_dec unchanged.
        Its latents are C_y times the trained ones, so decoder rows keep their norm
        (unit under train.decoder_norm: unit, where a latent's value is then its
        contribution in the output's raw units); the output is
        C_y times the trained one. For an SAE (r = 1) W_enc and W_dec are shared with
        this module, not copied (a 2^20-latent SAE's matrices are tens of GB)."""
        c_y = scale if target_scale is None else target_scale
        r = c_y / scale
        out = JumpReLUSAE(
            self.d_in,
            self.d_sae,
            d_out=self.d_out,
            skip=self.skip,
            threshold_param="direct",
            apply_b_dec_to_input=False,
            bandwidth=self.bandwidth * c_y,
            dtype=self.W_enc.dtype,
            device="meta",
        )
        b_enc = self.b_enc
        if self.apply_b_dec_to_input:
            b_enc = b_enc - self.b_dec @ self.W_enc
        state = {
            "W_enc": self.W_enc.detach() if r == 1 else r * self.W_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_enc": c_y * b_enc,
            "b_dec": c_y * self.b_dec,
            "threshold_raw": c_y * self.threshold,
        }
        if self.skip:
            state["W_skip"] = r * self.W_skip.detach()
        out.load_state_dict(state, assign=True)
        return out

    def release_tensors(self) -> dict[str, torch.Tensor]:
        """W_enc, W_dec, b_enc, b_dec, threshold (Gemma Scope's names) and W_skip of a
        skip-transcoder, contiguous."""
        if self.apply_b_dec_to_input:
            raise ValueError("fold_normalization() first: released SAEs take raw input")
        out = {
            "W_enc": self.W_enc.detach().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_enc": self.b_enc.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
            "threshold": self.threshold.detach().contiguous(),
        }
        if self.skip:
            out["W_skip"] = self.W_skip.detach().contiguous()
        return out

    @classmethod
    def from_release(cls, tensors: dict[str, torch.Tensor]) -> JumpReLUSAE:
        d_in, d_sae = tensors["W_enc"].shape
        sae = cls(
            d_in,
            d_sae,
            d_out=tensors["W_dec"].shape[1],
            skip="W_skip" in tensors,
            apply_b_dec_to_input=False,
            dtype=tensors["W_enc"].dtype,
        )
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec", "W_skip"):
                if name in tensors:
                    getattr(sae, name).copy_(tensors[name])
            sae.threshold_raw.copy_(tensors["threshold"])
        return sae
