# Adapter: rule finetune → saesuite.sae.finetune.finetune_layer
import dataclasses

from saesuite.data.logs import job_log
from saesuite.sae.finetune import finetune_layer
from saesuite.spec.config import config_hash
from saesuite.spec.io import write_json
from saesuite.spec.jobs import FinetuneJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = FinetuneJob.from_dict(sm.params.job).located(
        sm.input.corpus, sm.input.normalization
    )
    h = config_hash(sm.config)
    job = dataclasses.replace(
        job, trains=tuple(dataclasses.replace(t, config_hash=h) for t in job.trains)
    )
    results = finetune_layer(
        job, model_info=sm.input.model, cache_root=sm.params.cache_root
    )
    write_json(sm.output[0], {"sites": [t.site for t in job.trains], "saes": results})
