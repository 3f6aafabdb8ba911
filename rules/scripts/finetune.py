# Adapter: rule finetune → saesuite.sae.finetune.finetune_site
import dataclasses

from saesuite.data.logs import job_log
from saesuite.sae.finetune import finetune_site
from saesuite.spec import paths
from saesuite.spec.config import config_hash
from saesuite.spec.io import write_json
from saesuite.spec.jobs import FinetuneJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = FinetuneJob.from_dict(sm.params.job)
    ckpt = paths.checkpoint(sm.params.scratch, job.train.model, job.train.name)
    job = job.located(sm.input.corpus, sm.input.normalization, ckpt)
    job = dataclasses.replace(
        job, train=dataclasses.replace(job.train, config_hash=config_hash(sm.config))
    )
    results = finetune_site(
        job, model_info=sm.input.model, cache_root=sm.params.cache_root
    )
    write_json(sm.output[0], {"site": job.train.site, "saes": results})
