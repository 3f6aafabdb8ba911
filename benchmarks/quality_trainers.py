"""The trainers the quality benchmark (`quality.py`) compares: saesuite's, under the
named recipes, and SAELens's JumpReLU trainer with its own defaults, with the
conversions between their SAEs. A helper module of that benchmark."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import yaml

from saesuite.sae.member import Member, train_step
from saesuite.spec.config import REPO_ROOT, SCHEMA_PATH, TRAIN_RECIPES, schema_defaults
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.sections import TrainConfig
from saesuite.spec.sites import Site

WIDTH, TARGET_L0, BATCH = 4096, 20.0, 1024  # the real comparison's SAE
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
