"""Quality per token (issue 19): saesuite's trainer, with Gemma Scope's recipe and with
issue 19's options, against SAELens's JumpReLU trainer with SAELens's own defaults,
on data neither of us wrote for the comparison.

    .venv/bin/pip install -e '.[bench]'                   # sae-lens
    .venv/bin/python benchmarks/quality.py synthetic [--budgets 1000000 4000000]

`synthetic`: ground truth from `sae_lens.synthetic` (a SyntheticModel: 1024 features
with Zipfian firing, a hierarchy and low-rank correlations, in 128 dimensions, true L0
≈ 10.6; width-1024 SAEs). The issue suggested 4096 features in 256 dimensions (true
L0 ≈ 20): at the 0.5M samples two CPU cores train in a minute no trainer learns that
world (MCC 0.33–0.35, chance level), so the recorded run is 4× smaller per step and
trains 1M and 4M samples (`--features 4096 --dim 256 --width 4096 --min-prob 0.002
--target-l0 20` restores it). Every trainer sees the same samples in the same order
(drawn once, kept under results/benchmarks/) and is scored by SAELens's own
evaluator (`eval_sae_on_synthetic_data`: MCC of decoder rows against the true
features, per-latent F1 as a detector of its matched feature, explained variance,
dead latents, shrinkage) on the same 50k held-out samples. Trainers with a linear L0
penalty are swept over λ; the table interpolates each metric to the target L0
(linearly in log L0) between the two runs that bracket it, and lists every run.
`--epochs 4 16` adds each recipe trained on the same number of samples drawn from
budget/E unique ones, each seen E times in the same order (the suites' cache reuse,
issue 19 item 6).

    .venv/bin/python benchmarks/quality.py real [--layer 9] [--tokens 300000]
    .venv/bin/python benchmarks/quality.py real --configfile benchmarks/reuse.yaml \
        --tokens 294912 --lens-lams --lens-quadratic --recipes "make run" --epochs 4 16

`real`: the default run's activation cache (`make run`, or just its cache:
`snakemake --profile config/profiles/local --cores 2
results/gemma-3-270m/activations/normalization.json`) at the residual, attention and
MLP sites of one layer, the same tokens in the same order for every trainer, scored by
saesuite's evaluation on the held-out split (FVU and dead/dense latents on
`--eval-tokens`, delta loss and loss recovered on the first `--loss-tokens`).
`--epochs 4 16` adds each recipe trained on the first 1/E of the same tokens, E times
(issue 19 item 6 on real activations); one epoch must then be unique tokens, so
`--tokens` may not exceed the cache: benchmarks/reuse.yaml caches 300k at layer 9.
`--lens-normalize` gives SAELens its own input normalisation (`normalize_activations:
expected_average_only_in`). With or without it, SAELens's defaults stayed at L0
2,900–4,000 of 4,096 after ~290 steps at layer 9, and at 3,130 after 2,000 steps at
the residual stream (BENCHMARKS.md), so at these budgets there is no SAELens SAE at
the target L0, whatever λ (10 to 1,000 moved its held-out L0 by one latent: with its
"step" loss only the threshold sees the L0 gradient, and Adam moves log θ ~lr a step,
whatever the gradient's size). `--lens-set` gives SAELens its own other options: with
its "Anthropic setup" (`jumprelu_sparsity_loss_mode=tanh,jumprelu_ste_to_input=True,
pre_act_loss_coefficient=3e-6`) and `--lens-normalize`, λ sets its L0 (λ 1 to 20:
L0 1,024 to 0.3 at layer 9's residual stream, not monotonically in between).
`--match-l0` compares at the L0s SAELens reaches: one saesuite SAE per SAELens SAE,
aimed at its held-out L0; `--tokens` past the cache then reads the training stream's
later epochs (`Batches`).

Trainers:
- `SAELens (defaults)`: `JumpReLUTrainingSAE` with its config's defaults (decoder rows
  of norm 0.1, W_enc = W_decᵀ, θ₀ = 0.01, ε = 0.05, the "step" L0 loss λ·L0, no
  decoder-norm constraint) and the trainer defaults SAELens's synthetic runner uses
  (Adam 0.9/0.999, lr 3e-4 constant, batch 1024), on raw activations; `--lens-lams`.
- `SAELens (defaults, quadratic L0 loss)`: the same with its "quadratic" loss toward
  the target L0 (Gemma Scope 2's), the equal-penalty setting; `--lens-quadratic`.
- `SAELens (defaults) + …`: with `--lens-normalize` its input normalisation, with
  `--lens-set k=v,…` any of its other config options, each named in the table.
- `saesuite (gemma-scope 1, λ·L0)`: the default run's train section (Gemma Scope 1's
  hyperparameters, batch 1024, lr 1e-3 with a cosine decay, gradient clipping) with
  Gemma Scope 1's penalty, inputs scaled to E‖x‖² = 1 and folded back; `--ours-lams`.
- `saesuite (<recipe>)`: the default run's train section with Gemma Scope 2's quadratic
  penalty toward the target (λ of the schema, 1), plus a named recipe's changes
  (`RECIPES` below, or `--try NAME:key=value,...`; `lambda=` sets the quadratic λ).
  "The default run's train section" is config/config.yaml's `train:` without its
  `recipe` (as before train.recipe existed); `--recipes "make run"` is exactly what
  `make run` trains (that recipe and the suite's λ).

Its helper modules: quality_trainers.py (both trainers, the recipes, the conversions)
and quality_synthetic.py (the `synthetic` comparison).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import torch
from quality_synthetic import synthetic
from quality_trainers import (
    BATCH,
    LENS,
    LENS_Q,
    RECIPES,
    TARGET_L0,
    WIDTH,
    Batches,
    check_lens_options,
    lens_as_ours,
    train_saelens,
    train_saesuite,
)

from saesuite.spec.config import REPO_ROOT, parse_settings
from saesuite.spec.sites import Site


def real(args: argparse.Namespace) -> None:
    from saesuite.data.models import load_model
    from saesuite.data.reader import ActivationReader
    from saesuite.data.tokens import load_tokens
    from saesuite.eval.passes import evaluate
    from saesuite.spec import paths
    from saesuite.spec.config import load_config
    from saesuite.spec.io import read_json
    from saesuite.spec.suite import cache_root

    check_lens_options(args.lens_set)  # before the cache and the model
    cfg = load_config(args.configfile)  # its cache; training is DEFAULT_TRAIN
    key = next(iter(cfg["models"]))
    root = str(REPO_ROOT / cfg["output_root"])
    manifest = paths.manifest(root, key)
    bucket = cfg["activations"]["shuffle_bucket"]
    readers = {
        kind: ActivationReader(manifest, Site(args.layer, kind).name, BATCH, bucket,
                               cfg["seed"], 1.0)
        for kind in args.sites
    }  # fmt: skip
    for reader in readers.values():  # before the model loads
        if args.epochs and args.tokens > reader.n_valid:
            raise SystemExit(
                f"--tokens {args.tokens:,}: one epoch of unique tokens needs at most "
                f"the cache's {reader.n_valid:,} training activations of {reader.site}"
            )
    if args.match_l0 and not (args.lens_lams or args.lens_quadratic):
        raise SystemExit("--match-l0 needs a SAELens run (--lens-lams or "
                         "--lens-quadratic) whose L0 to match")  # fmt: skip
    scales = read_json(paths.normalization(root, key))["scale"]
    model = load_model(
        {**cfg["models"][key], "device": "cpu"}, REPO_ROOT / cache_root(cfg)
    )
    ids, mask = load_tokens(paths.tokens(root, key)["eval"])
    ctx = ids.shape[1]
    ids, mask = ids[: args.eval_tokens // ctx], mask[: args.eval_tokens // ctx]
    steps = args.tokens // BATCH
    rows = []
    for kind in args.sites:
        site = Site(args.layer, kind)
        c = scales[site.name]
        reader = readers[kind]
        epochs = steps * BATCH / reader.n_valid
        print(f"{site.name}: {steps * BATCH:,} tokens, {epochs:.2f} passes over "
              f"{reader.n_valid:,} cached", flush=True)  # fmt: skip
        # raw, the same batches in the same order for every trainer
        x = Batches(reader, steps)
        trained = {}
        norm = " + its input normalisation" if args.lens_normalize else ""
        if args.lens_set:
            norm += " + " + ", ".join(f"{k}={v}" for k, v in args.lens_set.items())
        lens = [(LENS + norm, lam, None) for lam in args.lens_lams] + [
            (LENS_Q + norm, lam, TARGET_L0) for lam in args.lens_quadratic
        ]
        targets = [TARGET_L0]
        for name, lam, lens_target in lens:
            t = time.perf_counter()
            lens_sae = train_saelens(x, WIDTH, lam, lens_target, args.lens_normalize,
                                     report_every=args.report_every,
                                     options=args.lens_set)  # fmt: skip
            ours = lens_as_ours(lens_sae)
            trained[(name, lam, lens_target)] = (ours, time.perf_counter() - t)
        if args.match_l0:  # saesuite's targets: each SAELens SAE's held-out L0
            held = evaluate(model, ids, mask,
                            {str(i): (site, s) for i, (s, _) in
                             enumerate(trained.values())},
                            batch_size=8, loss_sequences=0)  # fmt: skip
            targets = [held[str(i)].metrics()["l0"] for i in range(len(trained))]
            print("  saesuite's targets: SAELens's held-out L0s "
                  + ", ".join(f"{t:.1f}" for t in targets))  # fmt: skip
        if args.epochs:  # issue 19 item 6: same total, fewer unique; ≤ the cache
            x = torch.cat([reader.batch(j) for j in range(steps)])
        for name in args.recipes:
            for e, target in itertools.product([1, *args.epochs], targets):
                t = time.perf_counter()
                xe = x if e == 1 else x[: len(x) // e].repeat(e, 1)
                sae = train_saesuite(xe, WIDTH, None, RECIPES[name], c, target)
                label = f"saesuite ({name})" if e == 1 else (
                    f"saesuite ({name}, {e} epochs of {len(x) // e:,})"
                )  # fmt: skip
                trained[(label, 0.0, target)] = (sae, time.perf_counter() - t)
        saes = {str(i): (site, sae) for i, (sae, _) in enumerate(trained.values())}
        n_loss = args.loss_tokens // ctx
        acc = evaluate(model, ids, mask, saes, batch_size=8, loss_sequences=n_loss,
                       loss_batch_size=2)  # fmt: skip
        for i, ((name, lam, tgt), (_, secs)) in enumerate(trained.items()):
            m = acc[str(i)].metrics()
            rows.append((site.name, name, lam, tgt, m, secs))
            print(site.name, name, lam, {k: m[k] for k in REAL_COLS}, flush=True)
    print(
        f"\n{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; {key}, {args.tokens:,} training tokens per SAE (width {WIDTH}), "
        f"{len(ids) * ctx:,} held-out tokens ({args.loss_tokens} for the loss)\n"
    )
    print("| site | trainer | λ | " + " | ".join(REAL_COLS) + " | train s |")
    print("|---|---|---:|" + "---:|" * (len(REAL_COLS) + 1))
    for site, name, lam, tgt, m, secs in rows:
        vals = [
            f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k]) for k in REAL_COLS
        ]
        lam_s = f"{lam:g}" if lam else f"target {tgt:.4g}"
        print(f"| {site} | {name} | {lam_s} | " + " | ".join(vals) + f" | {secs:.0f} |")


REAL_COLS = ("l0", "fvu", "delta_loss", "loss_recovered", "dead", "dense_latents")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--budgets", type=int, nargs="+", default=[1_000_000, 4_000_000])
    s.add_argument("--lens-lams", type=float, nargs="*", default=[1.0, 3.0, 10.0])
    s.add_argument("--ours-lams", type=float, nargs="*", default=[])
    s.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=RECIPES)
    s.add_argument("--features", type=int, default=1024)
    s.add_argument("--dim", type=int, default=128)
    s.add_argument("--width", type=int, default=1024)
    s.add_argument("--min-prob", type=float, default=0.005,
                   help="the rarest feature's firing probability (Zipf, exponent 0.5, "
                   "from 0.5); sets the true L0")  # fmt: skip
    s.add_argument("--target-l0", type=float, default=10.0)
    s.add_argument("--epochs", type=int, nargs="*", default=[], metavar="E",
                   help="also train each recipe on budget/E unique samples seen E "
                   "times (the suites' cache reuse)")  # fmt: skip
    s.add_argument("--quick", action="store_true", help="tiny shapes (the test)")
    r = sub.add_parser("real")
    r.add_argument("--layer", type=int, default=9)
    r.add_argument("--sites", nargs="+", default=["res", "att", "mlp"])
    r.add_argument("--tokens", type=int, default=300_000)
    r.add_argument("--eval-tokens", type=int, default=16_384)
    r.add_argument("--loss-tokens", type=int, default=512)
    r.add_argument("--lens-lams", type=float, nargs="*", default=[1.0])
    r.add_argument("--recipes", nargs="*", default=["default run"], choices=RECIPES)
    r.add_argument(
        "--configfile",
        default=REPO_ROOT / "config" / "config.yaml",
        help="whose cache (benchmarks/reuse.yaml: 300k unique tokens)",
    )
    r.add_argument(
        "--epochs",
        type=int,
        nargs="*",
        default=[],
        metavar="E",
        help="also train each recipe on the first tokens/E of the same "
        "tokens, E times (--tokens at most the cache: 1 epoch unique)",
    )
    r.add_argument(
        "--lens-normalize",
        action="store_true",
        help="SAELens with its normalize_activations="
        "'expected_average_only_in' (else raw inputs, its default)",
    )
    r.add_argument(
        "--match-l0",
        action="store_true",
        help="saesuite's target L0s: each SAELens SAE's held-out L0 (the "
        "equal-L0 comparison: one saesuite SAE per SAELens SAE and recipe), else "
        "the fixed target",
    )
    r.add_argument(
        "--report-every",
        type=int,
        default=250,
        metavar="STEPS",
        help="print SAELens's batch L0 every STEPS steps (0: never)",
    )
    r.add_argument(
        "--lens-set",
        type=parse_settings,
        default={},
        metavar="KEY=VALUE,...",
        help="SAELens's own config options for its runs (jumprelu_ste_to_input, "
        "jumprelu_sparsity_loss_mode, pre_act_loss_coefficient, …), named in the "
        "table",
    )
    for p in (s, r):
        p.add_argument("--lens-quadratic", type=float, nargs="*", default=[1.0],
                       metavar="λ", help="SAELens with its quadratic loss toward the "
                       "target L0 (Gemma Scope 2's), at these λ")  # fmt: skip
        p.add_argument("--try", dest="extra", action="append", default=[],
                       metavar="NAME:KEY=VALUE,...",
                       help="an extra recipe over the default run's")  # fmt: skip
    args = ap.parse_args(argv)
    for spec in args.extra:  # e.g. "lr3e-4:lr=3e-4,b_dec_init=mean"
        name, _, sets = spec.partition(":")
        RECIPES[name] = parse_settings(sets)
        args.recipes = [*args.recipes, name]
    (synthetic if args.what == "synthetic" else real)(args)


if __name__ == "__main__":
    main()
