"""What each latent of a dictionary responds to, streamed over tokens (the core of the
dashboards, issue 17): per latent its top-k activating contexts (one per sequence,
a window of tokens around the maximum with the latent's value on each), a uniform
sample of the contexts it fires on (for Neuronpedia-style activation-quantile bins),
its firing count, sum and maximum, and a histogram of log10 activations.

Memory is width × k × window, whatever the number of tokens: after each batch only
the best k candidates per latent are kept (`merge_top`), so one pass or several over
the same tokens give the same result. The sample is a top-k too, by a random key per
(sequence, position) drawn from a seeded hash of the position, so it is uniform over
firing positions, reproducible, and the same whatever the batching.

Masked positions (BOS, EOS, pad) are never candidates and count nowhere; they do
appear, with value 0, inside a window around an unmasked maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saesuite.spec.sizes import LOGIT_BLOCK_BYTES

LOG10_EDGES = torch.linspace(-3.0, 3.0, 61)  # log10 activation, 0.1 wide


def bin_centres() -> list[float]:
    """The activation at the middle of each histogram bin (torch.bucketize's: bin 0
    below the first edge, bin len(edges) above the last), in activation units."""
    e = LOG10_EDGES.tolist()
    step = e[1] - e[0]
    mids = (
        [e[0] - step / 2] + [(a + b) / 2 for a, b in zip(e, e[1:])] + [e[-1] + step / 2]
    )
    return [10**m for m in mids]


BLOCK = 4096  # latents updated at once: bounds the (B, T, block) work tensors


def _hash_keys(seq: torch.Tensor, pos: torch.Tensor, seed: int) -> torch.Tensor:
    """A key in [0, 1) per (sequence, position), from integer hashing (a
    multiply-xorshift mix): independent of batching and of the device."""
    x = (seq.long() * 1_000_003 + pos.long()) * 2_654_435_761 + seed * 97_531
    x = (x ^ (x >> 15)) * 2_246_822_519
    x = (x ^ (x >> 13)) & 0xFFFFFF
    return x.float() / float(1 << 24)


@dataclass
class TopContexts:
    """The best k (by `score`) sequences of each latent, with a window of values
    and token ids around the chosen position. score -inf: an empty slot."""

    score: torch.Tensor  # (width, k) float64
    value: torch.Tensor  # (width, k) the latent's value at the chosen position
    seq: torch.Tensor  # (width, k) int64 global sequence index (-1: empty)
    pos: torch.Tensor  # (width, k) int64 position of the chosen token
    window_values: torch.Tensor  # (width, k, 2h+1) the latent on the window
    window_ids: torch.Tensor  # (width, k, 2h+1) token ids (-1 outside the sequence)

    FIELDS = ("score", "value", "seq", "pos", "window_values", "window_ids")

    def rows(self, lo: int, hi: int) -> TopContexts:
        return TopContexts(*(getattr(self, f)[lo:hi] for f in self.FIELDS))

    def set_rows(self, lo: int, hi: int, other: TopContexts) -> None:
        for f in self.FIELDS:
            getattr(self, f)[lo:hi] = getattr(other, f)

    @classmethod
    def empty(cls, width: int, k: int, half: int) -> TopContexts:
        w = 2 * half + 1
        return cls(
            torch.full((width, k), -torch.inf, dtype=torch.float64),
            torch.zeros(width, k),
            torch.full((width, k), -1, dtype=torch.long),
            torch.full((width, k), -1, dtype=torch.long),
            torch.zeros(width, k, w),
            torch.full((width, k, w), -1, dtype=torch.long),
        )


def _windows(
    acts: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (sequence b, latent c), the latent's values and the token ids at
    positions pos[b, c] - half … pos[b, c] + half (B, width, 2h+1)."""
    B, T, width = acts.shape
    offsets = torch.arange(-half, half + 1, device=acts.device)
    at = pos.unsqueeze(-1) + offsets  # (B, width, W)
    inside = (at >= 0) & (at < T)
    at_c = at.clamp(0, T - 1)
    vals = torch.gather(acts.transpose(1, 2), 2, at_c)  # (B, width, W)
    toks = torch.gather(ids.unsqueeze(1).expand(B, width, T), 2, at_c)
    return vals.masked_fill(~inside, 0.0), toks.masked_fill(~inside, -1)


