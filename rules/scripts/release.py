# Adapter: rule release → saesuite.release.build.make_release
from pathlib import Path

from saesuite.data.logs import job_log
from saesuite.release.build import make_release
from saesuite.spec.config import config_hash
from saesuite.spec.jobs import ReleaseJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    make_release(
        ReleaseJob.from_dict(sm.params.job),
        model_info=sm.input.model,
        config_hash=config_hash(sm.config),
        out_dir=Path(sm.output[0]).parent,
    )
