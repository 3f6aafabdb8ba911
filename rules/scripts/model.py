# Adapter: rule model → saesuite.models.describe_model (converts GGUF once)
from saesuite.io import versions, write_json
from saesuite.logs import job_log
from saesuite.models import describe_model

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    info = describe_model(sm.wildcards.model, sm.params.model_cfg, sm.params.cache_root)
    write_json(sm.output[0], {**info, "versions": versions()})
