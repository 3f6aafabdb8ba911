"""Latent sharding (saesuite.sae.shard): two gloo processes under torchrun each hold a
block of an SAE's latents; their steps, clipping and gathering must equal the same
operations on the whole SAE in one process (computed here with plain autograd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saesuite.sae.jumprelu import LossTerms
from saesuite.sae.shard import LATENT_DIM, bounds
from saesuite.sae.step import dense_step
from saesuite.spec.config import REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
import shard_worker as w  # noqa: E402

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("shards")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", str(Path(__file__).parent / "shard_worker.py"),
           str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Whole tensors from per-rank blocks; b_dec must be the same on every rank."""
    out = {}
    for k in parts[0]:
        if k in LATENT_DIM:
            out[k] = torch.cat([p[k] for p in parts], dim=LATENT_DIM[k])
        else:
            for p in parts[1:]:
                torch.testing.assert_close(p[k], parts[0][k], rtol=0, atol=0)
            out[k] = parts[0][k]
    return out


def test_bounds_cover_the_latents_in_blocks_differing_by_at_most_one():
    for width, world in ((37, 2), (37, 5), (4, 4), (2**20, 8)):
        b = [bounds(width, world, r) for r in range(world)]
        assert b[0][0] == 0 and b[-1][1] == width
        assert all(b[r][1] == b[r + 1][0] for r in range(world - 1))
        sizes = {hi - lo for lo, hi in b}
        assert max(sizes) - min(sizes) <= 1


def test_each_block_is_initialised_as_its_slice_of_the_whole_sae(ranks):
    whole = w.JumpReLUSAE(w.D, w.WIDTH).initialize(
        torch.Generator().manual_seed(w.SEED)
    )
    got = cat([r["init"] for r in ranks])
    for k, v in whole.state_dict().items():
        assert torch.equal(got[k], v), k
    assert ranks[0]["init"]["W_dec"].shape == (19, w.D)  # the blocks differ by one
    assert ranks[1]["init"]["W_dec"].shape == (18, w.D)


@pytest.mark.parametrize("step", ["dense", "sparse"])
@pytest.mark.parametrize("key", list(w.PENALTIES))
def test_sharded_steps_give_the_whole_saes_loss_and_gradients(ranks, step, key):
    full, x = w.whole(), w.batch()
    terms, kw = w.step_args(key)
    st = dense_step(full, x, terms, **kw)
    assert st.fired.any() and not st.fired.all()  # a real mix of latents
    for r in ranks:  # every process has the whole loss, L0 and FVU
        torch.testing.assert_close(
            torch.tensor(r[f"{step}/{key}"]["stats"]),
            torch.tensor([st.loss, st.reconstruction, st.l0, st.fvu]),
        )
    # each extra term is really on: it adds to the loss (the frequency penalty to the
    # quadratic one; the Matryoshka and pre-activation terms to both)
    losses = {k: ranks[0][f"{step}/{k}"]["stats"][0] for k in w.PENALTIES}
    if key == "frequency":
        assert losses[key] > losses["target_l0"]
    if key == "matryoshka_pre_act":
        assert losses[key] > losses["frequency"]
    fired = torch.cat([r[f"{step}/{key}"]["fired"] for r in ranks])
    assert torch.equal(fired, st.fired)
    grads = cat([r[f"{step}/{key}"]["grads"] for r in ranks])
    for k, p in full.named_parameters():
        assert p.grad.abs().sum() > 0, k
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("step", ["dense", "sparse"])
def test_a_sharded_skip_transcoder_gives_the_whole_ones_loss_and_gradients(ranks, step):
    """Issue 16: a skip-transcoder's latents shard as an SAE's do; its W_skip (and
    b_dec) stay whole on every process, with the same gradient on each."""
    full, x, y = w.whole_skip_transcoder(), w.batch(), w.tc_target()
    st = dense_step(full, x, LossTerms("target_l0", 0.3, 4.0), target=y)
    assert st.fired.any() and not st.fired.all()
    for r in ranks:
        torch.testing.assert_close(
            torch.tensor(r[f"{step}/skip_transcoder"]["stats"]),
            torch.tensor([st.loss, st.reconstruction, st.l0, st.fvu]),
        )
    grads = cat([r[f"{step}/skip_transcoder"]["grads"] for r in ranks])
    assert set(grads) == {k for k, _ in full.named_parameters()} >= {"W_skip"}
    for k, p in full.named_parameters():
        assert p.grad.abs().sum() > 0, k
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-5, atol=1e-6, msg=k)


def test_clipping_uses_the_norm_of_the_whole_gradient(ranks):
    full, x = w.whole(), w.batch()
    dense_step(full, x, LossTerms("l0", 0.3))
    norm = torch.nn.utils.clip_grad_norm_(full.parameters(), 0.01)
    assert norm > 0.01  # it did clip
    for r in ranks:
        assert r["norm"] == pytest.approx(float(norm), rel=1e-5)
    clipped = cat([r["clipped"] for r in ranks])
    for k, p in full.named_parameters():
        torch.testing.assert_close(clipped[k], p.grad, rtol=1e-5, atol=1e-7, msg=k)


def test_gather_puts_the_whole_sae_on_rank_0_only(ranks):
    assert ranks[1]["gathered"] is None
    want = w.whole().state_dict()
    assert set(ranks[0]["gathered"]) == set(want)
    for k, v in want.items():
        assert torch.equal(ranks[0]["gathered"][k], v), k
