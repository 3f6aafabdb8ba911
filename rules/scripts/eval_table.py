# Adapter: rule eval_table → saesuite.eval.tables
from saesuite.data.logs import job_log
from saesuite.eval.tables import eval_frame, write_table

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    # the model's own SAEs on its own text (the jobs hold fine-tuned SAEs there too)
    m = sm.wildcards.model
    df = eval_frame(sm.input, [(m, m, "text")])
    write_table(df, sm.output.csv, sm.output.parquet)
