# saesuite: Gemma-Scope-style JumpReLU SAE suites from configuration.
# Review the plan with `snakemake --profile config/profiles/local -n`, run it without
# -n (the profile: README, "Reruns"); on SLURM, --profile config/profiles/slurm.
from snakemake.utils import min_version

from saesuite.spec.lock import lock_roots, release_roots

min_version("9.0")


# The embedded default applies only when no --configfile is given: Snakemake would
# otherwise merge a suite's models into the default's instead of replacing them.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


# `snakemake --report results/report.html` after a run: figures, tables, provenance.
report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/activations.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/dashboards.smk"
include: "rules/transfer.smk"
include: "rules/release.smk"
include: "rules/publish.smk"
include: "rules/report.smk"


# One run at a time per output root, across checkouts (saesuite.spec.lock). onstart
# runs in the submitting Snakemake only, and only when there are jobs to run.
onstart:
    lock_roots([ROOT, SCRATCH], workflow.basedir)


onsuccess:
    release_roots()


onerror:
    release_roots()


rule all:
    default_target: True
    input:
        WF.final_outputs(),


# Not part of `all`: a dry-run plan per repo, or the upload with publish.upload.
rule publish_all:
    input:
        WF.publish_targets(),
