"""Streamed latent statistics (saesuite.eval.latents, issue 17's core) against a
brute-force computation over all tokens at once, and invariant to how the tokens
are batched."""

from __future__ import annotations

import torch

from saesuite.eval.latents import LOG10_EDGES, LatentStats, _hash_keys, logit_effects

B, T, W = 12, 10, 7


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(B, T, W, generator=g) - 0.8) * 3
    acts[3] = 0.0  # a sequence where nothing fires
    acts[:, :, 6] = 0.0  # a dead latent
    acts[5, 4, 0] = acts[7, 2, 0] = 50.0  # a tie: the smaller sequence ranks first
    ids = torch.randint(0, 100, (B, T), generator=g, dtype=torch.int32)  # as stored
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    mask[2, 6:] = False  # padding
    acts[:, 0, 1] = 99.0  # huge at BOS: never shown, never counted
    return acts, ids, mask


def run(batch: int, k: int = 4, half: int = 2, samples: int = 3) -> LatentStats:
    acts, ids, mask = data()
    st = LatentStats(W, k=k, half_window=half, samples=samples, seed=1)
    for lo in range(0, B, batch):
        st.update(acts[lo : lo + batch], ids[lo : lo + batch], mask[lo : lo + batch],
                  first_seq=lo)  # fmt: skip
    return st


def test_top_contexts_equal_a_brute_force_ranking():
    acts, ids, mask = data()
    k, half = 4, 2
    st = run(batch=B, k=k, half=half)
    a = acts.masked_fill(~mask.unsqueeze(-1), 0.0)
    for c in range(W):
        cands = []
        for b in range(B):
            v, p = a[b, :, c].max(dim=0)
            if v > 0:
                cands.append((-float(v), b, int(p)))
        want = sorted(cands)[:k]
        got = [(-float(v), int(s), int(p))
               for v, s, p in zip(st.top.value[c], st.top.seq[c], st.top.pos[c],
                                  strict=True) if s >= 0]  # fmt: skip
        assert got == [(v, b, p) for v, b, p in want], c
        for j, (_, b, p) in enumerate(want):
            for o in range(-half, half + 1):
                t = p + o
                inside = 0 <= t < T
                assert st.top.window_ids[c, j, o + half] == (
                    ids[b, t] if inside else -1
                )
                want_v = a[b, t, c] if inside else 0.0
                assert st.top.window_values[c, j, o + half] == want_v
    assert st.top.seq[0, :2].tolist() == [5, 7]  # the tie
    assert (st.top.seq[6] == -1).all()  # dead: no contexts
    assert (st.top.value[1] < 99).all()  # BOS never a maximum


def test_counts_sums_maxima_and_histogram_equal_brute_force():
    acts, ids, mask = data()
    st = run(batch=B)
    a = acts.masked_fill(~mask.unsqueeze(-1), 0.0)
    assert st.tokens == int(mask.sum())
    assert torch.equal(st.count, (a > 0).sum(dim=(0, 1)))
    torch.testing.assert_close(st.total, a.double().sum(dim=(0, 1)))
    torch.testing.assert_close(st.max, a.amax(dim=(0, 1)))
    torch.testing.assert_close(st.frequency, st.count.double() / mask.sum())
    for c in range(W):
        v = a[..., c][a[..., c] > 0]
        want = torch.bincount(torch.bucketize(v.log10(), LOG10_EDGES),
                              minlength=len(LOG10_EDGES) + 1)  # fmt: skip
        assert torch.equal(st.hist[c].long(), want), c


def test_batching_does_not_change_anything():
    """One batch of 12 sequences, batches of 5 (a ragged last one), and of 1: the
    same statistics, contexts and sample, bit for bit (memory depends on width × k,
    not on how many tokens went through)."""
    one = run(batch=B)
    for batch in (5, 1):
        other = run(batch=batch)
        for name in ("count", "total", "max", "hist"):
            assert torch.equal(getattr(one, name), getattr(other, name)), name
        for part in ("top", "sample"):
            for f in ("score", "value", "seq", "pos", "window_values", "window_ids"):
                a, b = getattr(getattr(one, part), f), getattr(getattr(other, part), f)
                assert torch.equal(a, b), (batch, part, f)


