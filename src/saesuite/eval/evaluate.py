"""The `evaluate` rule's job (`evaluate_layer`): every dictionary of one layer loaded
from its folder (in groups that fit beside the model on a GPU), run through one model
on one data set by `eval.passes.evaluate`, each one's metrics written to its JSON and
the layer's summary last. The metrics and their passes are in `eval.passes`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from saesuite.cluster.memory import GPU_HEADROOM, evaluate_work_bytes, fit_groups
from saesuite.data.logs import progress_interval
from saesuite.data.models import load_model
from saesuite.data.sites import (
    site_width,
)
from saesuite.data.tokens import load_tokens
from saesuite.eval.passes import Accumulator, evaluate
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec import paths
from saesuite.spec.io import atomic_path, read_json, versions, write_json
from saesuite.spec.jobs import EvalJob, EvalMember
from saesuite.spec.metrics import health_warnings, scalar_metrics
from saesuite.spec.sections import EvaluateConfig

log = logging.getLogger(__name__)


def load_released(sae_dir: str | Path) -> JumpReLUSAE:
    """A trained SAE as released (folded: it takes raw activations)."""
    return JumpReLUSAE.from_release(load_file(str(paths.sae_file(sae_dir, "weights"))))


def trained_outlier_multiple(sae_dir: str | Path) -> float | None:
    """`train.max_norm_multiple` of a dictionary trained with its outlier tokens
    dropped (its sae.json), which its evaluation and dashboards leave out in turn
    (`sae.outliers`); None when it trained on every token (off, or clipped)."""
    info = paths.sae_file(sae_dir, "info")
    train = read_json(info).get("train", {}) if info.exists() else {}
    multiple = train.get("max_norm_multiple")
    return (
        multiple if multiple and train.get("outlier_mode", "drop") == "drop" else None
    )


def released_shape(sae_dir: str | Path) -> tuple[int, int]:
    """(d_in, d_sae) of a released SAE, read from its header only."""
    with safe_open(str(paths.sae_file(sae_dir, "weights")), "pt") as f:
        d_in, d_sae = f.get_slice("W_enc").get_shape()
    return d_in, d_sae


def released_bytes(sae_dir: str | Path) -> int:
    """Bytes of a released dictionary's tensors (a skip-transcoder's W_skip too), read
    from its header only."""
    with safe_open(str(paths.sae_file(sae_dir, "weights")), "pt") as f:
        return sum(4 * math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def device_sae_budget(
    model: torch.nn.Module, ev: EvaluateConfig, ctx: int, members: list[EvalMember]
):
    """Bytes of SAE weights one pass may hold on the model's GPU (None on CPU): what
    the GPU has after the model, less the pass's work (`evaluate_work_bytes`)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    text = model.config.get_text_config()
    sites = {
        s for m in members for s in (m.dictionary.input_site, m.dictionary.output_site)
    }
    work = evaluate_work_bytes(
        vocab=text.vocab_size,
        ctx=ctx,
        loss_batch_size=ev.loss_batch_size,
        batch_size=ev.batch_size,
        model_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        site_widths=[site_width(model, s.kind) for s in sites],
        max_width=max(m.dictionary.width for m in members),
    )
    return max(0.0, GPU_HEADROOM * total - torch.cuda.memory_allocated(device) - work)


