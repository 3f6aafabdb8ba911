"""The `saesuite` command: what users do outside Snakemake.

saesuite ls RESULTS [--model M] [--csv]   the SAEs of a run, with their metrics
saesuite show SAE_DIR                      one SAE: how it was trained, how it scored
saesuite neuronpedia DASHBOARD --model-id M --source S --out DIR
                                           a dashboard as Neuronpedia batch files
saesuite compare RESULTS_A RESULTS_B       two runs' artefacts: same bytes? else
                                           each dictionary's metric deltas
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from saesuite.report.compare import compare, tolerance_line
from saesuite.spec import paths
from saesuite.spec.io import atomic_path, read_json
from saesuite.spec.metrics import scalar_metrics

COLUMNS = [
    "model",
    "layer",
    "site",
    "width",
    "penalty",
    "value",
    "l0",
    "fvu",
    "delta_loss",
    "loss_recovered",
    "dead",
]


def held_out_eval(results: Path, sae: dict) -> str:
    """The evaluation JSON of a trained SAE (its sae.json) on its model's text."""
    m = sae["model"]
    return paths.sae_eval(str(results), m, m, "text", sae["path"])


def find_saes(results: Path) -> pd.DataFrame:
    """Every trained SAE under `results`, joined with its held-out metrics."""
    rows = []
    info = paths.SAE_FILES["info"]
    for sae_json in sorted(results.glob(f"*/saes/layer_*/*/width_*/*/{info}")):
        sae = read_json(sae_json)
        row = {k: sae[k] for k in ("model", "layer", "width", "penalty", "value")}
        row["site"] = sae["kind"]
        row["path"] = str(sae_json.parent)
        ev = Path(held_out_eval(results, sae))
        if ev.is_file():
            row.update(scalar_metrics(read_json(ev)["metrics"]))
        rows.append(row)
    if not rows:
        raise SystemExit(
            f"saesuite ls: no trained SAEs under {results} (run snakemake)"
        )
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "layer", "site", "width", "value"]).reset_index(
        drop=True
    )


def cmd_ls(args: argparse.Namespace) -> None:
    df = find_saes(Path(args.results))
    if args.model:
        df = df[df["model"] == args.model]
    cols = [c for c in COLUMNS if c in df] + ["path"]
    if args.csv:
        df[cols].to_csv(sys.stdout, index=False)
    else:
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def cmd_show(args: argparse.Namespace) -> None:
    folder = Path(args.sae)
    if not paths.sae_file(folder, "info").is_file():
        raise SystemExit(
            f"saesuite show: {folder} holds no sae.json (an SAE folder is "
            "<results>/<model>/saes/layer_L/<site>/width_W/<label>)"
        )
    sae = read_json(paths.sae_file(folder, "info"))
    print(
        f"{sae['model']} {sae['site']} width {sae['width']} "
        f"({sae['penalty']} {sae['value']:g}), trained on {sae['tokens']} tokens "
        f"in {sae['steps']} steps; source {sae['source']}, "
        f"config {sae['config_hash']}"
    )
    results = paths.results_of(folder)
    ev = Path(held_out_eval(results, sae))
    if not ev.is_file():
        print("not evaluated yet (run snakemake)")
        return
    for key, value in scalar_metrics(read_json(ev)["metrics"]).items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"  {key:<20} {shown}")
    print("training:")
    for key, value in sorted(sae["train"].items()):
        print(f"  {key:<20} {value}")


