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
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import platform
import time
from typing import Any

import torch
import yaml

from saesuite.sae.member import Member, train_step
from saesuite.spec.config import (
    REPO_ROOT,
    SCHEMA_PATH,
    TRAIN_RECIPES,
    parse_settings,
    schema_defaults,
)
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sections import TrainConfig
from saesuite.spec.sites import Site

WIDTH, TARGET_L0, EVAL_SAMPLES, BATCH = 4096, 20.0, 50_000, 1024
LENS, LENS_Q = "SAELens (defaults)", "SAELens (defaults, quadratic L0 loss)"
SITE = "layer_0.res"

# The default run's train section over the schema's defaults, without its recipe: what
# `make run` trained before train.recipe (Gemma Scope 1's hyperparameters with the
# laptop-sized batch, lr and schedule); RECIPES["make run"] adds the recipe back.
DEFAULT_TRAIN = (
    schema_defaults("train")
    | yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["train"]
)
# λ of the quadratic penalty: the schema's default for a target_l0 ladder
DEFAULT_LAMBDA = yaml.safe_load(SCHEMA_PATH.read_text())["$defs"]["sparsity"][
    "properties"
]["lambda"]["default"]
# λ of the default run's quadratic penalty (its suite groups share it)
CONFIG_LAMBDA = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())[
    "suite"
][0]["sparsity"]["lambda"]
# Issue 19's options, each on top of the default run's recipe (Gemma Scope 1's
# hyperparameters with Gemma Scope 2's quadratic penalty toward the target L0).
RECIPES: dict[str, dict[str, Any]] = {
    "default run": {},
    "encoder 0.1": {"encoder_init_scale": 0.1},
    "b_dec mean": {"b_dec_init": "mean"},
    "freq 0.1": {"frequency_coefficient": 1.0, "max_frequency": 0.1},
}
# The best of those (BENCHMARKS.md, 2026-12-01), then each of the later options on it.
# The pre-activation loss's window is 100k tokens (~100 steps): its default, 1M, is
# longer than these runs' dead latents take to show.
CANDIDATE = {"lambda": 0.01, "encoder_init_scale": 0.1}
SAELENS_RECIPE = {
    "decoder_norm": "free", "decoder_init_norm": 0.1, "encoder_init_scale": 0.1,
    "init_threshold": 0.003, "bandwidth": 0.015, "adam_beta1": 0.9, "lr": 3e-4,
    "lr_decay": "none", "lr_warmup_steps": 0, "lambda_warmup_steps": 0,
    "max_grad_norm": None, "lambda": 0.086,
}  # fmt: skip
PRE_ACT = {"pre_act_window_tokens": 100_000}
RECIPES |= {
    "λ 0.01, encoder 0.1": CANDIDATE,
    "… pre-act 1e-3": CANDIDATE | PRE_ACT | {"pre_act_coefficient": 1e-3},
    "… pre-act 1e-2": CANDIDATE | PRE_ACT | {"pre_act_coefficient": 1e-2},
    "… pre-act 1e-1": CANDIDATE | PRE_ACT | {"pre_act_coefficient": 1e-1},
    "… Matryoshka 1/4": CANDIDATE | {"matryoshka_fractions": [0.25]},
    "… Matryoshka 1/16, 1/4": CANDIDATE | {"matryoshka_fractions": [0.0625, 0.25]},
    # SAELens's JumpReLU recipe in saesuite's trainer, in normalised units: its
    # init (free decoder rows of norm 0.1, W_enc = W_decᵀ), θ₀ 0.01 and ε 0.05 on
    # raw inputs of RMS norm ~3.4 here (0.003, 0.015), Adam 0.9/0.999 at a constant
    # 3e-4 without warm-ups or clipping, and its quadratic λ 1 on raw inputs (the
    # reconstruction term is E‖x‖² ≈ 11.6 times ours: λ 0.086)
    "SAELens's recipe": SAELENS_RECIPE,
    "… λ 0.01": SAELENS_RECIPE | {"lambda": 0.01},
    "… lr 1e-3 cosine, clip 1": SAELENS_RECIPE
    | {"lr": 1e-3, "lr_decay": "cosine", "max_grad_norm": 1.0},
    "… Matryoshka 1/16, 1/4, pre-act 1e-2": CANDIDATE
    | PRE_ACT
    | {"matryoshka_fractions": [0.0625, 0.25], "pre_act_coefficient": 1e-2},
    # exactly what `make run` trains: the config's recipe and its suite's λ
    "make run": TRAIN_RECIPES[DEFAULT_TRAIN["recipe"]] | {"lambda": CONFIG_LAMBDA},
}


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


