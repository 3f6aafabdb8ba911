"""The quality benchmark's synthetic comparison (`quality.py synthetic`): ground truth
from `sae_lens.synthetic`, every trainer on the same samples, scored by SAELens's own
evaluator and interpolated to the target L0. A helper module of that benchmark."""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
from quality_trainers import (
    LENS,
    LENS_Q,
    RECIPES,
    to_saelens,
    train_saelens,
    train_saesuite,
)

from saesuite.spec.config import REPO_ROOT

EVAL_SAMPLES = 50_000  # held-out samples each SAE is scored on


def synthetic_model(n: int, d: int, min_prob: float):
    from sae_lens.synthetic import (
        HierarchyConfig,
        LowRankCorrelationConfig,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    cfg = SyntheticModelConfig(
        num_features=n,
        hidden_dim=d,
        firing_probability=ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=0.5, min_prob=min_prob
        ),
        hierarchy=HierarchyConfig(
            total_root_nodes=n // 64,
            branching_factor=4,
            max_depth=2,
            mutually_exclusive_portion=0.5,
        ),  # fmt: skip
        correlation=LowRankCorrelationConfig(rank=32, correlation_scale=0.1, seed=0),
        std_firing_magnitudes=0.2,
        mean_firing_magnitudes=1.0,
        seed=0,
    )
    return SyntheticModel(cfg)


@torch.no_grad()
def draw(model, n: int, seed: int, keep: bool = True) -> torch.Tensor:
    """n samples; with `keep`, kept under results/benchmarks/ (drawing 2M takes
    minutes here), named by the model's config and the seed; the first n of a longer
    draw are its draw of n (the stream is sequential)."""
    from safetensors.torch import load_file, save_file

    from saesuite.spec.hashing import stable_hash
    from saesuite.spec.io import atomic_path

    if not keep:
        torch.manual_seed(seed)
        return torch.cat([model.sample(min(4096, n - i)) for i in range(0, n, 4096)])
    folder = REPO_ROOT / "results" / "benchmarks"
    tag = stable_hash({"model": model.cfg.to_dict(), "seed": seed})[:12]
    for f in sorted(folder.glob(f"synthetic_{tag}_*.safetensors")):
        if int(f.stem.rsplit("_", 1)[1]) >= n:
            return load_file(str(f))["x"][:n]
    torch.manual_seed(seed)
    x = torch.cat([model.sample(min(4096, n - i)) for i in range(0, n, 4096)])
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"synthetic_{tag}_{n}.safetensors") as tmp:
        save_file({"x": x.contiguous()}, str(tmp))
    return x


def score(sae, model, quick: bool) -> dict[str, float]:
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    torch.manual_seed(12345)  # the same held-out draws for every SAE
    with torch.no_grad():
        r = eval_sae_on_synthetic_data(
            sae, model.feature_dict, model.activation_generator,
            num_samples=5000 if quick else EVAL_SAMPLES, batch_size=5000,
        )  # fmt: skip
    return {
        "L0": r.sae_l0,
        "MCC": r.mcc,
        "F1": r.classification.f1_score,
        "EV": r.explained_variance,
        "dead": r.dead_latents,
        "shrinkage": r.shrinkage,
        "true L0": r.true_l0,
    }


