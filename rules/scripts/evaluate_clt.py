# Adapter: rule evaluate_clt → saesuite.eval.clt_eval.evaluate_clt
from saesuite.data.logs import job_log
from saesuite.eval.clt_eval import evaluate_clt
from saesuite.spec.jobs import EvalJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    evaluate_clt(
        EvalJob.from_dict(sm.params.job),
        data_path=sm.input.data,
        cache_root=sm.params.cache_root,
        out=sm.output[0],
    )
