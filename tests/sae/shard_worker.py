"""Run by tests/test_shard.py under torchrun (gloo): one process's shard of a JumpReLU
SAE takes the dense and the sparse step, clips and gathers; its results go to
<out>/rank<r>.pt for the test to compare with the whole SAE on one process."""

import sys

import torch
import torch.distributed as dist

from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms, prefix_ends
from saesuite.sae.shard import bounds, clip_grad_norm_, gather_state
from saesuite.sae.step import dense_step, sparse_step

D, WIDTH, SEED = 12, 37, 5  # 37 latents: blocks of unequal size
D_OUT = 9  # a transcoder's output width, unequal to its input's
# penalty, target L0, frequency coefficient (issue 19's penalty on top of the L0 one),
# Matryoshka prefixes as fractions of the width, pre-activation loss coefficient
PENALTIES = {
    "l0": ("l0", None, 0.0, (), 0.0),
    "target_l0": ("target_l0", 4.0, 0.0, (), 0.0),
    "frequency": ("target_l0", 4.0, 0.5, (), 0.0),
    # prefixes 5, 15, 30 of 37: on two ranks (0–18, 19–36) one straddles a boundary
    "matryoshka_pre_act": ("target_l0", 4.0, 0.5, (0.14, 0.4, 0.8), 0.2),
}
MAX_FREQUENCY = 0.1
# latents the pre-activation loss treats as dead: on rank 0's block only (of two),
# so a shard with none dead must still join the sum over processes
DEAD = torch.arange(WIDTH) < 12


def step_args(
    key: str, rank: int | None = None, world: int = 1
) -> tuple[LossTerms, dict]:
    """dense_step/sparse_step's terms and keywords of PENALTIES[key], for the whole
    SAE or (rank given) the block of latents that rank holds."""
    penalty, target, mu, fractions, pre = PENALTIES[key]
    lo, hi = (0, WIDTH) if rank is None else bounds(WIDTH, world, rank)
    terms = LossTerms(
        penalty=penalty,
        lambda_=0.3,
        target_l0=target,
        frequency_coefficient=mu,
        max_frequency=MAX_FREQUENCY,
        prefixes=prefix_ends(fractions, WIDTH, lo, hi),
        pre_act_coefficient=pre,
        sharded=rank is not None,
    )
    return terms, {"dead": DEAD[lo:hi]}


def whole() -> JumpReLUSAE:
    """The SAE every process derives its block from: seeded init, then non-zero
    biases and spread thresholds so that every gradient term is exercised."""
    sae = JumpReLUSAE(D, WIDTH, bandwidth=0.5).initialize(
        torch.Generator().manual_seed(SEED)
    )
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(WIDTH, generator=g))
        sae.b_dec.copy_(0.3 * torch.randn(D, generator=g))
        sae.threshold_raw.copy_(1.0 + 2.0 * torch.rand(WIDTH, generator=g))
    return sae


def whole_skip_transcoder() -> JumpReLUSAE:
    """A skip-transcoder (D → D_OUT) to shard likewise: its W_skip is replicated."""
    tc = JumpReLUSAE(D, WIDTH, d_out=D_OUT, skip=True, bandwidth=0.5,
                     apply_b_dec_to_input=False).initialize(
        torch.Generator().manual_seed(SEED))  # fmt: skip
    g = torch.Generator().manual_seed(SEED + 3)
    with torch.no_grad():
        tc.b_enc.copy_(0.1 * torch.randn(WIDTH, generator=g))
        tc.b_dec.copy_(0.3 * torch.randn(D_OUT, generator=g))
        tc.threshold_raw.copy_(1.0 + 2.0 * torch.rand(WIDTH, generator=g))
        tc.W_skip.copy_(0.2 * torch.randn(D, D_OUT, generator=g))
    return tc


def batch() -> torch.Tensor:
    return torch.randn(64, D, generator=torch.Generator().manual_seed(SEED + 2))


def tc_target() -> torch.Tensor:
    """What the skip-transcoder predicts from batch()."""
    return torch.randn(64, D_OUT, generator=torch.Generator().manual_seed(SEED + 4))


def shard_of(full: JumpReLUSAE, rank: int, world: int) -> JumpReLUSAE:
    lo, hi = bounds(WIDTH, world, rank)
    sae = JumpReLUSAE(D, hi - lo, d_out=full.W_dec.shape[1], skip=full.skip,
                      bandwidth=0.5,
                      apply_b_dec_to_input=full.apply_b_dec_to_input)  # fmt: skip
    with torch.no_grad():
        sae.W_enc.copy_(full.W_enc[:, lo:hi])
        sae.W_dec.copy_(full.W_dec[lo:hi])
        sae.b_enc.copy_(full.b_enc[lo:hi])
        sae.b_dec.copy_(full.b_dec)
        sae.threshold_raw.copy_(full.threshold_raw[lo:hi])
        if full.skip:
            sae.W_skip.copy_(full.W_skip)
    return sae


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    lo, hi = bounds(WIDTH, world, rank)
    init = JumpReLUSAE(D, hi - lo).initialize(
        torch.Generator().manual_seed(SEED), full_width=WIDTH, start=lo
    )
    res = {"init": {k: v.clone() for k, v in init.state_dict().items()}}
    full, x = whole(), batch()
    for name, fn in (("dense", dense_step), ("sparse", sparse_step)):
        for key, (penalty, *_) in PENALTIES.items():
            sae = shard_of(full, rank, world)
            terms, kw = step_args(key, rank, world)
            st = fn(sae, x, terms, **kw)
            res[f"{name}/{key}"] = {
                "stats": [st.loss, st.reconstruction, st.l0, st.fvu],
                "fired": st.fired,
                "grads": {k: p.grad.clone() for k, p in sae.named_parameters()},
            }
            if name == "dense" and penalty == "l0":
                res["norm"] = clip_grad_norm_(sae, 0.01)
                res["clipped"] = {k: p.grad.clone() for k, p in sae.named_parameters()}
        tc = shard_of(whole_skip_transcoder(), rank, world)
        terms = LossTerms("target_l0", 0.3, 4.0, sharded=True)
        st = fn(tc, x, terms, target=tc_target())
        res[f"{name}/skip_transcoder"] = {
            "stats": [st.loss, st.reconstruction, st.l0, st.fvu],
            "fired": st.fired,
            "grads": {k: p.grad.clone() for k, p in tc.named_parameters()},
        }
    res["gathered"] = gather_state(
        shard_of(full, rank, world).state_dict(), rank, world
    )
    torch.save(res, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
