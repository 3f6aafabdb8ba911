# PT→IT transfer (or, without an IT model, the format-shift check): chat rollouts of
# the model the SAEs run through, then one table and plot per check.


rule transfer_rollouts:
    input:
        paths.model_info(ROOT, "{model}"),
    output:
        data=paths.rollouts(ROOT, "{model}")["data"],
        info=paths.rollouts(ROOT, "{model}")["info"],
    log:
        f"{ROOT}/logs/transfer_rollouts/{{model}}.log",
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("transfer_rollouts")
    resources:
        **resources_of("transfer_rollouts"),
    params:
        code=CODE_VERSIONS["transfer_rollouts"],
        job=lambda w: WF.rollouts_params(w.model),
        cache_root=CACHE,
    script:
        "scripts/transfer_rollouts.py"


rule transfer_table:
    input:
        lambda w: WF.transfer_inputs(w.check),
    output:
        csv=paths.transfer_outputs(ROOT, "{check}")["csv"],
        parquet=paths.transfer_outputs(ROOT, "{check}")["parquet"],
        svg=paths.transfer_outputs(ROOT, "{check}")["svg"],
        html=report(
            paths.transfer_outputs(ROOT, "{check}")["html"],
            caption="report/transfer_table.rst",
            category="transfer",
            subcategory="{check}",
            labels={"check": "{check}", "item": "table"},
        ),
        plot=report(
            paths.transfer_outputs(ROOT, "{check}")["plot"],
            caption="report/transfer_plot.rst",
            category="transfer",
            subcategory="{check}",
            labels={"check": "{check}", "item": "delta loss and FVU vs L0"},
        ),
    log:
        f"{ROOT}/logs/transfer_table/{{check}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("transfer_table"),
    params:
        code=CODE_VERSIONS["transfer_table"],
        check=lambda w: WF.check_params(w.check),
    script:
        "scripts/transfer_table.py"


# Gemma Scope 2's IT SAEs (transfer.finetune_share > 0): one layer's PT dictionaries
# fine-tuned on a check's target model (its activations extracted once per layer),
# written under the fine-tuned key.
rule finetune:
    input:
        unpack(lambda w: WF.finetune_inputs(w.tuned, int(w.layer))),
    output:
        paths.finetune_summary(ROOT, "{tuned}", "{layer}"),
    log:
        f"{ROOT}/logs/finetune/{{tuned}}/layer_{{layer}}.log",
    benchmark:
        f"{ROOT}/benchmarks/finetune/{{tuned}}/layer_{{layer}}.tsv"
    conda:
        "../envs/saesuite.yaml"
    threads: job_threads("finetune")
    resources:
        **resources_of("finetune"),
    params:
        code=CODE_VERSIONS["finetune"],
        job=lambda w: WF.finetune_params(w.tuned, int(w.layer)),
        cache_root=CACHE,
    script:
        "scripts/finetune.py"
