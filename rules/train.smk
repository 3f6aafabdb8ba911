# Activation cache → JumpReLU dictionaries: one job per (model, layer, sites read and
# written) trains a site's whole sparsity ladder (and widths), or a layer's plain and
# skip-transcoders, on the same batches (`kind`: Dictionary.job).


rule train:
    input:
        manifest=paths.manifest(SCRATCH, "{model}"),
        normalization=paths.normalization(SCRATCH, "{model}"),
    output:
        paths.site_summary(ROOT, "{model}", "{layer}", "{kind}"),
    log:
        f"{ROOT}/logs/train/{{model}}/layer_{{layer}}.{{kind}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train/{{model}}/layer_{{layer}}.{{kind}}.tsv"
    # A preempted or killed job resumes from its checkpoint when retried; a job longer
    # than resources.max_runtime continues over retries.
    retries: RETRIES
    conda:
        "../envs/saesuite.yaml"
    # Torch's CPU matmuls use every core they get; on GPUs this is the data loader.
    threads: job_threads("train")
    # mem_mb, runtime, cpus_per_task, the GRES for train.nproc GPUs (more for wide
    # SAEs: resources.nproc_by_width) and the preemption signal: saesuite.cluster.resources
    resources:
        **resources_of("train"),
    params:
        code=CODE_VERSIONS["train"],
        job=get_train_job,
        nproc=get_train_nproc,
    script:
        "scripts/train.py"


# One cross-layer transcoder per job, over every layer it spans (`clt`: its
# Dictionary.path): row-aligned reads of each layer's MLP input and output.
rule train_clt:
    input:
        manifest=paths.manifest(SCRATCH, "{model}"),
        normalization=paths.normalization(SCRATCH, "{model}"),
    output:
        paths.spanning_summary(ROOT, "{model}", "{clt}"),
    log:
        f"{ROOT}/logs/train_clt/{{model}}/{{clt}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train_clt/{{model}}/{{clt}}.tsv"
    retries: RETRIES
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("train")
    resources:
        **resources_of("train"),
    params:
        code=CODE_VERSIONS["train"],
        job=lambda w: WF.spanning_train_params(w.model, w.clt),
    script:
        "scripts/train_clt.py"