def to_saelens(sae_raw) -> Any:
    """Our raw-space SAE as a SAELens JumpReLU SAE (how SAELens loads our releases)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    t = sae_raw.release_tensors()
    d, w = t["W_enc"].shape
    out = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=w, apply_b_dec_to_input=False))
    out.load_state_dict(t)
    return out


def train_saesuite(
    x: torch.Tensor, width: int, lam: float | None, recipe: dict,
    scale: float | None = None, target: float | None = None,
) -> Any:  # fmt: skip
    """Trained on x / C (C = `scale`, or what gives E‖x/C‖² = 1, as the cache does),
    returned folded onto raw x. λ None: the default run's penalty (Gemma Scope 2's
    quadratic one toward `target`, default TARGET_L0, the recipe's λ); else Gemma
    Scope 1's λ·L0. `x` may be any sequence of rows sliced a batch at a time
    (`Batches`). Returns our JumpReLUSAE; `to_saelens` makes it SAELens's."""
    recipe = dict(recipe)
    q_lambda = recipe.pop("lambda", DEFAULT_LAMBDA)  # the suite group's, not train's
    cfg = DEFAULT_TRAIN | recipe | {"log_every": 10**9, "device": "cpu"}
    cfg = TrainConfig.from_dict(cfg)
    scale = scale or float(x.pow(2).sum(-1).mean().sqrt())
    site = Site.parse(SITE)
    if lam is None:
        rung = {"lambda_": q_lambda, "target_l0": target or TARGET_L0}
    else:
        rung = {"lambda_": lam}
    spec = Dictionary.of("q", "sae", site.layer, site.kind, width, len(x), **rung)
    m = Member(spec, x.shape[1], cfg, seed=0, device="cpu")
    for step in range(m.schedule.total_steps):
        train_step(m, x[step * BATCH : (step + 1) * BATCH] / scale, step, cfg, 1)
    return m.sae.fold_normalization(scale)


