# Release folders → the Hugging Face Hub: a dry-run plan per repo by default, the
# upload of what the Hub does not hold yet with publish.upload. Not part of `all`:
# run `snakemake publish_all` (Snakefile; add --forcerun publish to re-plan later).


rule publish:
    input:
        paths.release_manifest(ROOT, "{release}"),
    output:
        paths.publish_record(ROOT, "{release}", config["publish"]["upload"]),
    log:
        f"{ROOT}/logs/publish/{{release}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("publish"),
    params:
        code=CODE_VERSIONS["publish"],
        job=lambda w: WF.publish_params(w.release),
    script:
        "scripts/publish.py"
