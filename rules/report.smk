# Evaluations and training logs → the figures and tables of `snakemake --report`:
# per model, a folder of figures (PNG for the report, SVG beside) per site and the
# evaluation table as HTML.


rule report_figures:
    input:
        table=paths.eval_table(ROOT, "{model}")["csv"],
        layers=lambda w: WF.model_eval_layers(w.model),
        sites=lambda w: WF.site_summaries(w.model),
        dashboards=lambda w: WF.dashboard_layers(w.model),
        clt=lambda w: WF.spanning_evals(w.model),
    output:
        figures=report(
            directory(paths.report_dirs(ROOT, "{model}")["figures"]),
            patterns=["{site}/{name}.png"],
            caption="report/figure.rst",
            category="{model}",
            subcategory=lambda w: site_title(w.site),
            labels={"figure": "{name}"},
        ),
        tables=report(
            directory(paths.report_dirs(ROOT, "{model}")["tables"]),
            patterns=["{name}.html"],
            caption="report/table.rst",
            category="{model}",
            subcategory="tables",
            labels={"table": "{name}"},
        ),
    log:
        f"{ROOT}/logs/report_figures/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("report_figures"),
    params:
        code=CODE_VERSIONS["report_figures"],
        target_l0=config["release"]["canonical_l0"],
    script:
        "scripts/report_figures.py"