def merge_top(
    top: TopContexts,
    score: torch.Tensor,
    value: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    wvals: torch.Tensor,
    wids: torch.Tensor,
) -> TopContexts:
    """`top` with the candidates (B per latent: score, value, seq, pos (B, width),
    windows (B, width, W)) merged in: per latent the best k of both, ties broken
    by the smaller sequence index (so the result is independent of batch order)."""
    k = top.score.shape[1]
    all_score = torch.cat([top.score, score.T.double()], dim=1)
    all_seq = torch.cat([top.seq, seq.T], dim=1)
    # sort by (score desc, seq asc): seq as a tiny tie-breaker on the rank
    order = torch.argsort(all_seq, dim=1, stable=True)
    order = order.gather(1, torch.argsort(-all_score.gather(1, order), dim=1,
                                          stable=True))[:, :k]  # fmt: skip

    def pick(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        both = torch.cat([old, new], dim=1)
        idx = order.view(*order.shape, *([1] * (both.dim() - 2))).expand(
            -1, -1, *both.shape[2:]
        )
        return both.gather(1, idx)

    return TopContexts(
        pick(top.score, score.T.double()),
        pick(top.value, value.T.float()),
        pick(top.seq, seq.T),
        pick(top.pos, pos.T),
        pick(top.window_values, wvals.transpose(0, 1).float()),
        pick(top.window_ids, wids.transpose(0, 1)),
    )


@dataclass
class LatentStats:
    """Streamed statistics of one dictionary's latents (see the module docstring)."""

    width: int
    k: int = 20
    half_window: int = 8
    samples: int = 20
    seed: int = 0
    tokens: int = 0
    count: torch.Tensor = field(init=False)  # firing tokens per latent
    total: torch.Tensor = field(init=False)  # sum of activations (float64)
    max: torch.Tensor = field(init=False)
    hist: torch.Tensor = field(init=False)  # (width, len(LOG10_EDGES) + 1) counts
    top: TopContexts = field(init=False)
    sample: TopContexts = field(init=False)

    def __post_init__(self) -> None:
        w = self.width
        self.count = torch.zeros(w, dtype=torch.long)
        self.total = torch.zeros(w, dtype=torch.float64)
        self.max = torch.zeros(w)
        self.hist = torch.zeros(w, len(LOG10_EDGES) + 1, dtype=torch.long)
        self.top = TopContexts.empty(w, self.k, self.half_window)
        self.sample = TopContexts.empty(w, self.samples, self.half_window)

    @torch.no_grad()
    def update(
        self, acts: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
        first_seq: int,
    ) -> None:  # fmt: skip
        """Add a batch: acts (B, T, width) ≥ 0, ids and mask (B, T); the batch's
        sequences are first_seq, first_seq + 1, … of the dashboard split."""
        acts = acts.detach().float().cpu().masked_fill(~mask.cpu().unsqueeze(-1), 0.0)
        ids, mask = ids.cpu(), mask.cpu()
        B, T, _ = acts.shape
        fired = acts > 0
        self.tokens += int(mask.sum())
        self.total += acts.sum(dim=(0, 1), dtype=torch.float64)
        bins = torch.bucketize(acts[fired].log10(), LOG10_EDGES)
        latent = fired.nonzero()[:, 2]
        self.count += torch.bincount(latent, minlength=self.width)
        self.hist.view(-1).index_add_(
            0, latent * self.hist.shape[1] + bins,
            torch.ones_like(bins),
        )  # fmt: skip
        keys = _hash_keys(torch.arange(first_seq, first_seq + B).unsqueeze(1),
                          torch.arange(T).unsqueeze(0), self.seed)  # fmt: skip
        for lo in range(0, self.width, BLOCK):
            hi = min(lo + BLOCK, self.width)
            self._update_block(acts[..., lo:hi], fired[..., lo:hi], ids, keys,
                               first_seq, lo, hi)  # fmt: skip

    def _update_block(
        self, acts: torch.Tensor, fired: torch.Tensor, ids: torch.Tensor,
        keys: torch.Tensor, first_seq: int, lo: int, hi: int,
    ) -> None:  # fmt: skip
        B = acts.shape[0]
        seq = torch.arange(first_seq, first_seq + B).unsqueeze(1).expand(B, hi - lo)
        # top-k: each sequence's maximum per latent (masked positions are 0)
        best, where = acts.max(dim=1)  # (B, block)
        self.max[lo:hi] = torch.maximum(self.max[lo:hi], best.amax(dim=0))
        score = torch.where(best > 0, best.double(), -torch.inf)
        wv, wi = _windows(acts, ids, where, self.half_window)
        self.top.set_rows(lo, hi, merge_top(self.top.rows(lo, hi), score, best,
                                            seq.masked_fill(best <= 0, -1),
                                            where, wv, wi))  # fmt: skip
        # the sample: per sequence and latent, the firing position of least key
        k = torch.where(fired, keys.unsqueeze(-1), torch.inf)
        kmin, where = k.min(dim=1)  # (B, block)
        value = acts.gather(1, where.unsqueeze(1)).squeeze(1)
        score = torch.where(kmin.isfinite(), 1.0 - kmin.double(), -torch.inf)
        wv, wi = _windows(acts, ids, where, self.half_window)
        empty = ~kmin.isfinite()  # fired nowhere in the sequence: no candidate
        self.sample.set_rows(lo, hi, merge_top(self.sample.rows(lo, hi), score,
                                               value, seq.masked_fill(empty, -1),
                                               where, wv, wi))  # fmt: skip

    @property
    def frequency(self) -> torch.Tensor:
        return self.count.double() / max(self.tokens, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation over the tokens it fires on."""
        return self.total / self.count.clamp(min=1)


def logit_block_rows(vocab: int) -> int:
    """Latents whose logits are computed at once (LOGIT_BLOCK_BYTES of float32): 1,024
    on a 262k vocabulary, 10 % faster than 256 on 2 cores (18.7 s against 21.1 s for
    4,096 latents, 2026-12-02): the matmul is most of a dashboards job."""
    return max(1, LOGIT_BLOCK_BYTES // (4 * vocab))


def logit_effects(
    W_dec: torch.Tensor, W_U: torch.Tensor, n: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each latent's direct effect on the logits: its decoder row through the
    unembedding, W_dec @ W_Uᵀ (width, vocab), with no final norm applied (the
    norm's scale depends on the whole residual stream: the direction, which is what
    the ranking needs, is the decoder row's own, as in SAEDashboard and
    Neuronpedia). The top and bottom `n` (values, token ids) per latent."""
    top_v, top_i, bot_v, bot_i = [], [], [], []
    W_U = W_U.float()
    for block in W_dec.split(logit_block_rows(W_U.shape[0])):
        logits = block.float() @ W_U.T
        v, i = logits.topk(n, dim=1)
        top_v.append(v)
        top_i.append(i)
        v, i = logits.topk(n, dim=1, largest=False)
        bot_v.append(v)
        bot_i.append(i)
    return torch.cat(top_v), torch.cat(top_i), torch.cat(bot_v), torch.cat(bot_i)
