# Trained SAEs → metrics: one job per (model run through, data, layer) for every
# dictionary evaluated there (PT, fine-tuned, an IT model's own), so that they share
# each batch's clean pass.


rule evaluate:
    input:
        sites=lambda w: WF.pass_site_summaries(w.lm, w.data, int(w.layer)),
        model=paths.model_info(ROOT, "{lm}"),
        data=lambda w: paths.eval_data(ROOT, w.lm, w.data),
    output:
        paths.eval_pass(ROOT, "{lm}", "{data}", "{layer}"),
    log:
        f"{ROOT}/logs/evaluate/{{lm}}.{{data}}.layer_{{layer}}.log",
    benchmark:
        f"{ROOT}/benchmarks/evaluate/{{lm}}.{{data}}.layer_{{layer}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        code=CODE_VERSIONS["evaluate"],
        job=get_eval_job,
        cache_root=CACHE,
    script:
        "scripts/evaluate.py"


rule eval_table:
    input:
        lambda w: WF.model_eval_layers(w.model),
    output:
        csv=paths.eval_table(ROOT, "{model}")["csv"],
        parquet=paths.eval_table(ROOT, "{model}")["parquet"],
    log:
        f"{ROOT}/logs/eval_table/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("eval_table"),
    params:
        code=CODE_VERSIONS["eval_table"],
    script:
        "scripts/eval_table.py"


# A cross-layer transcoder as a replacement model of every MLP it spans, and one
# layer at a time (saesuite.eval.clt_eval), on its model's held-out text.
rule evaluate_clt:
    input:
        clt=paths.spanning_summary(ROOT, "{model}", "{clt}"),
        model=paths.model_info(ROOT, "{model}"),
        data=paths.eval_data(ROOT, "{model}", "text"),
    output:
        paths.sae_eval(ROOT, "{model}", "{model}", "text", "{clt}"),
    log:
        f"{ROOT}/logs/evaluate_clt/{{model}}/{{clt}}.log",
    benchmark:
        f"{ROOT}/benchmarks/evaluate_clt/{{model}}/{{clt}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        code=CODE_VERSIONS["evaluate"],
        job=lambda w: WF.spanning_eval_params(w.model, w.clt),
        cache_root=CACHE,
    script:
        "scripts/evaluate_clt.py"
