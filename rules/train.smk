# Activation cache → JumpReLU SAEs: one job per (model, layer, site) trains that
# site's whole sparsity ladder (and widths) on the same batches.


rule train:
    input:
        manifest=paths.manifest(ROOT, "{model}"),
        normalization=paths.normalization(ROOT, "{model}"),
    output:
        paths.site_summary(ROOT, "{model}", "{layer}", "{kind}"),
    log:
        f"{ROOT}/logs/train/{{model}}/layer_{{layer}}.{{kind}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train/{{model}}/layer_{{layer}}.{{kind}}.tsv"
    # A preempted or killed job resumes from its checkpoint when retried.
    retries: 1
    conda:
        "../envs/saesuite.yaml"
    # Torch's CPU matmuls use every core they get; on GPUs this is the data loader.
    threads: workflow.cores
    resources:
        # bucket + per SAE: weights, grads, Adam moments, (batch, width) work tensors
        mem_mb=lambda w: train_mem_mb(w),
        # dense-equivalent FLOPs at the rate measured in BENCHMARKS.md, ×2
        runtime=lambda w: train_runtime(w),
        # one GPU per data-parallel process when train.device is cuda
        gpu=train_gpus(),
    params:
        job=lambda w: paths.train_job(config, w.model, int(w.layer), w.kind, SUITE),
        nproc=config["train"]["nproc"],
    script:
        "scripts/train.py"
