# Adapter: rule eval_table → saesuite.tables
from saesuite.logs import job_log
from saesuite.tables import eval_frame, write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    write_table(eval_frame(sm.input), sm.output.csv, sm.output.parquet)
