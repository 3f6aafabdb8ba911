# Adapter: rule transfer_table → saesuite.eval.transfer.transfer_table
from saesuite.data.logs import job_log
from saesuite.eval.transfer import transfer_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    transfer_table(sm.params.check, list(sm.input), dict(sm.output))