def at_target(runs: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """Each metric at L0 = target, linear in log L0 between the bracketing runs;
    one run within 10 % of the target stands for itself."""
    runs = sorted(runs, key=lambda r: r["L0"])
    if len(runs) == 1:
        return runs[0] if abs(runs[0]["L0"] / target - 1) < 0.1 else None
    for a, b in zip(runs, runs[1:]):
        if a["L0"] <= target <= b["L0"]:
            t = (math.log(target) - math.log(a["L0"])) / (
                math.log(b["L0"]) - math.log(a["L0"])
            )
            return {k: a[k] + t * (b[k] - a[k]) for k in a}
    return None


def synthetic(args: argparse.Namespace) -> None:
    target = args.target_l0
    if args.quick:
        args.features, args.dim, args.width = 512, 64, 256
    width = args.width
    model = synthetic_model(args.features, args.dim, args.min_prob)
    t = time.perf_counter()
    data = draw(model, max(args.budgets), seed=1, keep=not args.quick)
    print(f"drew {len(data):,} samples in {time.perf_counter() - t:.0f} s")
    trainers = {}
    if args.lens_lams:
        trainers[LENS] = (lambda x, lam: train_saelens(x, width, lam), args.lens_lams)
    if args.lens_quadratic:
        trainers[LENS_Q] = (
            lambda x, lam: train_saelens(x, width, lam, target),
            args.lens_quadratic,
        )
    if args.ours_lams:  # Gemma Scope 1's linear penalty, swept
        trainers["saesuite (gemma-scope 1, λ·L0)"] = (
            lambda x, lam: to_saelens(train_saesuite(x, width, lam, {})),
            args.ours_lams,
        )
    for name in args.recipes:
        trainers[f"saesuite ({name})"] = (
            lambda x, lam, r=RECIPES[name]: to_saelens(
                train_saesuite(x, width, None, r, target=target)
            ),
            [None],
        )
    for e in args.epochs:  # issue 19, item 6: the same total samples, repeated
        for name in args.recipes:
            trainers[f"saesuite ({name}, {e} epochs)"] = (
                lambda x, lam, r=RECIPES[name], e=e: to_saelens(
                    train_saesuite(
                        x[: len(x) // e].repeat(e, 1), width, None, r, target=target
                    )
                ),
                [None],
            )
    rows = []
    for budget in args.budgets:
        for name, (fn, lams) in trainers.items():
            runs = []
            for lam in lams:
                t = time.perf_counter()
                sae = fn(data[:budget], lam)
                res = score(sae, model, args.quick) | {"λ": lam or 0.0}
                res["s"] = time.perf_counter() - t
                shown = "  ".join(f"{k} {v:.3f}" for k, v in res.items())
                print(f"{budget:>9,} {name:<34} {shown}", flush=True)
                runs.append(res)
            rows.append((budget, name, runs, at_target(runs, target)))
    print_tables(rows, model, width, target)


def fmt(v: float, col: str) -> str:
    return f"{v:.0f}" if col in ("dead", "dense_latents") else f"{v:.3f}"


def print_tables(rows, model, width: int, target: float) -> None:
    true_l0 = rows[0][2][0]["true L0"]
    print(
        f"\n{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; {model.cfg.num_features} true features in {model.cfg.hidden_dim} "
        f"dimensions, true L0 {true_l0:.1f}; SAE width {width}\n"
    )
    cols = ("MCC", "F1", "EV", "dead", "shrinkage")
    print(f"At L0 = {target:g} (interpolated between the bracketing λ):\n")
    print("| samples | trainer | " + " | ".join(cols) + " |")
    print("|---:|---|" + "---:|" * len(cols))
    for budget, name, _, r in rows:
        blank = ["(not bracketed)"] + [""] * (len(cols) - 1)
        vals = [fmt(r[c], c) for c in cols] if r else blank
        print(f"| {budget:,} | {name} | " + " | ".join(vals) + " |")
    print("\nEvery run:\n")
    print("| samples | trainer | λ | L0 | " + " | ".join(cols) + " | s |")
    print("|---:|---|---:|---:|" + "---:|" * (len(cols) + 1))
    for budget, name, runs, _ in rows:
        for r in runs:
            vals = [fmt(r[c], c) for c in cols]
            lam = f"{r['λ']:g}" if r["λ"] else f"target {target:g}"
            print(f"| {budget:,} | {name} | {lam} | {r['L0']:.1f} | "
                  + " | ".join(vals) + f" | {r['s']:.0f} |")  # fmt: skip
