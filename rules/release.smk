# Evaluated SAEs → release folders, one per Hub repo, in the configured layout.


rule release:
    input:
        evals=lambda w: WF.release_inputs(w.release),
        model=lambda w: paths.model_info(ROOT, WF.releases[w.release].model),
    output:
        paths.release_manifest(ROOT, "{release}"),
    log:
        f"{ROOT}/logs/release/{{release}}.log",
    conda:
        "../envs/saesuite.yaml"
    resources:
        **resources_of("release"),
    params:
        code=CODE_VERSIONS["release"],
        job=lambda w: WF.release_params(w.release),
    script:
        "scripts/release.py"
