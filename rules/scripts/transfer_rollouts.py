# Adapter: rule transfer_rollouts → saesuite.eval.transfer.make_rollouts
from saesuite.data.logs import job_log
from saesuite.eval.transfer import make_rollouts
from saesuite.spec.io import read_json
from saesuite.spec.jobs import RolloutsJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    make_rollouts(
        RolloutsJob.from_dict(sm.params.job),
        model_type=read_json(sm.input[0])["model_type"],
        cache_root=sm.params.cache_root,
        out={"data": sm.output.data, "info": sm.output.info},
    )
