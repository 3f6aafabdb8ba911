# Trained dictionaries → latent dashboards: one job per (model, layer), the held-out
# split's forward pass shared by every dictionary of the layer (dashboards.enabled;
# the layers of dashboards.layers).


rule dashboards:
    input:
        sites=lambda w: WF.layer_site_summaries(w.model, int(w.layer)),
        model=paths.model_info(ROOT, "{model}"),
        data=lambda w: paths.eval_data(ROOT, w.model, "text"),
    output:
        paths.dashboards_layer(ROOT, "{model}", "{layer}"),
    log:
        f"{ROOT}/logs/dashboards/{{model}}.layer_{{layer}}.log",
    benchmark:
        f"{ROOT}/benchmarks/dashboards/{{model}}.layer_{{layer}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("dashboards")
    resources:
        **resources_of("dashboards"),
    params:
        code=CODE_VERSIONS["dashboards"],
        job=lambda w: WF.dashboard_params(w.model, int(w.layer)),
        cache_root=CACHE,
    script:
        "scripts/dashboards.py"
