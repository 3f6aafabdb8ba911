# Tokens → activation cache: chunks (all sites in one forward pass), manifest, and
# the normalisation scalar C per site.


rule extract:
    input:
        tokens=paths.tokens(ROOT, "{model}")["train"],
        model=paths.model_info(ROOT, "{model}"),
    output:
        data=paths.chunk(SCRATCH, "{model}", "{chunk}")["data"],
        info=paths.chunk(SCRATCH, "{model}", "{chunk}")["info"],
    log:
        f"{ROOT}/logs/extract/{{model}}/{{chunk}}.log",
    benchmark:
        f"{ROOT}/benchmarks/extract/{{model}}/{{chunk}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    # The forward pass uses every core it gets; chunks run one after another locally.
    threads: job_threads("extract")
    resources:
        **resources_of("extract"),
    params:
        code=CODE_VERSIONS["extract"],
        model_cfg=lambda w: config["models"][w.model],
        cache_root=CACHE,
        sites=get_site_names,
        seqs_per_chunk=seqs_per_chunk(config),
        activations=config["activations"],
        identity=lambda w: paths.activation_identity(config, w.model),
    script:
        "scripts/extract.py"


rule manifest:
    input:
        # The data files too: a deleted chunk is then recomputed (alone).
        data=lambda w: WF.chunk_files(w.model, "data"),
        info=lambda w: WF.chunk_files(w.model, "info"),
    output:
        paths.manifest(SCRATCH, "{model}"),
    log:
        f"{ROOT}/logs/manifest/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("manifest"),
    params:
        code=CODE_VERSIONS["manifest"],
        identity=lambda w: paths.activation_identity(config, w.model),
    script:
        "scripts/manifest.py"


rule normalize:
    input:
        paths.manifest(SCRATCH, "{model}"),
    output:
        paths.normalization(SCRATCH, "{model}"),
    log:
        f"{ROOT}/logs/normalize/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("normalize"),
    params:
        code=CODE_VERSIONS["normalize"],
        sites=get_site_names,
    script:
        "scripts/normalize.py"
