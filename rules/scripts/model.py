# Adapter: rule model → saesuite.data.models.describe_model (converts GGUF once)
from saesuite.data.logs import job_log
from saesuite.data.models import describe_model
from saesuite.spec.io import versions, write_json

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    info = describe_model(sm.wildcards.model, sm.params.model_cfg, sm.params.cache_root)
    write_json(sm.output[0], {**info, "versions": versions()})
