# Adapter: rule release → saesuite.release.build.make_release, or for a repo of
# cross-layer transcoders saesuite.release.clt_release.make_clt_release
from pathlib import Path

from saesuite.data.logs import job_log
from saesuite.release.build import make_release
from saesuite.release.clt_release import make_clt_release
from saesuite.spec.config import config_hash
from saesuite.spec.jobs import ReleaseJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    job = ReleaseJob.from_dict(sm.params.job)
    make = make_clt_release if job.spanning else make_release
    make(
        job,
        model_info=sm.input.model,
        config_hash=config_hash(sm.config),
        out_dir=Path(sm.output[0]).parent,
    )
