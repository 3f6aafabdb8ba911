# Text → tokens: the corpus (shared by all models) and each model's token splits.


rule corpus:
    output:
        jsonl=paths.corpus(ROOT)["jsonl"],
        info=paths.corpus(ROOT)["info"],
    log:
        f"{ROOT}/logs/corpus/corpus.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("corpus"),
    params:
        code=CODE_VERSIONS["corpus"],
        sources=config["data"]["sources"],
        shuffle=config["data"]["shuffle_documents"],
        seed=config["seed"],
        max_chars=paths.corpus_chars(config),
    script:
        "scripts/corpus.py"


rule model:
    output:
        paths.model_info(ROOT, "{model}"),
    log:
        f"{ROOT}/logs/model/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("model"),
    params:
        code=CODE_VERSIONS["model"],
        model_cfg=lambda w: config["models"][w.model],
        cache_root=CACHE,
    script:
        "scripts/model.py"


rule tokens:
    input:
        corpus=rules.corpus.output.jsonl,
        model=paths.model_info(ROOT, "{model}"),
    output:
        train=paths.tokens(ROOT, "{model}")["train"],
        eval=paths.tokens(ROOT, "{model}")["eval"],
        info=paths.tokens(ROOT, "{model}")["info"],
    log:
        f"{ROOT}/logs/tokens/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("tokens"),
    params:
        code=CODE_VERSIONS["tokens"],
        model_cfg=lambda w: config["models"][w.model],
        cache_root=CACHE,
        data=config["data"],
    script:
        "scripts/tokens.py"
