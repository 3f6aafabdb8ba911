# Config validation, wildcard constraints and the input functions of every rule.
import dataclasses
import os
import re
import signal

from snakemake.utils import validate

from saesuite.spec import paths
from saesuite.spec.config import (
    SITE_NAMES,
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
from saesuite.spec.releases import folder_name, release_groups, release_job
from saesuite.cluster import resources as res
from saesuite.spec.checks import evaluations, transfer_checks

# Types first (clean messages), then again to fill the schema's defaults.
coerce_cli_strings(config)
validate(config, "../config/schema.yaml", set_default=False)
validate(config, "../config/schema.yaml")
check_config(config)

ROOT = config["output_root"]
CACHE = config["cache_root"] or f"{ROOT}/cache"
# Activation caches and checkpoints: large and regenerable (a shared scratch on clusters).
SCRATCH = config["scratch_root"] or ROOT
# Retries belong to the submitting Snakemake: inside a cluster job a retry would resume
# in the same allocation, which the time limit is about to end.
RETRIES = 0 if workflow.remote_exec else config["resources"]["retries"]

# SLURM's preemption warning (USR1, resources.preempt_signal_s) reaches every process
# of a job step, Snakemake's own included, whose default action for it is to exit.
# Snakemake ignores it, so only the trainer (which installs a handler) acts on it.
if os.environ.get("SLURM_JOB_ID"):
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
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
    return [paths.chunk(SCRATCH, wildcards.model, c)[kind] for c in chunk_indices()]


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


def model_site_summaries(model):
    sites = {(s.layer, s.site) for s in SUITE if s.model == model}
    return [paths.site_summary(ROOT, model, L, k) for L, k in sorted(sites)]


def site_title(kind):
    return SITE_NAMES.get(kind, kind)


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


def _train_specs(wildcards):
    layer, kind = int(wildcards.layer), wildcards.kind
    specs = [s for s in SUITE
             if s.model == wildcards.model and s.layer == layer and s.site == kind]  # fmt: skip
    return specs, known_site_width(config, wildcards.model, kind)


def train_params(wildcards):
    job = paths.train_job(
        config, wildcards.model, int(wildcards.layer), wildcards.kind, SUITE
    )
    return {k: v for k, v in job.items() if k not in paths.LOCATION_KEYS}


def train_nproc(wildcards):
    return res.train_nproc(config, [s.width for s in _train_specs(wildcards)[0]])


def _sites(model):
    return sorted({(s.layer, s.site) for s in SUITE if s.model == model})


def _estimate(stage, w):
    """One job's resources (a dict) for `stage` and the job's wildcards, computed once
    per job (Snakemake asks key by key)."""
    key = (stage, tuple(sorted(dict(w).items())))
    if key not in _ESTIMATES:
        _ESTIMATES[key] = _compute_estimate(stage, w)
    return _ESTIMATES[key]


_ESTIMATES = {}


def _compute_estimate(stage, w):
    if stage in ("corpus", "model", "tokens"):
        return res.data_request(config, stage, getattr(w, "model", None))
    if stage == "extract":
        return res.request(
            config, stage, *res.extract_estimate(config, w.model, _sites(w.model))
        )
    if stage in ("manifest", "normalize"):
        # hashing, then one pass per site over the chunks, at ~200 MB/s
        n = res.cache_bytes(config, w.model, _sites(w.model))
        return res.io_request(config, stage, n * (1 if stage == "manifest" else 2), 2e8)
    if stage == "train":
        specs, d_in = _train_specs(w)
        return res.request(config, stage, res.train_mem_mb(config, specs, d_in),
                           res.train_flops(specs, d_in), train_nproc(w))  # fmt: skip
    if stage == "evaluate":
        specs = [s for s in SUITE if s.model == w.model and s.layer == int(w.layer)]
        return res.request(
            config, stage, *res.evaluate_estimate(config, w.lm, w.data, specs)
        )
    if stage == "transfer_rollouts":
        return res.request(config, stage, *res.rollouts_estimate(config, w.model))
    if stage == "publish":
        return res.io_request(config, stage, release_bytes(w.release), 2e7)
    # tables and release folders: small files
    return res.request(config, stage, 2 * res.BASE_MB, minutes=res.BASE_MB / 1e3)


def release_bytes(name):
    job = RELEASES[name]
    return sum(
        2
        * known_site_width(config, job["model"], s["spec"]["site"])
        * s["spec"]["width"]
        * 4
        for s in job["saes"]
    )


def job_threads(stage):
    """Threads of a compute-heavy rule: every core of a local run; on a cluster (no
    --cores) the CPUs the job asks for."""
    return workflow._cores or res.request(config, stage, 0)["cpus_per_task"]


def resources_of(stage):
    """The `resources:` of a rule: each key a function of the job's wildcards."""
    keys = res.request(config, stage, 0, 0.0, 1).keys()
    return {k: (lambda w, k=k: _estimate(stage, w)[k]) for k in keys}


def final_outputs():
    out = site_summaries()
    # The cache itself is a target, so a deleted chunk is recomputed (only that one:
    # Snakemake skips jobs whose outputs exist, however old the targets downstream).
    out += [
        paths.chunk(SCRATCH, m, c)["data"] for m in TRAINED for c in chunk_indices()
    ]
    out += [paths.eval_table(ROOT, m)["csv"] for m in TRAINED]
    out += [f for e in EVALUATIONS for f in eval_layers(e)]
    out += [paths.transfer_outputs(ROOT, name)["plot"] for name in CHECKS]
    out += [
        paths.report_dirs(ROOT, m)[k] for m in TRAINED for k in ("figures", "tables")
    ]
    out += [paths.release_dir(ROOT, name) for name in RELEASES]
    return out
