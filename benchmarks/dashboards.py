"""The dashboards job's cost (issue 17, item 6) on the default run's dictionaries of
one layer: its time per token against one truncated forward pass plus encoding by
every dictionary of the layer over the same tokens (goal ≤ 1.2×), and its peak
memory as the token budget grows 4× (goal: flat).

    .venv/bin/python benchmarks/dashboards.py [--layer 9] [--tokens 4096]
        [--stream-only]

Needs a finished `make run` (results/). Prints a Markdown table. The job itself runs
in a subprocess per budget, so its peak RSS is its own (ru_maxrss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from saesuite.data.models import load_model
from saesuite.data.sites import capture
from saesuite.data.tokens import load_tokens
from saesuite.eval.evaluate import load_released
from saesuite.eval.latents import LatentStats
from saesuite.spec import make_jobs, paths
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.sites import Site
from saesuite.spec.workflow import Workflow

CHILD = """
import json, resource, sys, time
from saesuite.eval.dashboards import dashboard_layer
from saesuite.spec.jobs import DashboardJob
job = DashboardJob.from_dict(json.loads(sys.argv[1]))
t = time.perf_counter()
dashboard_layer(job, data_path=sys.argv[2], cache_root=sys.argv[3], out=sys.argv[4])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": peak}))
"""


def job_for(config: dict, model: str, layer: int, tokens: int, out: Path):
    config = {**config, "dashboards": {**config["dashboards"], "tokens": tokens}}
    job = make_jobs.dashboard_job(config, Workflow(config).suite, model, layer)
    members = tuple(dataclasses.replace(m, out=str(out / m.key)) for m in job.members)
    return dataclasses.replace(job, members=members)


def baseline(job, data: str, cache: str, tokens: int, stream: bool) -> float:
    """Seconds of the job's loop: truncated forward + every dictionary's encoding
    (and, with `stream`, the statistics' update), the model loaded beforehand."""
    ids, mask = load_tokens(data)
    n = max(1, min(len(ids), tokens // ids.shape[1]))
    ids, mask = ids[:n], mask[:n]
    model = load_model(job.model_cfg, cache)
    saes = [(Site.parse(m.input_site), load_released(m.dir)) for m in job.members]
    stats = [
        LatentStats(
            s.W_enc.shape[1],
            k=job.dashboards.top_k,
            half_window=job.dashboards.window,
            samples=job.dashboards.samples,
        )
        for _, s in saes
    ]
    sites = sorted({site for site, _ in saes})
    b = job.dashboards.batch_size
    t = time.perf_counter()
    for lo in range(0, n, b):
        acts = capture(model, ids[lo : lo + b], sites)
        with torch.no_grad():
            for (site, sae), st in zip(saes, stats, strict=True):
                f = sae.encode(acts[site])
                if stream:
                    st.update(f, ids[lo : lo + b], mask[lo : lo + b], lo)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configfile", default=str(REPO_ROOT / "config" / "config.yaml"))
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument(
        "--stream-only",
        action="store_true",
        help="only the forward + encode and streaming rows (not the whole job's)",
    )
    args = ap.parse_args(argv)
    config = load_config(args.configfile)
    root = config["output_root"]
    cache = config["cache_root"] or f"{root}/cache"
    data = paths.eval_data(root, args.model, "text")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        job = job_for(config, args.model, args.layer, args.tokens, Path(tmp))
        plain = baseline(job, data, cache, args.tokens, stream=False)
        streamed = baseline(job, data, cache, args.tokens, stream=True)
        for tokens in () if args.stream_only else (args.tokens, 4 * args.tokens):
            out = Path(tmp) / str(tokens)
            j = job_for(config, args.model, args.layer, tokens, out)
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    json.dumps(j.to_dict()),
                    data,
                    cache,
                    str(out / "layer.json"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append((tokens, json.loads(done.stdout.strip().splitlines()[-1])))
    n = len(job.members)
    print(
        f"{platform.node()}, {torch.get_num_threads()} threads; {args.model} "
        f"layer {args.layer}, {n} dictionaries; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| measured | tokens | seconds | × forward + encode | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| forward + encode ({n} dictionaries) | {args.tokens} | {plain:.2f} "
        "| 1.00 | |"
    )
    print(
        f"| … + streamed statistics | {args.tokens} | {streamed:.2f} | "
        f"{streamed / plain:.2f} | |"
    )
    for tokens, r in rows:
        ratio = r["seconds"] / (plain * tokens / args.tokens)
        print(
            f"| the whole job (load, stream, logit effects, files) | {tokens} | "
            f"{r['seconds']:.2f} | {ratio:.2f} | {r['peak_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