def evaluation_tokens(
    data_path: str | Path, ev: EvaluateConfig
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, mask, loss sequences) of an evaluation: the first `evaluate.tokens` of
    the data in whole sequences, the loss metrics on the first `loss_tokens`."""
    ids, mask = load_tokens(data_path)
    ctx = ids.shape[1]
    n_seq = len(ids) if ev.tokens is None else max(1, ev.tokens // ctx)
    n_loss = n_seq if ev.loss_tokens is None else max(1, ev.loss_tokens // ctx)
    return ids[:n_seq], mask[:n_seq], n_loss


def evaluate_layer(
    job: EvalJob,
    *,
    data_path: str | Path,
    cache_root: str | Path,
    out: str | Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rule `evaluate`: every SAE of one layer on one model and data set. Writes a
    JSON and a per-latent frequency file per SAE, then the layer summary `out`.
    Each dictionary is encoded at its input site and spliced in at its output site:
    an SAE's two sites are one; a transcoder reads an MLP's input and predicts its
    output (spec.dictionary.KINDS), its metrics those of the prediction.

    On a GPU the SAEs are loaded and evaluated in groups whose weights fit beside the
    model (`job.group_bytes` overrides the budget); each group repeats the clean
    passes, which gives the same metrics as one group."""
    ev = job.evaluate
    ids, mask, n_loss = evaluation_tokens(data_path, ev)
    n_seq = len(ids)
    shapes = [released_shape(s.dir) for s in job.members]
    model = load_model(job.model_cfg, cache_root)
    _check_widths(job, shapes, model)
    device = next(model.parameters()).device
    ctx = ids.shape[1]
    budget = job.group_bytes or device_sae_budget(model, ev, ctx, list(job.members))
    groups = fit_groups([released_bytes(s.dir) for s in job.members], budget)
    acc: dict[str, Accumulator] = {}
    multiples = {m.key: trained_outlier_multiple(m.dir) for m in job.members}
    start = time.perf_counter()
    with tqdm(
        total=n_seq * len(groups),
        unit="seq",
        desc="evaluate",
        mininterval=progress_interval(),
    ) as bar:
        for g in groups:
            members = [job.members[i] for i in g]
            saes = {
                m.key: (
                    m.dictionary.input_site,
                    m.dictionary.output_site,
                    load_released(m.dir).to(device),
                )
                for m in members
            }
            acc.update(
                evaluate(
                    model,
                    ids,
                    mask,
                    saes,
                    batch_size=ev.batch_size,
                    loss_sequences=n_loss,
                    loss_batch_size=ev.loss_batch_size,
                    progress=bar.update,
                    max_norm_multiple=multiples,
                )
            )
            del saes
    elapsed = time.perf_counter() - start
    meta = {**(extra or {}), "data_path": str(data_path)}
    summary = _write_members(job, acc, shapes, meta, multiples)
    log.info(
        "%d SAEs in %d group(s) on %d sequences (%d with loss metrics) in %.1f s",
        len(job.members),
        len(groups),
        n_seq,
        min(n_loss, n_seq),
        elapsed,
    )
    result = {
        "evaluated_on": job.evaluated_on,
        "data": job.data,
        **meta,
        "versions": versions(),
        "saes": summary,
    }
    write_json(out, result)
    return result


def _check_widths(
    job: EvalJob, shapes: list[tuple[int, int]], model: torch.nn.Module
) -> None:
    """Each dictionary's d_in is its input site's width in the model it runs through
    (checked before any pass)."""
    for s, (d_in, _) in zip(job.members, shapes):
        site = s.dictionary.input_site
        want = site_width(model, site.kind)
        if d_in != want:
            raise ValueError(
                f"SAE {s.key} has d_in {d_in}, but site {site.name} of model "
                f"'{job.evaluated_on}' is {want} wide: the two models "
                "differ in shape; pair only models of one architecture (models.*.base)"
            )


def _write_members(
    job: EvalJob,
    acc: dict[str, Accumulator],
    shapes: list[tuple[int, int]],
    meta: dict[str, Any],
    multiples: dict[str, float | None],
) -> list[dict[str, Any]]:
    """Each member's frequencies and JSON; its line of the layer's summary."""
    summary = []
    for s in job.members:
        metrics = acc[s.key].metrics()
        freq = acc[s.key].frequencies().float()
        with atomic_path(paths.frequencies(s.out)) as tmp:
            save_file({"frequency": freq}, str(tmp))
        evaluation = {
            **job.evaluation(s),
            **meta,
            "max_norm_multiple": multiples[s.key],  # its outlier tokens left out
        }
        write_json(
            s.out,
            {"identity": s.identity, "evaluation": evaluation, "metrics": metrics},
        )
        summary.append(
            {
                "key": s.key,
                "path": s.dictionary.path,
                "trained_on": s.dictionary.model,
                "json": s.out,
                **scalar_metrics(metrics),
            }
        )
        d_sae = shapes[job.members.index(s)][1]
        warnings = health_warnings(
            d_sae,
            metrics["dead"],
            metrics.get("loss_recovered"),
            metrics["l0"],
            s.dictionary.target_l0,
        )
        for w in warnings:
            log.warning("%s on %s: %s", s.key, job.evaluated_on, w)
    return summary
