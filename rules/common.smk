# Config validation, wildcard constraints, the input functions of the rules and the
# final targets. What they return comes from saesuite.spec.workflow (the plan, the
# typed jobs) and saesuite.cluster.resources (each job's resources), tested there.
import os
import re
import signal

from saesuite.cluster.resources import JobResources
from saesuite.spec import paths
from saesuite.spec.code_versions import CODE_VERSIONS
from saesuite.spec.config import validate_config
from saesuite.spec.dictionary import FAMILY_TITLES, TRAIN_JOBS
from saesuite.spec.sites import Site
from saesuite.spec.suite import seqs_per_chunk
from saesuite.spec.workflow import Workflow

# The one validation sequence (load_config runs it too): typed, recipe, defaults,
# semantic checks; a bad key stops the run here, named, before any job.
validate_config(config)

WF = Workflow(config)
RESOURCES = JobResources(WF)
ROOT = WF.root
SCRATCH = WF.scratch
CACHE = config["cache_root"] or f"{ROOT}/cache"
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


def one_of(names):
    # A pattern that matches nothing when there are no names.
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    model=one_of([*config["models"], *WF.tuned]),
    tuned=one_of(WF.tuned),
    lm=one_of(config["models"]),
    chunk=r"\d{5}",
    layer=r"\d+",
    kind=one_of(TRAIN_JOBS),
    clt=one_of([d.path for d in WF.spanning]),
    data="text|chat",
    check=one_of(WF.checks),
    release=one_of(WF.releases),


def site_title(kind):
    return FAMILY_TITLES.get(kind, kind)


def get_site_names(w):
    # from the suite expanded once (model_sites would expand it again per job)
    return [Site(L, k).name for L, k in WF.model_sites(w.model)]


def get_train_job(w):
    return WF.train_params(w.model, int(w.layer), w.kind)


def get_train_nproc(w):
    return RESOURCES.train_nproc(w.model, int(w.layer), w.kind)


def get_eval_job(w):
    return WF.eval_params(w.lm, w.data, int(w.layer))


def job_threads(stage):
    """Threads of a compute-heavy rule: every core of a local run (two single-thread
    jobs at once measured no faster end to end: BENCHMARKS.md); on a cluster (no
    --cores) the CPUs the job asks for."""
    return workflow._cores or RESOURCES.cpus(stage)


def resources_of(stage):
    """The `resources:` of a rule: each key a function of the job's wildcards."""
    return {
        k: (lambda w, k=k: RESOURCES(stage, dict(w))[k]) for k in RESOURCES.keys(stage)
    }
