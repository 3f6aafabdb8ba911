"""Retrain one train job of the default run under train-section overrides and score
its dictionaries on the held-out split (issue 19: what one recipe option does at one
site, dead latents above all), without touching results/.

    .venv/bin/python benchmarks/retrain.py --layer 15 --kind skip_transcoder \\
        --try 0.1:transcoder_encoder_init_scale=0.1 \\
        --try 1:transcoder_encoder_init_scale=1

Uses the default run's activation cache and held-out tokens (`make run` first). Each
--try is NAME:KEY=VALUE,... (quality.py's syntax), laid over the config's train
section and checked by the schema before anything trains. The job is the one the
`train` rule gets (saesuite.spec.jobs.train_job), so training is bit for bit the
run's at the same settings; its checkpoint and dictionaries go under --out. Printed
per try and dictionary: held-out L0, FVU, dead and dense latents, taken as the run's
evaluation takes them (a dictionary's outlier tokens left out; no loss metrics, which
need the 262k-token head: loss_tokens.py measures those), the FVU on one cache chunk
with and without its attention sinks, the worst spike of its training FVU
(spec.metrics.fvu_spike) and the job's train seconds.

`--finetune TOKENS` starts each try from the run's trained dictionaries instead, for
TOKENS tokens, as the `finetune` rule starts (no λ warm-up, b_dec kept): the
restart of fine-tuning on the distribution the dictionaries were trained on, which
tells what fine-tuning itself does apart from the data it sees.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from saesuite.spec import jobs, make_jobs, paths
from saesuite.spec.config import REPO_ROOT, load_config, parse_settings
from saesuite.spec.metrics import fvu_spike
from saesuite.spec.suite import cache_root
from saesuite.spec.workflow import Workflow

COLS = ("l0", "fvu", "dead", "dense_latents")
SPIKE = "worst spike"  # training log's worst FVU / best before it (spec.metrics)
SINKS = ("cache fvu", "cache fvu w/o sinks")  # on one cache chunk (`sink_fvus`)


def tries(base: dict[str, Any], specs: list[str]) -> dict[str, dict[str, Any]]:
    """{name: the loaded config with that try's keys over `base`'s train section};
    a bad key or value fails here, by name, before any training."""
    out = {}
    for spec in specs:
        name, _, text = spec.partition(":")
        if not name or "=" not in text:
            raise SystemExit(f"--try {spec!r}: want NAME:KEY=VALUE,...")
        sets = parse_settings(text)
        cfg = copy.deepcopy(base)
        cfg["train"] = {**(cfg.get("train") or {}), **sets}
        out[name] = load_config(cfg)
    return out


def retrain_job(
    cfg: dict[str, Any], layer: int, kind: str, out: Path, finetune: int | None = None
) -> jobs.TrainJob:
    """The run's train job of (layer, kind) under `cfg` (`kind`: a train job, as
    `mlp_in_to_mlp`, or a family, its dictionaries alone where its job trains more: a
    layer's skip-transcoders without its plain ones), reading the run's cache and
    writing its checkpoint and dictionaries under `out` (as its output_root); with
    `finetune`, for that many tokens with the finetune rule's train section."""
    key = next(iter(cfg["models"]))
    suite = Workflow(cfg).suite
    here = [d for d in suite if (d.model, d.layer) == (key, layer)]
    mine = [d for d in here if kind in (d.family, d.job)]
    if not mine:
        raise SystemExit(f"--layer {layer} --kind {kind}: no such dictionaries")
    job = make_jobs.train_job(cfg, suite, key, layer, mine[0].job)
    job = dataclasses.replace(
        job,
        checkpoint=str(out / "checkpoint.pt"),
        root=str(out),
        dictionaries=tuple(d for d in job.dictionaries if kind in (d.family, d.job)),
    )
    if finetune is None:
        return job
    return dataclasses.replace(
        job,
        train=job.train.replace(lambda_warmup_steps=0, b_dec_init="zeros"),
        dictionaries=tuple(
            dataclasses.replace(d, tokens=finetune) for d in job.dictionaries
        ),
    )


