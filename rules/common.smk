# Config validation, wildcard constraints and the input functions of every rule.
import dataclasses
import re

from snakemake.utils import validate

from saesuite import paths
from saesuite.config import (
    check_config,
    coerce_cli_strings,
    config_hash,
    expand_suite,
    known_site_width,
    model_layers,
    model_sites,
    n_chunks,
    seqs_per_chunk,
)
from saesuite.release import folder_name, release_groups, release_job
from saesuite.transfer import evaluations, transfer_checks

# Types first (clean messages), then again to fill the schema's defaults.
coerce_cli_strings(config)
validate(config, "../config/schema.yaml", set_default=False)
validate(config, "../config/schema.yaml")
check_config(config)

ROOT = config["output_root"]
# Effective dense-equivalent FLOP/s of one training job, for runtime requests: what
# benchmarks/train.py measured on 2 CPU cores (~0.1 TFLOP/s); an H100 does ~100×.
TRAIN_FLOPS = 1e13 if config["train"]["device"].startswith("cuda") else 1e11
CACHE = config["cache_root"] or f"{ROOT}/cache"
MODELS = list(config["models"])


def one_of(names):
    # A pattern that matches nothing when there are no names.
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    model=one_of(MODELS),
    lm=one_of(MODELS),
    chunk=r"\d{5}",
    layer=r"\d+",
    kind="res|att|mlp|mlp_in",
    data="text|chat",


def chunk_indices():
    return [f"{i:05d}" for i in range(n_chunks(config))]


def chunk_files(wildcards, kind):
    return [paths.chunk(ROOT, wildcards.model, c)[kind] for c in chunk_indices()]


SUITE = expand_suite(config)
TRAINED = sorted({s.model for s in SUITE})
EVALUATIONS = evaluations(config, SUITE)
CHECKS = {c.name: c for c in transfer_checks(config, SUITE)}
RELEASES = {
    folder_name(repo): release_job(config, repo, specs)
    for repo, specs in release_groups(config, SUITE).items()
}


wildcard_constraints:
    check=one_of(CHECKS),
    release=one_of(RELEASES),


def site_summaries():
    sites = {(s.model, s.layer, s.site) for s in SUITE}
    return [paths.site_summary(ROOT, m, L, k) for m, L, k in sorted(sites)]


def layer_site_summaries(model, layer):
    kinds = sorted({s.site for s in SUITE if s.model == model and s.layer == layer})
    return [paths.site_summary(ROOT, model, layer, k) for k in kinds]


def eval_layers(evaluation):
    e = evaluation
    return [
        paths.eval_layer(ROOT, e.trained_on, e.evaluated_on, e.data, L)
        for L in (e.layers or model_layers(config, e.trained_on))
    ]


def transfer_inputs(name):
    return [f for e in CHECKS[name].evaluations for f in eval_layers(e)]


def release_inputs(name):
    job = RELEASES[name]
    layers = sorted({s["spec"]["layer"] for s in job["saes"]})
    m = job["model"]
    return [paths.eval_layer(ROOT, m, m, "text", L) for L in layers]


def publish_job(name):
    job = RELEASES[name]
    pub = config["publish"]
    return {
        "repo_id": job["repo"],
        **{k: pub[k] for k in ("upload", "private", "delete_extra", "revision")},
        "message": f"saesuite: {job['repo']} ({len(job['saes'])} SAEs of "
        f"{job['model']}, config {config_hash(config)})",
    }


def check_params(name):
    return dataclasses.asdict(CHECKS[name])


def _train_job(wildcards):
    layer = int(wildcards.layer)
    job = paths.train_job(config, wildcards.model, layer, wildcards.kind, SUITE)
    return job, known_site_width(config, wildcards.model, wildcards.kind)


def train_mem_mb(wildcards):
    return paths.train_mem_mb(config, *_train_job(wildcards))


def train_runtime(wildcards):
    return paths.train_runtime_min(*_train_job(wildcards), TRAIN_FLOPS)


def train_gpus():
    return (
        config["train"]["nproc"] if config["train"]["device"].startswith("cuda") else 0
    )


def final_outputs():
    out = site_summaries()
    # The cache itself is a target, so a deleted chunk is recomputed (only that one:
    # Snakemake skips jobs whose outputs exist, however old the targets downstream).
    out += [paths.chunk(ROOT, m, c)["data"] for m in TRAINED for c in chunk_indices()]
    out += [paths.eval_table(ROOT, m)["csv"] for m in TRAINED]
    out += [f for e in EVALUATIONS for f in eval_layers(e)]
    out += [paths.transfer_outputs(ROOT, name)["plot"] for name in CHECKS]
    out += [paths.release_dir(ROOT, name) for name in RELEASES]
    return out
