"""The pre-flight plan (`saesuite plan --configfile …`): per model and stage, before
anything runs, how many SAEs, how many tokens, how many bytes of activation cache and
how many FLOPs — and the GPU-hours those FLOPs take at a given effective throughput.

FLOP model (estimates, stated so they can be checked):
- extract: a forward pass to the deepest site, 2·N_params·(L_max + 1)/n_layers per
  token (embedding and head left out);
- train: the dense-equivalent JumpReLU step, 10·d_in·width per token per SAE (the
  sparse step does less once L0 ≪ width: BENCHMARKS.md);
- evaluate: per layer's job (`resources.evaluate_estimate`) a pass over
  `evaluate.tokens` and, over `evaluate.loss_tokens`, one full pass (2·N_params per
  token) per SAE plus the clean and the zero-ablation passes, repeated per group of
  SAEs that fits a GPU beside the model; a row per evaluation, each counted as if it
  ran alone (an upper bound: evaluations through the same model, data and layer share
  one job and its clean passes, Workflow.eval_passes);
- dashboards: per layer's job (`resources.dashboards_estimate`) a truncated pass
  over `dashboards.tokens`, every SAE's encoding, and its latents' logit effects
  (2·d_model·vocabulary per latent);
- rollouts: 2·N_params per generated token.
Shapes come from saesuite's table of known models; an unknown model gets no FLOPs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from saesuite.cluster.memory import (
    clt_bytes,
    clt_flops,
    forward_flops,
    n_prefixes,
    sae_gpu_bytes,
    shards_needed,
    train_flops,
)
from saesuite.cluster.resources import (
    cache_plan,
    clt_eval_flops,
    dashboards_estimate,
    evaluate_estimate,
    finetune_estimate,
    train_group_bytes,
    train_nproc,
)
from saesuite.spec.checks import evaluations, finetuned_specs, transfer_checks
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.known_models import known_shape
from saesuite.spec.suite import (
    expand_spanning,
    expand_suite,
    has_dashboards,
    sequences,
)


def preflight(config: dict[str, Any], tflops: float) -> pd.DataFrame:
    """One row per model × stage: saes, tokens, cache_bytes, flops, gpu_hours."""
    suite = expand_suite(config)
    spanning = expand_spanning(config)
    checks = transfer_checks(config, suite)
    tuned = finetuned_specs(config, suite, checks)
    rows = _extract_and_train_rows(config, suite, spanning)
    rows += _spanning_rows(config, spanning)
    rows += _finetune_rows(config, checks, tuned)
    rows += _evaluation_rows(config, suite, tuned)
    rows += _dashboard_rows(config, suite)
    rows += _rollout_rows(config, checks)
    df = pd.DataFrame(rows)
    df["gpu_hours"] = df["flops"] / (tflops * 1e12) / 3600
    return df


def _add(
    rows: list, model: str, stage: str, saes: int, tokens: int, cache, flops
) -> None:
    rows.append(
        {
            "model": model,
            "stage": stage,
            "saes": saes,
            "tokens": tokens,
            "cache_bytes": cache,
            "flops": flops,
        }
    )


def _spanning_rows(config: dict[str, Any], spanning: list[Dictionary]) -> list:
    """A train_clt and an evaluate_clt row per model of CLTs: every CLT's training
    (`clt_flops`) and its replacement-model evaluation (`clt_eval_estimate`)."""
    rows: list = []
    for model in sorted({d.model for d in spanning}):
        mine = [d for d in spanning if d.model == model]
        shape = known_shape(config["models"][model]["source"])
        flops = ev = None
        if shape:
            flops = sum(
                clt_flops(c, shape.site_width(c.reads[0].kind),
                          shape.site_width(c.writes[0].kind))
                for c in mine
            )  # fmt: skip
            ev = sum(clt_eval_flops(config, c) or 0 for c in mine)
        tokens = sum(c.tokens for c in mine)
        _add(rows, model, "train_clt", len(mine), tokens, None, flops)
        _add(rows, model, "evaluate_clt", len(mine), 0, None, ev)
    return rows


def _extract_and_train_rows(
    config: dict[str, Any], suite: list[Dictionary], spanning: list[Dictionary]
) -> list:
    """Per model the extraction (every site its dictionaries read or write, CLTs'
    included) and the per-layer dictionaries' training."""
    train_tok = sequences(config, "train") * config["data"]["context_size"]
    rows = []
    for model in sorted({s.model for s in suite + spanning}):
        specs: list[Dictionary] = [s for s in suite if s.model == model]
        shape = known_shape(config["models"][model]["source"])
        every = specs + [s for s in spanning if s.model == model]
        sites = sorted(
            {(x.layer, x.kind) for s in every for x in (*s.reads, *s.writes)}
        )
        last = max(layer for layer, _ in sites)
        cache = flops = None
        if shape:
            widths = {f"{L}.{k}": shape.site_width(k) for L, k in sites}
            dtype = config["activations"]["dtype"]
            cache = sum(cache_plan(widths, train_tok, dtype).values())
            flops = forward_flops(shape, train_tok, last + 1)
        _add(rows, model, "extract", 0, train_tok, cache, flops)
        flops = None
        if shape:
            by_site = {
                k: [s for s in specs if s.site == k] for k in {s.site for s in specs}
            }
            flops = sum(train_flops(v, shape.site_width(k)) for k, v in by_site.items())
        if specs:
            tokens = sum(s.tokens for s in specs)
            _add(rows, model, "train", len(specs), tokens, None, flops)
    return rows