def sink_fvus(job: jobs.TrainJob, d, sae, multiple: float) -> tuple[float, float]:
    """FVU of a released dictionary on the unmasked rows of the run's first cache
    chunk: all of them, and without the attention-sink tokens (norm above `multiple`
    × the median, at its input or its target), which the held-out FVU counts."""
    from safetensors import safe_open

    manifest = json.loads(Path(job.manifest).read_text())
    chunk = Path(job.manifest).parent / manifest["chunks"][0]["file"]
    with safe_open(str(chunk), "pt") as f:
        m = f.get_tensor("mask").bool()
        x = f.get_tensor(d.input_site.name)[m].float()
        y = f.get_tensor(d.output_site.name)[m].float()
    keep = (x.norm(dim=1) <= multiple * x.norm(dim=1).median()) & (
        y.norm(dim=1) <= multiple * y.norm(dim=1).median()
    )
    with torch.no_grad():
        err = (y - sae(x)).pow(2).sum(1)

    def fvu(rows: torch.Tensor) -> float:
        return float(err[rows].sum() / (y[rows] - y[rows].mean(0)).pow(2).sum())

    return fvu(torch.ones_like(keep)), fvu(keep)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configfile", default=REPO_ROOT / "config" / "config.yaml")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--kind", required=True,
                    help="res, att, mlp, transcoder, skip_transcoder or "
                         "mlp_in_to_mlp (both)")  # fmt: skip
    ap.add_argument("--try", dest="tries", action="append", required=True,
                    metavar="NAME:KEY=VALUE,...")  # fmt: skip
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the retrained dictionaries go (a temporary folder)",
    )
    ap.add_argument("--finetune", type=int, default=None, metavar="TOKENS",
                    help="start from the run's dictionaries for TOKENS")  # fmt: skip
    ap.add_argument("--sink-multiple", type=float, default=5.0,
                    help="norm / median above which a token is a sink")  # fmt: skip
    args = ap.parse_args(argv)
    base = yaml.safe_load(Path(args.configfile).read_text())
    base["output_root"] = str(REPO_ROOT / base.get("output_root", "results"))
    configs = tries(base, args.tries)  # before the cache and the model
    root = Path(args.out or tempfile.mkdtemp(prefix="retrain-"))
    planned = {n: retrain_job(c, args.layer, args.kind, root / n, args.finetune)
               for n, c in configs.items()}  # fmt: skip

    from saesuite.data.models import load_model
    from saesuite.data.tokens import load_tokens
    from saesuite.eval.evaluate import load_released, trained_outlier_multiple
    from saesuite.eval.passes import evaluate
    from saesuite.sae.train import train_site

    cfg = next(iter(configs.values()))
    key = next(iter(cfg["models"]))
    model = load_model({**cfg["models"][key], "device": "cpu"},
                       REPO_ROOT / cache_root(cfg))  # fmt: skip
    ids, mask = load_tokens(paths.tokens(cfg["output_root"], key)["eval"])
    rows = []
    run = retrain_job(cfg, args.layer, args.kind, Path(cfg["output_root"]))
    for name, job in planned.items():
        init = None
        if args.finetune is not None:  # the run's dictionary of the same path
            init = {d.path: run.out_dir(d) for d in run.dictionaries}
        t = time.perf_counter()
        train_site(job, init=init)
        secs = time.perf_counter() - t
        saes = {
            d.path: (d.input_site, d.output_site, load_released(job.out_dir(d)))
            for d in job.dictionaries
        }
        multiple = {p: trained_outlier_multiple(job.out_dir(d))
                    for d in job.dictionaries for p in [d.path]}  # fmt: skip
        acc = evaluate(model, ids, mask, saes, batch_size=8, loss_sequences=0,
                       max_norm_multiple=multiple)  # fmt: skip  # as the run's
        for d in job.dictionaries:
            m = acc[d.path].metrics()
            text = paths.sae_file(job.out_dir(d), "log").read_text()
            log = [json.loads(line) for line in text.splitlines()]
            spike = fvu_spike(log)
            m[SPIKE] = "none" if spike is None else (
                f"{spike[1] / spike[2]:.1f}x at {spike[0]}")  # fmt: skip
            fvus = sink_fvus(job, d, saes[d.path][2], args.sink_multiple)
            m |= dict(zip(SINKS, fvus, strict=True))
            rows.append((name, d.path, m, secs))
            print(name, d.path, {k: m[k] for k in COLS + SINKS + (SPIKE,)}, flush=True)
    print(f"\n{platform.node()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {key}, layer {args.layer} {args.kind}, "
          f"{len(ids) * ids.shape[1]:,} held-out tokens; under {root}\n")  # fmt: skip
    cols = COLS + SINKS + (SPIKE,)
    print("| try | dictionary | " + " | ".join(cols) + " | train s |")
    print("|---|---|" + "---:|" * (len(cols) + 1))
    for name, path, m, secs in rows:
        vals = [f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k])
                for k in cols]  # fmt: skip
        print(f"| {name} | {path} | " + " | ".join(vals) + f" | {secs:.0f} |")


if __name__ == "__main__":
    main()
