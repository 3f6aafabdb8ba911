# Adapter: rule report_figures → saesuite.report.figures.write_report
from saesuite.data.logs import job_log
from saesuite.report.figures import write_report

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    write_report(
        sm.input.table,
        list(sm.input.layers),
        list(sm.input.sites),
        sm.wildcards.model,
        sm.params.target_l0,
        sm.output.figures,
        sm.output.tables,
        list(sm.input.dashboards),
        list(sm.input.clt),
    )
