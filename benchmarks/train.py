"""saesuite's JumpReLU trainer against SAELens's, in one run, on the same activations,
shape and hyperparameters; prints tokens/s (overall and once L0 ≤ 100), their ratio,
the share of the float32 matmul ceiling measured in the same run, and the final loss,
FVU and L0 of both on held-out activations.

    .venv/bin/pip install -e '.[bench]'        # sae-lens
    .venv/bin/python benchmarks/train.py [--steps 150] [--width 4096] [--quick]

`--quick` (the test suite's run): 6 steps of a 64-wide SAE on Gaussian data.

Activations: the default run's cache (results/gemma-3-270m, layer_12.res, divided by
its C) when present, else Gaussian data. Both trainers get the same batches in the
same order, held in memory, so reading costs are excluded from both.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from common import matmul_ceiling

from saesuite.data.reader import ActivationReader
from saesuite.sae.member import Member, train_step
from saesuite.spec.config import REPO_ROOT, schema_defaults
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.io import read_json
from saesuite.spec.sections import TrainConfig

CACHE = REPO_ROOT / "results" / "gemma-3-270m" / "activations"


def load_batches(
    site: str, n: int, batch: int, d_in: int, cache: bool = True
) -> tuple[torch.Tensor, str]:
    if cache and (CACHE / "manifest.json").exists():
        C = read_json(CACHE / "normalization.json")["scale"][site]
        r = ActivationReader(CACHE / "manifest.json", site, batch, 1 << 18, 0, C)
        return torch.stack([r.batch(j) for j in range(n)]), f"{site} of gemma-3-270m"
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, batch, d_in, generator=g) / d_in**0.5, "Gaussian"


def bench_spec(width: int, tokens: int, lam: float) -> Dictionary:
    return Dictionary.of("bench", "sae", 12, "res", width, tokens, lambda_=lam)


def run_ours(batches, args, hp):
    ours = {k: v for k, v in hp.items() if not k.startswith("_")}  # SAELens's own
    cfg = TrainConfig.from_dict({
        **schema_defaults("train"),
        **ours,
        "step": "auto",
        "log_every": 10**9,  # dead latents are counted on logged steps only
        "sparse_density": 0.05,
        "dead_window_tokens": 10**7,
        "threshold_param": "direct",
    })  # fmt: skip
    spec = bench_spec(args.width, args.steps * args.batch, args.l0_coef)
    m = Member(spec, batches.shape[-1], cfg, seed=0, device="cpu")
    times, l0s = [], []
    for step in range(args.steps):
        t = time.perf_counter()
        s = train_step(m, batches[step], step, cfg, 1)
        times.append(time.perf_counter() - t)
        l0s.append(s["l0"])
    return m.sae, times, l0s


def run_saelens(batches, args, hp, device: str = "cpu"):
    """SAELens's JumpReLU trainer on `batches` (on `device`), from saesuite's
    initialisation; per-step times and L0s (benchmarks/gpu.py runs it on a GPU)."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=batches.shape[-1],
            d_sae=args.width,
            jumprelu_init_threshold=hp["init_threshold"],
            jumprelu_bandwidth=hp["bandwidth"],
            l0_coefficient=args.l0_coef,
            l0_warm_up_steps=hp["_lam_warmup"],
            decoder_init_norm=None,
            device=device,
        )
    )
    # Same starting point as saesuite: Gemma Scope's init (unit-norm decoder rows,
    # W_enc = W_decᵀ, zero biases) with the same seed.
    ours = Member(
        bench_spec(args.width, args.batch, 0.0),
        batches.shape[-1],
        TrainConfig.from_dict(
            {
                **schema_defaults("train"),
                **{k: v for k, v in hp.items() if not k.startswith("_")},
                "threshold_param": "direct",
            }
        ),  # fmt: skip
        seed=0,
        device="cpu",
    ).sae
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(getattr(ours, name))
    cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=hp["lr"],
        adam_beta1=0.0,
        adam_beta2=0.999,
        lr_warm_up_steps=hp["_lr_warmup"],
        lr_scheduler_name="constant",
        lr_end=hp["lr"],
        device=device,
    )
    stamps, l0s = [], []
    original = sae.training_forward_pass

    def forward(step_input):
        out = original(step_input)
        l0s.append(float((out.feature_acts > 0).float().sum(-1).mean()))
        return out

    sae.training_forward_pass = forward

    def provider():
        for b in batches:
            stamps.append(time.perf_counter())
            yield b
        stamps.append(time.perf_counter())
        while True:  # the trainer may ask once more before it stops
            yield batches[0]

    SAETrainer(cfg, sae, provider()).fit()
    times = [b - a for a, b in zip(stamps[:-1], stamps[1:])][: args.steps]
    return sae, times, l0s[: args.steps]


