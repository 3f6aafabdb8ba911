# Adapter: rule normalize → saesuite.data.store.write_normalization
from saesuite.data.logs import job_log
from saesuite.data.reader import write_normalization

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    result = write_normalization(sm.input[0], sm.params.sites, sm.output[0])
    for site, c in result["scale"].items():
        print(f"{site}: C = {c:.4f}")