def cmd_plan(args: argparse.Namespace) -> None:
    # Here, not at the top: `ls` and `show` need neither the schema nor the planner.
    from saesuite.cluster.plan import data_reuse, format_plan, gpu_memory, preflight
    from saesuite.spec.config import REPO_ROOT, ConfigError, load_config

    path = args.configfile or REPO_ROOT / "config" / "config.yaml"
    try:
        config = load_config(path)
    except ConfigError as err:
        raise SystemExit(f"saesuite plan: {err}") from None
    df = preflight(config, args.tflops)
    print(f"plan for {path}")
    print(format_plan(df, args.tflops))
    print("\nData reuse (epochs = an SAE's tokens / the unique tokens cached):")
    for line in data_reuse(config):
        print(f"  {line}")
    sharded, problems = gpu_memory(config)
    if sharded:
        print("\nSAEs too wide for one GPU, sharded by latents over the job's GPUs:")
        for line in sharded:
            print(f"  {line}")
    if problems:
        print(
            f"\nWARNING: {len(problems)} SAE width(s) do not fit the GPUs of their "
            "training jobs, even sharded by latents. Give those jobs more GPUs, drop "
            "these widths, or raise resources.gpu_mem_gb if your GPUs are larger:"
        )
        for line in problems[:10]:
            print(f"  {line}")
        if len(problems) > 10:
            print(f"  … and {len(problems) - 10} more")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            df.to_csv(tmp, index=False)
        print(f"written to {args.csv}")


def cmd_neuronpedia(args: argparse.Namespace) -> None:
    # here, not at the top: it imports torch, which `saesuite plan` must not
    from saesuite.eval.dashboards import neuronpedia_batches

    written = neuronpedia_batches(
        args.dashboard,
        args.out,
        model_id=args.model_id,
        source=args.source,
        batch_size=args.batch_size,
    )
    print(f"{len(written)} batch files in {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    table, deltas, verdict = compare(Path(args.a), Path(args.b))
    print(table.to_string(index=False))
    if len(deltas):
        print(f"\nEvaluations that differ (tolerance: {tolerance_line()}):")
        print(deltas.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\n{verdict}")
    if verdict == "different":
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="saesuite", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="SAEs, tokens, cache, FLOPs, GPU-hours")
    plan.add_argument("--configfile", help="a config (default: config/config.yaml)")
    plan.add_argument(
        "--tflops",
        type=float,
        default=200.0,
        help="effective device throughput in TFLOP/s (default 200: an H100 at "
        "~50%% of its dense TF32/bf16 peak; this 2-core CPU does ~0.1)",
    )
    plan.add_argument("--csv", help="also write the plan as CSV here")
    plan.set_defaults(func=cmd_plan)
    ls = sub.add_parser("ls", help="list the SAEs of a run with their metrics")
    ls.add_argument("results", help="a run's output_root, e.g. results")
    ls.add_argument("--model", help="only this model key")
    ls.add_argument("--csv", action="store_true", help="CSV instead of a table")
    ls.set_defaults(func=cmd_ls)
    show = sub.add_parser("show", help="one SAE's training and metrics")
    show.add_argument(
        "sae", help="an SAE folder, e.g. results/m/saes/layer_9/res/width_4096/l0_20"
    )
    show.set_defaults(func=cmd_show)
    npx = sub.add_parser("neuronpedia", help="a dashboard as Neuronpedia batch files")
    npx.add_argument(
        "dashboard",
        help="a dashboard folder (results/<model>/"
        "dashboards/<sae path>, or dashboard/ in a release)",
    )
    npx.add_argument("--model-id", required=True, help="Neuronpedia's model id")
    npx.add_argument("--source", required=True, help="its SAE set, e.g. 9-res-ss")
    npx.add_argument("--out", required=True, help="folder for batch-N.json")
    npx.add_argument("--batch-size", type=int, default=128, help="features a file")
    npx.set_defaults(func=cmd_neuronpedia)
    cmp = sub.add_parser(
        "compare",
        help="whether two runs built the same bytes, and how far metrics moved",
        description="Exit status 0 when every artefact is byte-equal, or when only "
        "evaluations differ and every dictionary's L0, FVU and delta loss are within "
        "the stated tolerance; 1 otherwise.",
    )
    cmp.add_argument("a", help="one run's output_root")
    cmp.add_argument("b", help="the other's")
    cmp.set_defaults(func=cmd_compare)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:  # `saesuite ls results | head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
