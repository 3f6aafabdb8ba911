"""Adam with β1 = 0 over the rows a sparse gradient touches, exactly as dense Adam
moves every row (a CLT's decoders: `CrossLayerTranscoder(sparse_grads=True)`).

With β1 = 0 a row whose gradient is zero does not move, and its second moment only
decays, v ← β2·v. So a row touched at step t, last touched at step s, takes
v ← β2^(t−s)·v + (1 − β2)·g² and moves by lr·g / (√(v / (1 − β2^t)) + ε): dense
Adam's numbers, with the work and memory traffic of the touched rows only. (Torch's
SparseAdam is the lazy variant, which skips the decay of untouched rows.)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class RowAdam:
    """Exact Adam(β1 = 0) for 2-D parameters with sparse (COO, row) gradients."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ):
        self.params = list(params)
        self.lr, self.beta2, self.eps = lr, beta2, eps
        self.step_count = 0
        self.v = [torch.zeros_like(p) for p in self.params]
        # the step each row's v was last brought up to date at
        self.last = [
            torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
            for p in self.params
        ]

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        t, b2 = self.step_count, self.beta2
        correction = 1 - b2**t
        for p, v, last in zip(self.params, self.v, self.last, strict=True):
            if p.grad is None:
                continue
            g = p.grad.coalesce()
            rows, values = g.indices()[0], g.values()
            decay = torch.pow(b2, (t - last[rows]).to(v.dtype))[:, None]
            vr = decay * v[rows] + (1 - b2) * values.square()
            v[rows] = vr
            last[rows] = t
            p[rows] -= self.lr * values / ((vr / correction).sqrt() + self.eps)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """v and each row's step as they are (not brought up to date), so a resumed
        run repeats the uninterrupted one bit for bit."""
        return {"step": self.step_count, "v": self.v, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for mine, saved in zip(self.v + self.last, state["v"] + state["last"],
                               strict=True):  # fmt: skip
            mine.copy_(saved)


def sparse_grad_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm of every gradient, dense or sparse (summed duplicates first)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        total += g.double().square().sum().cpu()
    return total.sqrt()


def clip_grads_(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_ for dense and sparse gradients alike: scale
    every gradient by max_norm / (norm + 1e-6) when the norm exceeds max_norm."""
    params = list(params)
    norm = float(sparse_grad_norm(params))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for p in params:
            if p.grad is not None:
                p.grad = (
                    p.grad.coalesce() * scale if p.grad.is_sparse else p.grad * scale
                )
    return norm
