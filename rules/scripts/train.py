# Adapter: rule train → saesuite.sae.train.train_site (through torchrun when nproc > 1)
import sys

from saesuite.data.logs import job_log
from saesuite.sae.launch import torchrun
from saesuite.sae.train import train_site
from saesuite.spec import paths
from saesuite.spec.config import config_hash
from saesuite.spec.io import read_json, write_json

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = sm.params.job
    paths.locate_train_job(job, sm.input.manifest, sm.input.normalization)
    job["identity"]["config_hash"] = config_hash(sm.config)
    if sm.params.nproc > 1:
        job_file = sm.output[0] + ".job.json"
        write_json(job_file, job)
        rc = torchrun(job_file, sm.params.nproc)
        if rc:
            sys.exit(rc)
        results = [read_json(f"{s['out_dir']}/sae.json") for s in job["saes"]]
    else:
        results = train_site(job)
    write_json(sm.output[0], {"site": job["site"], "saes": results})
