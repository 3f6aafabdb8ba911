"""The default run's time against its FLOP bounds (issue 36, item 10): each compute
stage's job seconds as a multiple of the seconds its necessary matmuls take at this
host's float32 matmul speed, measured in the same sitting, so that the figure does
not depend on the day's host.

    .venv/bin/python benchmarks/run.py --run      # `make run`'s snakemake, from nothing
    .venv/bin/python benchmarks/run.py            # the last run in this checkout

`--run` deletes nothing: it refuses an output root that already holds results. The
job seconds come from Snakemake's own log of the run (.snakemake/log/, the latest,
or `--log`): each job from its start to its "Finished jobid" line. The bounds:

- extract: the forward pass through the deepest cached layer, 2 · (non-embedding
  parameters × its share of the layers) FLOPs per cached token;
- train and finetune: per step of every dictionary, the dense encoder matmul
  2·B·d·w, and, over the step's L0 active latents (interpolated between its logged
  steps), the decoder and the three backward products 2·B·L0·4·d (a skip
  connection: 4·B·d² more);
- evaluate: per evaluation pass, the forward to its layer over the reconstruction
  tokens; over the loss tokens the clean pass with the head, then for each spliced
  site (zero-ablation) and dictionary the layers after the site with the head; and
  each dictionary's encoder and decoder, 4·d·w per token;
- dashboards: the forward to the layer, every dictionary's encoder, and its logit
  effects (width × vocabulary × d × 2);
- train_clt: per step the L encoder matmuls 2·B·L·d·w and, over each layer's L0
  active latents (their mean over the logged steps), the decoder writes into the
  layers after and their three backward products, 2·B·4·d·Σ_i L0_i·(L − i);
- evaluate_clt: the forward over the reconstruction tokens and the CLT's encoders
  and active decoders on them; over the loss tokens the clean, zero-ablated and
  replacement passes with the head, and per layer the layers after it and the head.

Goals (independent of the host): train within 1.5× its bound, evaluate within 1.3×,
and the rules outside the compute stages under 10 % of the wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from common import matmul_ceiling

from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.known_models import ModelShape, known_shape
from saesuite.spec.sites import Site

COMPUTE = (
    "extract",
    "train",
    "train_clt",
    "finetune",
    "evaluate",
    "evaluate_clt",
    "dashboards",
    "transfer_rollouts",
)
GOALS = {"train": 1.5, "evaluate": 1.3}
OUTSIDE_GOAL = 0.10
STAMP = r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]"


def job_times(log: str) -> pd.DataFrame:
    """One row per job of a Snakemake log: rule, jobid, start and end (seconds)."""
    at = lambda s: datetime.datetime.strptime(s, "%a %b %d %H:%M:%S %Y").timestamp()  # noqa: E731
    starts, ends = {}, {}
    for m in re.finditer(
        STAMP + r"\n(?:local)?rule (\w+):\n(?:.*\n)*?\s+jobid: (\d+)", log
    ):
        starts[int(m.group(3))] = (m.group(2), at(m.group(1)))
    for m in re.finditer(STAMP + r"\nFinished jobid: (\d+) \(Rule: (\w+)\)", log):
        ends[int(m.group(2))] = at(m.group(1))
    rows = [
        {"rule": rule, "jobid": j, "start": t0, "end": ends[j], "seconds": ends[j] - t0}
        for j, (rule, t0) in starts.items()
        if j in ends
    ]
    return pd.DataFrame(rows)


def body_params(shape: ModelShape) -> float:
    """Parameters of the transformer layers (the tied embedding is the head's)."""
    return shape.n_params - shape.vocab * shape.d_model


def train_bound(sae_dir: Path) -> float:
    """FLOPs of one dictionary's training steps (the module docstring)."""
    info = json.loads((sae_dir / "sae.json").read_text())
    log = [
        json.loads(x) for x in (sae_dir / "train_log.jsonl").read_text().splitlines()
    ]
    steps, d, w = info["steps"], info["d_in"], info["width"]
    batch = info["train"]["batch_size"]
    skip = "skip_transcoder" in str(sae_dir)
    at = torch.tensor([float(r["step"]) for r in log])
    l0 = torch.tensor([float(r["l0"]) for r in log])
    every = torch.arange(steps, dtype=torch.float64)
    idx = torch.searchsorted(at, every.float()).clamp(1, len(at) - 1)
    lo, hi = at[idx - 1], at[idx]
    frac = ((every.float() - lo) / (hi - lo).clamp_min(1)).clamp(0, 1)
    per_step = l0[idx - 1] + frac * (l0[idx] - l0[idx - 1])
    flops = (
        steps * 2 * batch * d * w + float(per_step.double().sum()) * 2 * batch * 4 * d
    )
    return flops + (steps * 4 * batch * d * d if skip else 0)


def _clt_decode(l0_by_layer: list[float], d: int) -> float:
    """MACs per token of a CLT's decoder over its active latents: Σ_i L0_i·(L − i)·d."""
    L = len(l0_by_layer)
    return sum(l0 * (L - i) * d for i, l0 in enumerate(l0_by_layer))


def clt_bound(sae_dir: Path) -> float:
    """FLOPs of one CLT's training steps (the module docstring)."""
    info = json.loads((sae_dir / "sae.json").read_text())
    log = [
        json.loads(x) for x in (sae_dir / "train_log.jsonl").read_text().splitlines()
    ]
    L, d, w = len(info["layers"]), info["d_in"], info["width"]
    batch, steps = info["train"]["batch_size"], info["steps"]
    mean = torch.tensor([r["l0_by_layer"] for r in log]).mean(0).tolist()
    return steps * (2 * batch * L * d * w + 2 * batch * 4 * _clt_decode(mean, d))


def clt_eval_bound(ev_json: Path, shape: ModelShape) -> float:
    """FLOPs of one evaluate_clt job from its JSON (the module docstring)."""
    ev = json.loads(ev_json.read_text())
    m, layers = ev["metrics"], ev["identity"]["layers"]
    body, head = body_params(shape), shape.vocab * shape.d_model
    n = shape.n_layers
    d, w = shape.d_model, ev["identity"]["width"]
    l0 = [b["l0"] for b in m["by_layer"]]
    flops = 2 * body * (layers[-1] + 1) / n * m["tokens"]
    flops += m["tokens"] * (2 * len(layers) * d * w + 2 * _clt_decode(l0, d))
    loss = m["loss_tokens"]
    flops += 3 * 2 * (body + head) * loss  # clean, zero-ablated, replacement
    flops += sum(2 * (body * (n - j) / n + head) * loss for j in layers)
    return flops


def evaluate_bound(summary: Path, shape: ModelShape) -> float:
    """FLOPs of one evaluate job from its summary (eval_passes/<data>/layer_L.json)."""
    entries = json.loads(summary.read_text())["saes"]
    body, head = body_params(shape), shape.vocab * shape.d_model
    layer = int(summary.stem.removeprefix("layer_"))
    n_tok = max(e["tokens"] for e in entries)
    loss_tok = max(e["loss_tokens"] for e in entries)
    after = 2 * (body * (shape.n_layers - layer) / shape.n_layers + head) * loss_tok
    sites = {Site.parse(f"layer_{layer}.{e['path'].split('/')[1]}") for e in entries}
    flops = 2 * body * (layer + 1) / shape.n_layers * n_tok  # reconstruction passes
    flops += 2 * (body + head) * loss_tok  # the clean pass with its head
    flops += after * (len(sites) + len(entries))  # zero-ablations and spliced passes
    for e in entries:
        d = shape.site_width(
            Site.parse(f"layer_{layer}.{e['path'].split('/')[1]}").kind
        )
        w = int(e["path"].split("/")[2].removeprefix("width_"))
        flops += 4 * d * w * n_tok
    return flops


def bounds(root: Path, config: dict) -> dict[str, float]:
    """FLOPs of each compute stage's necessary work in the run in folder `root`."""
    results = root / config["output_root"]
    key = next(iter(config["models"]))
    shape = known_shape(config["models"][key]["source"])
    if shape is None:
        raise SystemExit(f"benchmarks/run.py: {key} is not a model of known shape")
    out = dict.fromkeys(("extract", "train", "finetune", "evaluate", "dashboards"), 0.0)
    manifest = json.loads((results / key / "activations" / "manifest.json").read_text())
    deepest = max(Site.parse(s).layer for s in manifest["sites"])
    out["extract"] = (
        2 * body_params(shape) * (deepest + 1) / shape.n_layers * manifest["n_tokens"]
    )
    out |= {"train_clt": 0.0, "evaluate_clt": 0.0}
    for sae_json in results.glob("*/saes/**/sae.json"):
        text = sae_json.read_text()
        if '"layers"' in text:  # a CLT's record
            out["train_clt"] += clt_bound(sae_json.parent)
            continue
        stage = "finetune" if "finetuned_from" in text else "train"
        out[stage] += train_bound(sae_json.parent)
    for ev in results.glob("*/eval/*/text/clt/**/*.json"):
        out["evaluate_clt"] += clt_eval_bound(ev, shape)
    for summary in results.glob("*/eval_passes/*/layer_*.json"):
        out["evaluate"] += evaluate_bound(summary, shape)
    for summary in results.glob("*/dashboards/layer_*.json"):
        out["dashboards"] += dashboards_bound(root, summary, shape)
    return out


def dashboards_bound(root: Path, summary: Path, shape: ModelShape) -> float:
    """FLOPs of one dashboards job: the forward to its layer, each dictionary's
    encoder over the tokens and its logit effects (width × vocabulary × d)."""
    from saesuite.eval.dashboards import read_js

    layer = int(summary.stem.removeprefix("layer_"))
    flops = 0.0
    for i, d in enumerate(json.loads(summary.read_text())["dashboards"]):
        (info,) = read_js(root / d["dir"] / "info.js")
        tokens, w = info["tokens"], info["width"]
        if i == 0:
            flops += 2 * body_params(shape) * (layer + 1) / shape.n_layers * tokens
        d_in = shape.site_width(Site.parse(info["input_site"]).kind)
        flops += 2 * d_in * w * tokens + 2 * w * shape.vocab * shape.d_model
    return flops


def report(jobs: pd.DataFrame, flops: dict[str, float], speed: float) -> pd.DataFrame:
    wall = jobs["end"].max() - jobs["start"].min()
    rows = []
    for rule, group in jobs.groupby("rule", sort=False):
        bound = flops.get(rule, 0.0) / speed
        rows.append({
            "stage": rule, "jobs": len(group), "job s": group["seconds"].sum(),
            "bound s": bound if rule in flops else float("nan"),
            "× bound": group["seconds"].sum() / bound if bound else float("nan"),
            "goal": f"≤ {GOALS[rule]}×" if rule in GOALS else "",
        })  # fmt: skip
    df = pd.DataFrame(rows)
    outside = df[~df["stage"].isin(COMPUTE + ("all",))]["job s"].sum()
    df.attrs |= {"wall": wall, "outside": outside}
    return df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", action="store_true", help="run the default snakemake first"
    )
    ap.add_argument(
        "--configfile", type=Path, default=REPO_ROOT / "config" / "config.yaml"
    )
    ap.add_argument("--log", type=Path, help="a Snakemake log (default: the latest)")
    ap.add_argument("--root", type=Path, default=REPO_ROOT,
                    help="the run's working directory (this checkout)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="best of, for the matmul")
    args = ap.parse_args(argv)
    config = load_config(args.configfile)
    root = args.root.resolve()
    results = root / config["output_root"]
    t = time.perf_counter()
    if args.run:
        if any(results.glob("*/saes")):
            raise SystemExit(f"benchmarks/run.py --run: {results} holds a run already")
        cmd = [sys.executable, "-m", "snakemake", "--profile", "config/profiles/local",
               "--cores", "2", "--configfile", str(args.configfile)]  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True)
    wall = time.perf_counter() - t
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    log = args.log or (logs[-1] if logs else None)
    if log is None:
        raise SystemExit("benchmarks/run.py: no Snakemake log (run with --run)")
    jobs = job_times(Path(log).read_text())
    speed = matmul_ceiling(4096, 4096, 4096, "cpu", torch.float32, args.repeats)
    df = report(jobs, bounds(root, config), speed)
    timed = f"; wall {wall:.0f} s" if args.run else ""
    print(f"\n{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; float32 matmul {speed / 1e9:.0f} GFLOP/s (4096³, best of "
          f"{args.repeats}); log {Path(log).name}{timed}")  # fmt: skip
    print("\n| stage | jobs | job s | bound s | × bound | goal |")
    print("|---|---:|---:|---:|---:|---|")
    for r in df.itertuples(index=False):
        b = "" if r[3] != r[3] else f"{r[3]:.0f}"
        x = "" if r[4] != r[4] else f"{r[4]:.2f}"
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {b} | {x} | {r[5]} |")
    share = df.attrs["outside"] / df.attrs["wall"]
    print(f"\nwall {df.attrs['wall']:.0f} s (first job's start to the last job's end); "
          f"outside the compute stages {df.attrs['outside']:.0f} job s, {share:.1%} of "
          f"it (goal < {OUTSIDE_GOAL:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