def heldout(sae, x: torch.Tensor, lam: float) -> tuple[float, float, float]:
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
        recon = (x - x_hat).pow(2).sum(-1).mean()
        l0 = (f != 0).float().sum(-1).mean()
        fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return float(recon + lam * l0), float(fvu), float(l0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--l0-coef", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.width, args.batch = 6, 64, 128
    torch.set_num_threads(args.threads)
    batches, source = load_batches(
        "layer_12.res", args.steps + 2, args.batch, 640, cache=not args.quick
    )
    held = batches[-2:].reshape(-1, batches.shape[-1])
    batches = batches[: args.steps]
    d = batches.shape[-1]
    hp = {
        "lr": args.lr,
        "bandwidth": 0.001,
        "init_threshold": 0.001,
        "adam_beta1": 0.0,
        "adam_beta2": 0.999,
        "adam_eps": 1e-8,
        "batch_size": args.batch,
        "lr_warmup_steps": 1000,
        "lambda_warmup_steps": 10000,
        "max_lr_warmup_fraction": 0.05,
        "max_lambda_warmup_fraction": 0.2,
        "lr_decay": "none",
        "lr_decay_fraction": 0.0,
        # SAELens's trainer always clips the gradient norm at 1.0: same here.
        "max_grad_norm": 1.0,
    }
    hp["_lr_warmup"] = min(1000, int(0.05 * args.steps))
    hp["_lam_warmup"] = min(10000, int(0.2 * args.steps))
    ceiling = matmul_ceiling(args.batch, d, args.width)

    rows = {}
    for name, fn in (("saesuite", run_ours), ("SAELens", run_saelens)):
        sae, times, l0s = fn(batches, args, hp)
        sparse = [t for t, l0 in zip(times, l0s) if l0 <= 100]
        rows[name] = {
            "overall": args.batch * len(times) / sum(times),
            "l0<=100": args.batch * len(sparse) / sum(sparse)
            if sparse
            else float("nan"),
            "steps<=100": len(sparse),
            "final": heldout(sae, held, args.l0_coef),
        }
    flops = 10 * d * args.width  # dense training step, per token
    print(
        f"\nmachine: {platform.machine()}, {args.threads} threads, torch "
        f"{torch.__version__}; data: {source}; d_in {d}, width {args.width}, batch "
        f"{args.batch}, {args.steps} steps, lr {args.lr}, λ {args.l0_coef}; float32 "
        f"matmul ceiling {ceiling / 1e9:.0f} GFLOP/s (dense step = 10·d·width "
        "FLOP/token)"
    )
    print(
        "| trainer | tokens/s (all steps) | tokens/s (L0 ≤ 100) | steps at L0 ≤ 100 "
        "| dense-equivalent share of ceiling | held-out loss | FVU | L0 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        loss, fvu, l0 = r["final"]
        share = r["l0<=100"] * flops / ceiling
        print(
            f"| {name} | {r['overall']:.0f} | {r['l0<=100']:.0f} | {r['steps<=100']} "
            f"| {share:.0%} | {loss:.4f} | {fvu:.4f} | {l0:.1f} |"
        )
    a, b = rows["saesuite"], rows["SAELens"]
    print(
        f"\nratio saesuite / SAELens: {a['overall'] / b['overall']:.2f}× overall, "
        f"{a['l0<=100'] / b['l0<=100']:.2f}× once L0 ≤ 100"
    )


if __name__ == "__main__":
    main()
