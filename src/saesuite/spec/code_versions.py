"""The version of the code behind each rule's results: what Snakemake reruns on.

Snakemake's own code trigger reruns a `script:` rule whenever rules/scripts/*.py is
newer than its outputs, so a fresh clone (or a `git pull`) pointed at a finished
suite planned all of it again, hundreds of TB of extraction at suite scale; and it
never saw the package code that computes the results. The Snakefile turns that
trigger off (unless `--rerun-triggers` is given) and every rule takes its number
below as a parameter instead: bump a rule's number in the change that alters what it
writes (its bytes or their meaning), and Snakemake's params trigger reruns exactly
its jobs and, through their newer outputs, what is built from them. Refactors,
comments and logs keep the numbers. Every output's `versions` records them
(saesuite.spec.io.versions).
"""

from __future__ import annotations

CODE_VERSIONS: dict[str, int] = {
    "corpus": 1,
    "model": 1,
    "tokens": 1,
    "extract": 2,  # 2: block checksums in each chunk's sidecar
    "manifest": 2,  # 2: names each chunk's sidecar (info_file)
    "normalize": 1,
    # 5: data-parallel logs its global FVU, outliers; 4: fused Adam; 3: Matryoshka,
    # pre-activation losses; 2: dense logged
    "train": 5,
    # 3: a dictionary trained without its outlier tokens is evaluated without them;
    # 2: one job per model run through × data × layer
    "evaluate": 3,
    "eval_table": 2,  # 2: the model's own SAEs from the shared jobs
    "transfer_rollouts": 2,  # 2: rollouts.json's n_prompts beside its prompts
    "finetune": 2,  # 2: fused Adam
    "transfer_table": 2,  # 2: the check's rows from the shared jobs
    # 3: without the outlier tokens a dictionary trained without; 2: each latent's
    # histogram over its own range
    "dashboards": 4,
    # 5: CLT and crosscoder repos with Gemma Scope 2's config.json, named by all
    # their layers' latents; 4: the card's sink note model-neutral; 3: the card says
    # how to apply dictionaries trained without their outlier tokens; 2:
    # circuit-tracer set configs, transcoders in the card and plot
    "release": 5,
    "publish": 1,
    # 8: CLTs beside the per-layer transcoders; 7: training FVU spikes flagged; 6:
    # held-out L0 by target; 5: own SAEs from the shared jobs
    "report_figures": 8,
}
