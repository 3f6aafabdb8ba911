# Activation cache → JumpReLU SAEs: one job per (model, layer, site) trains that
# site's whole sparsity ladder (and widths) on the same batches.


rule train:
    input:
        manifest=paths.manifest(ROOT, "{model}"),
        normalization=paths.normalization(ROOT, "{model}"),
    output:
        paths.site_summary(ROOT, "{model}", "{layer}", "{kind}"),
    params:
        job=lambda w: paths.train_job(config, w.model, int(w.layer), w.kind),
        nproc=config["train"]["nproc"],
    log:
        f"{ROOT}/logs/train/{{model}}/layer_{{layer}}.{{kind}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train/{{model}}/layer_{{layer}}.{{kind}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    # A preempted or killed job resumes from its checkpoint when retried.
    retries: 1
    # Torch's CPU matmuls use every core they get; on GPUs this is the data loader.
    threads: workflow.cores
    resources:
        mem_mb=lambda w, input: train_mem_mb(w),
    script:
        "scripts/train.py"