def test_the_sample_is_of_firing_unmasked_positions_one_per_sequence():
    acts, ids, mask = data()
    st = run(batch=B, samples=3)
    a = acts.masked_fill(~mask.unsqueeze(-1), 0.0)
    for c in range(W):
        seqs = [int(s) for s in st.sample.seq[c] if s >= 0]
        assert len(seqs) == len(set(seqs))  # one per sequence
        firing = int(((a[..., c] > 0).sum(dim=1) > 0).sum())
        assert len(seqs) == min(3, firing)
        for j, s in enumerate(seqs):
            p = int(st.sample.pos[c, j])
            assert a[s, p, c] > 0 and mask[s, p]
            assert st.sample.value[c, j] == a[s, p, c]
    # a different seed draws another sample (of the same positions' population)
    other = LatentStats(W, samples=3, seed=2)
    other.update(acts, ids, mask, first_seq=0)
    assert not torch.equal(other.sample.seq, st.sample.seq)


def test_the_sample_equals_a_brute_force_draw():
    """Per latent: in each sequence the firing unmasked position of least hash key
    (the first on ties), and the sequences of the `samples` least keys (ties: the
    smaller sequence), computed one (sequence, latent) at a time."""
    acts, ids, mask = data()
    samples, half = 3, 2
    st = run(batch=5, samples=samples, half=half)
    a = acts.masked_fill(~mask.unsqueeze(-1), 0.0)
    for c in range(W):
        cands = []
        for b in range(B):
            ts = [t for t in range(T) if a[b, t, c] > 0]
            if ts:
                keys = [
                    float(_hash_keys(torch.tensor(b), torch.tensor(t), 1)) for t in ts
                ]
                j = keys.index(min(keys))
                cands.append((min(keys), b, ts[j]))
        want = sorted(cands)[:samples]
        got = [(int(s), int(p)) for s, p in zip(st.sample.seq[c], st.sample.pos[c],
                                                strict=True) if s >= 0]  # fmt: skip
        assert got == [(b, t) for _, b, t in want], c
        for j, (_, b, t) in enumerate(want):
            assert st.sample.value[c, j] == a[b, t, c]
            for o in range(-half, half + 1):
                inside = 0 <= t + o < T
                assert st.sample.window_values[c, j, o + half] == (
                    a[b, t + o, c] if inside else 0.0
                )


def test_logit_effects_are_the_decoder_rows_through_the_unembedding(monkeypatch):
    g = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(5000, 16, generator=g), torch.randn(300, 16, generator=g)
    full = W_dec @ W_U.T
    # in blocks of 7 latents (the last one short): the same as one block
    monkeypatch.setattr("saesuite.eval.latents.LOGIT_BLOCK_BYTES", 7 * 4 * 300)
    tv, ti, bv, bi = logit_effects(W_dec, W_U, n=4)
    assert torch.equal(ti, full.topk(4, dim=1).indices)
    assert torch.equal(bi, full.topk(4, dim=1, largest=False).indices)
    torch.testing.assert_close(tv, full.topk(4, dim=1).values)
    torch.testing.assert_close(bv, full.topk(4, dim=1, largest=False).values)


def test_each_bin_centre_falls_in_its_own_bin():
    from saesuite.eval.latents import bin_centres

    centres = torch.tensor(bin_centres())
    assert len(centres) == len(LOG10_EDGES) + 1
    assert torch.equal(torch.bucketize(centres.log10(), LOG10_EDGES),
                       torch.arange(len(centres)))  # fmt: skip


def test_a_latents_linear_histogram_equals_equal_bins_over_its_range():
    """Issue 36, item 5: a latent firing between 190 and 390 gets bars over its own
    range (equal bins over [0, max], as SAEDashboard draws), not one bar on a
    six-decade axis. Against torch.histc on the raw values, a value may move one bin
    only within the fine bins' width (2.3 %) of an edge."""
    from saesuite.eval.latents import LINEAR_BINS, linear_histogram

    g = torch.Generator().manual_seed(0)
    v = 190.0 + 200.0 * torch.rand(5000, generator=g)
    st = LatentStats(1, k=1, half_window=0, samples=1, seed=0)
    st.update(v.view(1, -1, 1), torch.zeros(1, len(v), dtype=torch.long),
              torch.ones(1, len(v), dtype=torch.bool), first_seq=0)  # fmt: skip
    top = float(v.max())
    ours = linear_histogram(st.hist[0].tolist(), top)
    exact = torch.histc(v, bins=LINEAR_BINS, min=0.0, max=top).long().tolist()
    assert sum(ours) == len(v) and sum(1 for n in ours if n) >= 10
    edges = torch.arange(1, LINEAR_BINS) * top / LINEAR_BINS
    near = int(((v[:, None] - edges).abs() < 0.024 * v[:, None]).sum())
    assert sum(abs(a - b) for a, b in zip(ours, exact)) <= 2 * near
    assert ours[: int(0.45 * LINEAR_BINS)] == [0] * int(0.45 * LINEAR_BINS)
    assert linear_histogram([0] * len(st.hist[0]), 0.0) == [0] * LINEAR_BINS