def _finetune_rows(config: dict[str, Any], checks, tuned: list[Dictionary]) -> list:
    """Gemma Scope 2's IT SAEs (transfer.finetune_share): one job per layer."""
    rows = []
    for c in checks:  # Gemma Scope 2's IT SAEs (transfer.finetune_share)
        mine = [s for s in tuned if s.model == c.finetuned]
        if not mine:
            continue
        shape = known_shape(config["models"][c.target]["source"])
        flops = None
        if shape:  # one job per layer (saesuite.cluster.resources)
            flops = sum(
                finetune_estimate(config, c.target, [s for s in mine if s.layer == L])[
                    1
                ]
                for L in sorted({s.layer for s in mine})
            )
        _add(
            rows,
            c.target,
            f"finetune ({c.base} SAEs)",
            len(mine),
            sum(s.tokens for s in mine),
            None,
            flops,
        )
    return rows


def _evaluation_rows(
    config: dict[str, Any], suite: list[Dictionary], tuned: list[Dictionary]
) -> list:
    ev = config["evaluate"]
    eval_tok = sequences(config, "eval") * config["data"]["context_size"]
    rows = []
    for e in evaluations(config, suite):
        specs = [
            s
            for s in suite + tuned
            if s.model == e.trained_on and (e.layers is None or s.layer in e.layers)
        ]
        shape = known_shape(config["models"][e.evaluated_on]["source"])
        n_tok = ev["tokens"] or (
            eval_tok if e.data == "text" else config["transfer"]["tokens"]
        )
        flops = None
        # one job per layer, as the workflow runs them (saesuite.cluster.resources)
        if shape:
            layers = sorted({s.layer for s in specs})
            flops = sum(
                evaluate_estimate(
                    config, e.evaluated_on, e.data, [s for s in specs if s.layer == L]
                )[1]
                for L in layers
            )
        stage = (
            "evaluate"
            if e.trained_on == e.evaluated_on and e.data == "text"
            else "transfer"
        )
        _add(
            rows,
            e.evaluated_on,
            f"{stage} ({e.trained_on} SAEs, {e.data})",
            len(specs),
            n_tok,
            None,
            flops,
        )
    return rows


def _dashboard_rows(config: dict[str, Any], suite: list[Dictionary]) -> list:
    eval_tok = sequences(config, "eval") * config["data"]["context_size"]
    rows = []
    for model in sorted({s.model for s in suite}):  # one dashboards job per layer
        layers = sorted(
            {
                s.layer
                for s in suite
                if s.model == model and has_dashboards(config, s.layer)
            }
        )
        if not layers:
            continue
        shape = known_shape(config["models"][model]["source"])
        flops = None
        if shape:
            flops = sum(
                dashboards_estimate(
                    config,
                    model,
                    [s for s in suite if s.model == model and s.layer == L],
                )[1]
                for L in layers
            )
        _add(
            rows,
            model,
            "dashboards",
            sum(s.model == model and s.layer in layers for s in suite),
            min(config["dashboards"]["tokens"], eval_tok),
            None,
            flops,
        )
    return rows


def _rollout_rows(config: dict[str, Any], checks) -> list:
    rows = []
    rollout_models = {c.target for c in checks}
    for model in sorted(rollout_models):
        shape = known_shape(config["models"][model]["source"])
        tok = config["transfer"]["tokens"]
        _add(
            rows,
            model,
            "rollouts",
            0,
            tok,
            None,
            forward_flops(shape, tok) if shape else None,
        )
    return rows


