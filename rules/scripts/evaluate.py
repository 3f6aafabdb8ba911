# Adapter: rule evaluate → saesuite.eval.evaluate.evaluate_layer
from saesuite.data.logs import job_log
from saesuite.eval.evaluate import evaluate_layer
from saesuite.spec.config import config_hash
from saesuite.spec.jobs import EvalJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    evaluate_layer(
        EvalJob.from_dict(sm.params.job),
        data_path=sm.input.data,
        cache_root=sm.params.cache_root,
        out=sm.output[0],
        extra={"config_hash": config_hash(sm.config)},
    )
