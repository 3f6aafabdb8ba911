"""How many loss tokens an evaluation needs to order two SAEs by delta loss (issue 19:
"delta loss decreasing with L0 at every site").

    .venv/bin/python benchmarks/loss_tokens.py [--tokens 4096] [--block 512]

Uses the default run's SAEs (`make run` first): at each layer, every PT dictionary
of the layer's text evaluate job (the same job description the `evaluate` rule
gets), run through the model on the first `--tokens` held-out tokens, one block of
`--block` tokens at a time (the default run's `evaluate.loss_tokens` is 512: one
block). Per site and width it pairs the ladder's lowest and highest target L0 and
prints their delta loss over all the tokens, the paired difference (high − low) with
its standard error over blocks, the standard deviation of that difference between
blocks (the noise of one evaluation at `--block` loss tokens) and how many blocks
order the two SAEs the other way round. A paired difference within ~2 standard
errors of zero is not a finding either way.

`--quick --model DIR` (the test suite's run): random 64-wide SAEs on a local model
directory, a few sequences (the numbers then say nothing; the code runs).
"""

from __future__ import annotations

import argparse
import math
import platform
from collections import defaultdict

import torch

from saesuite.data.models import load_model
from saesuite.data.sites import site_width
from saesuite.data.tokens import load_tokens
from saesuite.eval.evaluate import load_released
from saesuite.eval.passes import evaluate
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec import paths
from saesuite.spec.config import REPO_ROOT, load_config
from saesuite.spec.jobs import EvalJob
from saesuite.spec.sites import Site
from saesuite.spec.suite import cache_root
from saesuite.spec.workflow import Workflow


def local_model(path: str) -> torch.nn.Module:
    """A local model directory, loaded as the default config's model would be."""
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    mcfg = {**next(iter(cfg["models"].values())), "device": "cpu", "source": path}
    return load_model(mcfg, REPO_ROOT / "results" / "cache")


def block_deltas(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    saes: dict,
    block_seqs: int,
) -> tuple[dict[str, list[float]], list[int]]:
    """Per SAE, its delta loss on each block of `block_seqs` sequences, and each
    block's number of predictions (the same for every SAE: one mask)."""
    deltas: dict[str, list[float]] = defaultdict(list)
    weights = []
    for b in range(0, len(ids) - block_seqs + 1, block_seqs):
        acc = evaluate(
            model, ids[b : b + block_seqs], mask[b : b + block_seqs], saes,
            batch_size=8, loss_sequences=block_seqs, loss_batch_size=2,
        )  # fmt: skip
        for key, a in acc.items():
            deltas[key].append(a.metrics()["delta_loss"])
        weights.append(next(iter(acc.values())).n_pred)
    return deltas, weights


def paired(lo: list[float], hi: list[float], w: list[int]) -> dict[str, float]:
    """Pooled delta losses of two SAEs over the blocks, their difference with its
    standard error (the blocks as samples, weighted by predictions), the difference's
    standard deviation between blocks, and the blocks that order them the other way."""
    W = sum(w)

    def mean(v: list[float]) -> float:
        return sum(a * b for a, b in zip(v, w)) / W

    d = [b - a for a, b in zip(lo, hi)]
    md = mean(d)
    n = len(d)
    var = sum(wi * (di - md) ** 2 for di, wi in zip(d, w)) / W * n / max(n - 1, 1)
    flips = sum((di > 0) != (md > 0) for di in d)
    return {"lo": mean(lo), "hi": mean(hi), "diff": md,
            "se": math.sqrt(var / n), "sd": math.sqrt(var), "flips": flips}  # fmt: skip