def train_saelens(
    x: torch.Tensor, width: int, lam: float, target: float | None = None,
    normalize: bool = False, report_every: int = 0, options: dict | None = None,
) -> Any:  # fmt: skip
    """SAELens's JumpReLU with its defaults and its "step" L0 loss (λ·L0), or with
    `target` its "quadratic" one (Gemma Scope 2's, λ·(2/L0*)·(L0 − L0*)²).
    `normalize`: SAELens's own `normalize_activations="expected_average_only_in"`
    (inputs scaled to mean norm √d_in, estimated by its trainer from the first
    batches, folded back at the end), the one setting changed from its defaults.
    `options`: other JumpReLUTrainingSAEConfig fields, SAELens's own documented
    alternatives (e.g. its "Anthropic setup": jumprelu_sparsity_loss_mode=tanh,
    jumprelu_ste_to_input=True, pre_act_loss_coefficient=3e-6)."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    mode = {} if target is None else {
        "jumprelu_sparsity_loss_mode": "quadratic", "target_l0": target
    }  # fmt: skip
    if normalize:
        mode["normalize_activations"] = "expected_average_only_in"
    mode |= options or {}
    n_norm = min(100, len(x) // BATCH)  # batches its trainer reads for the estimate
    sae = JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(
            d_in=x.shape[1], d_sae=width, l0_coefficient=lam, **mode
        )
    )
    # The trainer settings of sae_lens.synthetic.train_toy_sae (its synthetic-data
    # defaults), fed our samples instead of its own draws.
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=len(x), device="cpu", autocast=False, lr=3e-4,
        lr_end=3e-4, lr_scheduler_name="constant", lr_warm_up_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1,
        train_batch_size_samples=BATCH, dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=n_norm,
    )  # fmt: skip

    def provider():
        if normalize:  # what its estimate reads first, then the training stream
            yield from (x[i * BATCH : (i + 1) * BATCH] for i in range(n_norm))
        for i in range(0, len(x), BATCH):
            yield x[i : i + BATCH]
        while True:  # the trainer may ask once more before it stops
            yield x[:BATCH]

    class Reporting(SAETrainer):
        """SAELens's trainer, unchanged, printing the L0 of its training batches
        every `report_every` steps (how far from the sparse regime it is)."""

        def _train_step(self, sae, sae_in):
            out = super()._train_step(sae, sae_in)
            if report_every and (self.n_training_steps + 1) % report_every == 0:
                l0 = float(out.feature_acts.bool().float().sum(-1).mean())
                print(f"  SAELens step {self.n_training_steps + 1}: batch L0 "
                      f"{l0:.1f}", flush=True)  # fmt: skip
            return out

    Reporting(cfg, sae, provider()).fit()
    return sae


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


def at_target(runs: list[dict[str, float]]) -> dict[str, float] | None:
    """Each metric at L0 = TARGET_L0, linear in log L0 between the bracketing runs;
    one run within 10 % of the target stands for itself."""
    runs = sorted(runs, key=lambda r: r["L0"])
    if len(runs) == 1:
        return runs[0] if abs(runs[0]["L0"] / TARGET_L0 - 1) < 0.1 else None
    for a, b in zip(runs, runs[1:]):
        if a["L0"] <= TARGET_L0 <= b["L0"]:
            t = (math.log(TARGET_L0) - math.log(a["L0"])) / (
                math.log(b["L0"]) - math.log(a["L0"])
            )
            return {k: a[k] + t * (b[k] - a[k]) for k in a}
    return None


def synthetic(args: argparse.Namespace) -> None:
    global TARGET_L0
    TARGET_L0 = args.target_l0
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
            lambda x, lam: train_saelens(x, width, lam, TARGET_L0),
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
                train_saesuite(x, width, None, r)
            ),
            [None],
        )
    for e in args.epochs:  # issue 19, item 6: the same total samples, repeated
        for name in args.recipes:
            trainers[f"saesuite ({name}, {e} epochs)"] = (
                lambda x, lam, r=RECIPES[name], e=e: to_saelens(
                    train_saesuite(x[: len(x) // e].repeat(e, 1), width, None, r)
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
            rows.append((budget, name, runs, at_target(runs)))
    print_tables(rows, model, width)


def fmt(v: float, col: str) -> str:
    return f"{v:.0f}" if col in ("dead", "dense_latents") else f"{v:.3f}"


def print_tables(rows, model, width: int) -> None:
    true_l0 = rows[0][2][0]["true L0"]
    print(
        f"\n{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; {model.cfg.num_features} true features in {model.cfg.hidden_dim} "
        f"dimensions, true L0 {true_l0:.1f}; SAE width {width}\n"
    )
    cols = ("MCC", "F1", "EV", "dead", "shrinkage")
    print(f"At L0 = {TARGET_L0:g} (interpolated between the bracketing λ):\n")
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
            lam = f"{r['λ']:g}" if r["λ"] else f"target {TARGET_L0:g}"
            print(f"| {budget:,} | {name} | {lam} | {r['L0']:.1f} | "
                  + " | ".join(vals) + f" | {r['s']:.0f} |")  # fmt: skip


def lens_as_ours(sae) -> Any:
    """A SAELens JumpReLU SAE (raw input, b_dec subtracted first, free decoder norms)
    as saesuite's released form: the same function, b_dec folded into b_enc."""
    from saesuite.sae.jumprelu import JumpReLUSAE

    ours = JumpReLUSAE(sae.cfg.d_in, sae.cfg.d_sae)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(ours, name).copy_(getattr(sae, name).float())
        ours.threshold_raw.copy_(sae.threshold.float())
    return ours.fold_normalization(1.0)


class Batches:
    """The first `steps` batches of a cache reader's endless stream (its epochs back
    to back, each reshuffled as the training jobs read them), read one batch per
    slice: 4M tokens of a 640-wide site would be 10 GB as one tensor."""

    def __init__(self, reader: Any, steps: int) -> None:
        self.reader, self.steps = reader, steps
        self.shape = (steps * BATCH, reader.d_in)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        j, rest = divmod(rows.start or 0, BATCH)
        if rest or rows.stop - (rows.start or 0) != BATCH or j >= self.steps:
            raise IndexError(f"Batches reads whole batches of {BATCH}, not {rows}")
        return self.reader.batch(j).clone()


def check_lens_options(options: dict[str, Any]) -> None:
    """--lens-set names only fields of SAELens's JumpReLUTrainingSAEConfig."""
    from sae_lens import JumpReLUTrainingSAEConfig

    known = {f.name for f in dataclasses.fields(JumpReLUTrainingSAEConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SystemExit(
            f"--lens-set: SAELens's JumpReLUTrainingSAEConfig has no "
            f"{', '.join(unknown)} (it has {', '.join(sorted(known))})"
        )


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
