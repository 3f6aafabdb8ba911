# Adapter: rule eval_table → saesuite.eval.tables
from saesuite.data.logs import job_log
from saesuite.eval.tables import eval_frame, write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    write_table(eval_frame(sm.input), sm.output.csv, sm.output.parquet)
