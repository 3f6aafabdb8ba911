# Adapter: rule train → saesuite.sae.train.train_site (through torchrun when nproc > 1)
import dataclasses
import sys

from saesuite.data.logs import job_log
from saesuite.sae.launch import torchrun
from saesuite.sae.train import train_site
from saesuite.spec import paths
from saesuite.spec.config import config_hash
from saesuite.spec.io import read_json, write_json
from saesuite.spec.jobs import TrainJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = TrainJob.from_dict(sm.params.job).located(
        sm.input.manifest, sm.input.normalization
    )
    job = dataclasses.replace(job, config_hash=config_hash(sm.config))
    if sm.params.nproc > 1:
        job_file = sm.output[0] + ".job.json"
        write_json(job_file, job.to_dict())
        rc = torchrun(job_file, sm.params.nproc)
        if rc:
            sys.exit(rc)
        results = [
            read_json(paths.sae_file(job.out_dir(d), "info")) for d in job.dictionaries
        ]
    else:
        results = train_site(job)
    write_json(sm.output[0], {"site": job.site, "saes": results})