def gpu_memory(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(sharded, problems) for training on GPUs of `resources.gpu_mem_gb`, less
    headroom. A job trains its SAEs in groups that fit, one group after another; an
    SAE too wide for a GPU is sharded by latents over the job's GPUs (train.nproc or
    resources.nproc_by_width). `sharded` names those; `problems` those that do not fit
    even so, with the GPUs they would need. Both empty when not on GPUs."""
    budget = train_group_bytes(config)
    if budget is None:
        return [], []
    jobs: dict[tuple[str, int, str], list[Dictionary]] = {}
    for s in expand_suite(config):
        jobs.setdefault((s.model, s.layer, s.job), []).append(s)
    found: dict[tuple, list[int]] = {}
    batch, pre = (
        config["train"]["batch_size"],
        n_prefixes(config["train"]["matryoshka_fractions"]),
    )
    for (model, layer, _), specs in sorted(jobs.items()):
        shape = known_shape(config["models"][model]["source"])
        if shape is None:
            continue
        nproc = train_nproc(config, [s.width for s in specs])
        d_in = shape.site_width(specs[0].input_site.kind)
        for site, width, skip in sorted({(s.family, s.width, s.skip) for s in specs}):
            if (
                sae_gpu_bytes(batch, d_in, width, nproc, skip=skip, prefixes=pre)
                > budget
            ):
                key = (model, site, width, nproc, skip, d_in)
                found.setdefault(key, []).append(layer)
    sharded, problems = [], []
    for d in expand_spanning(config):  # a CLT or crosscoder: one GPU, unsharded
        shape = known_shape(config["models"][d.model]["source"])
        if shape is None:
            continue
        d_in, d_out = (shape.site_width(x[0].kind) for x in (d.reads, d.writes))
        need = clt_bytes(batch, len(d.layers), d_in, d_out, d.width)
        if need > budget:
            problems.append(
                f"{d.model} {d.path}: needs {need / 1e9:.0f} GB on one GPU, "
                f"{budget / 1e9:.0f} GB usable of resources.gpu_mem_gb; a CLT "
                "is not sharded over GPUs: lower its width or train.batch_size"
            )
    for (model, site, width, nproc, skip, d_in), layers in found.items():
        where = f"{model} {site} width {width} (layers {', '.join(map(str, layers))})"
        need = sae_gpu_bytes(
            batch, d_in, width, nproc, sharded=True, skip=skip, prefixes=pre
        )
        if nproc > 1 and need <= budget:
            sharded.append(f"{where}: {need / 1e9:.0f} GB per GPU over {nproc} GPUs")
            continue
        least = shards_needed(batch, d_in, width, budget, pre)
        problems.append(
            f"{where}: needs {need / 1e9:.0f} GB per GPU on {nproc} GPU(s), "
            f"{budget / 1e9:.0f} GB usable of resources.gpu_mem_gb; set "
            f'resources.nproc_by_width {{"{width}": {least or "?"}}} or more'
        )
    return sharded, problems


def num(v: Any, unit: str = "") -> str:
    """1.41e+16 → "14.1 P"; None or NaN → "?"."""
    if v is None or pd.isna(v):
        return "?"
    for div, suffix in (
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ):
        if abs(v) >= div:
            return f"{v / div:.3g} {suffix}{unit}"
    return f"{v:.3g} {unit}".strip()


def data_reuse(config: dict[str, Any]) -> list[str]:
    """Per model: the unique training tokens its cache holds and, per SAE budget, how
    many SAEs train on it and how many passes over the cache (epochs) each makes;
    where any SAE repeats tokens, the tokens and bytes of a cache in which none does
    (data.train_tokens: unique), every site of the cache counted (a CLT's too).
    Gemma Scope trained every SAE on fresh activations."""
    suite = expand_suite(config) + expand_spanning(config)
    unique = sequences(config, "train") * config["data"]["context_size"]
    lines = []
    for model in sorted({s.model for s in suite}):
        specs = [s for s in suite if s.model == model]
        budgets = Counter(s.tokens for s in specs)
        parts = []
        for b, n in sorted(budgets.items()):
            e = f"{b / unique:.3g}"
            parts.append(
                f"{n} SAE{'s' * (n > 1)} × {num(b)} tokens ({e} epoch"
                f"{'s' * (e != '1')})"
            )
        lines.append(
            f"{model}: {num(unique)} unique tokens cached; " + ", ".join(parts)
        )
        most = max(budgets)
        if most > unique:
            shape = known_shape(config["models"][model]["source"])
            size = "?"
            if shape:
                sites = {x for s in specs for x in (*s.reads, *s.writes)}
                widths = {
                    f"{x.layer}.{x.kind}": shape.site_width(x.kind) for x in sites
                }
                dtype = config["activations"]["dtype"]
                size = num(sum(cache_plan(widths, most, dtype).values()), "B")
            lines.append(
                f"  no token repeated (data.train_tokens: unique): {num(most)} tokens, "
                f"a cache of {size}"
            )
    return lines


def format_plan(df: pd.DataFrame, tflops: float) -> str:
    lines = [
        "| model | stage | SAEs | tokens | cache | FLOPs "
        f"| GPU-hours at {tflops:g} TFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.model} | {r.stage} | {r.saes or ''} | {num(r.tokens)} "
            f"| {'' if pd.isna(r.cache_bytes) else num(r.cache_bytes, 'B')} "
            f"| {num(r.flops)} "
            f"| {'?' if pd.isna(r.gpu_hours) else f'{r.gpu_hours:.3g}'} |"
        )
    total = df["gpu_hours"].sum(min_count=1)
    lines.append(
        f"| **total** | | {int(df['saes'][df['stage'] == 'train'].sum())} | | "
        f"{num(df['cache_bytes'].sum(min_count=1), 'B')} "
        f"| {num(df['flops'].sum(min_count=1))} "
        f"| {'?' if pd.isna(total) else f'{total:.3g}'} |"
    )
    return "\n".join(lines)
