# Adapter: rule train_clt → saesuite.sae.clt_train.train_clt (it writes the output)
import dataclasses

from saesuite.data.logs import job_log
from saesuite.sae.clt_train import train_clt
from saesuite.spec.config import config_hash
from saesuite.spec.jobs import TrainJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = TrainJob.from_dict(sm.params.job).located(
        sm.input.manifest, sm.input.normalization
    )
    train_clt(dataclasses.replace(job, config_hash=config_hash(sm.config)))
