# Adapter: rule release → saesuite.release.make_release
from saesuite.config import config_hash
from saesuite.logs import job_log
from saesuite.release import make_release

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    make_release(
        sm.params.job,
        model_info=sm.input.model,
        config_hash=config_hash(sm.config),
        out_dir=sm.output[0],
    )
