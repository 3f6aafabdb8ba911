# Adapter: rule evaluate → saesuite.evaluate.evaluate_layer
from saesuite.config import config_hash
from saesuite.evaluate import evaluate_layer
from saesuite.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    evaluate_layer(
        sm.params.job,
        data_path=sm.input.data,
        cache_root=sm.params.cache_root,
        out=sm.output[0],
        extra={"config_hash": config_hash(sm.config)},
    )