def run_job(
    job: EvalJob, model, ids, mask, block_seqs: int, families: list[str] | None = None
) -> list[tuple]:
    """The table rows of one layer: the lowest against the highest target L0 of each
    (family, width) among the job's dictionaries trained on the model itself (of
    `families` only, when given)."""
    own = [m for m in job.members if m.identity["model"] == job.evaluated_on
           and (not families or m.identity["site"] in families)]  # fmt: skip
    saes = {
        m.key: (Site.parse(m.input_site), Site.parse(m.output_site),
                load_released(REPO_ROOT / m.dir))
        for m in own
    }  # fmt: skip
    deltas, w = block_deltas(model, ids, mask, saes, block_seqs)
    ladders: dict[tuple[str, int], list] = defaultdict(list)
    for m in own:
        ladders[(m.identity["site"], m.identity["width"])].append(m)
    rows = []
    for (family, width), ms in ladders.items():
        ms.sort(key=lambda m: m.identity["value"])
        lo, hi = ms[0], ms[-1]
        if lo is hi:
            continue
        r = paired(deltas[lo.key], deltas[hi.key], w)
        rows.append((job.layer, family, width, lo.identity["value"],
                     hi.identity["value"], r))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configfile", default=REPO_ROOT / "config" / "config.yaml")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens used")
    ap.add_argument("--block", type=int, default=512, help="loss tokens per block")
    ap.add_argument("--layers", type=int, nargs="*", help="default: every layer")
    ap.add_argument(
        "--families",
        nargs="*",
        help="e.g. mlp transcoder skip_transcoder (default: every dictionary)",
    )
    ap.add_argument("--model", help="a local model directory, with random SAEs")
    ap.add_argument("--quick", action="store_true", help="a few sequences")
    args = ap.parse_args(argv)
    rows = []
    if args.model:  # the test's run: random SAEs at one layer, two "targets"
        if args.quick:
            args.tokens, args.block = 64, 16
        model = local_model(args.model)
        ctx = 16
        g = torch.Generator().manual_seed(0)
        vocab = model.config.get_text_config().vocab_size
        ids = torch.randint(10, vocab, (args.tokens // ctx, ctx), generator=g)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[:, 0] = False
        site = Site(1, "res")
        d = site_width(model, "res")
        saes = {
            str(k): (site, site, JumpReLUSAE(d, 64).initialize(g)) for k in range(2)
        }  # fmt: skip
        deltas, w = block_deltas(model, ids, mask, saes, args.block // ctx)
        rows.append((1, "res", 64, 0, 1, paired(deltas["0"], deltas["1"], w)))
        where = f"random SAEs on {args.model}"
    else:
        cfg = load_config(args.configfile)
        wf = Workflow(cfg)
        lm = next(iter(cfg["models"]))
        root = str(REPO_ROOT / cfg["output_root"])
        model = load_model(
            {**cfg["models"][lm], "device": "cpu"}, REPO_ROOT / cache_root(cfg)
        )
        ids, mask = load_tokens(paths.tokens(root, lm)["eval"])
        ctx = ids.shape[1]
        ids, mask = ids[: args.tokens // ctx], mask[: args.tokens // ctx]
        passes = wf.eval_passes
        layers = sorted({L for m, data, L in passes if m == lm and data == "text"})
        for L in args.layers or layers:
            job = EvalJob.from_dict(wf.eval_params(lm, "text", L))
            for r in run_job(job, model, ids, mask, args.block // ctx, args.families):
                rows.append(r)
                print(r, flush=True)
        where = f"{lm}, the default run's SAEs"
    n_blocks = args.tokens // args.block
    print(
        f"\n{platform.node()}, torch {torch.__version__}; {where}; {args.tokens:,} "
        f"held-out tokens in {n_blocks} blocks of {args.block}\n"
    )
    print("| layer | site | width | ΔL low target | ΔL high target | high − low ± s.e. "
          f"| s.d. per {args.block} tokens | blocks reversed |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for L, fam, width, lo, hi, r in rows:
        print(f"| {L} | {fam} | {width} | {r['lo']:.4f} (L0 {lo:g}) | {r['hi']:.4f} "
              f"(L0 {hi:g}) | {r['diff']:+.4f} ± {r['se']:.4f} | {r['sd']:.4f} | "
              f"{r['flips']} of {n_blocks} |")  # fmt: skip


if __name__ == "__main__":
    main()
