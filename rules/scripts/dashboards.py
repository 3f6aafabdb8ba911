# Adapter: rule dashboards → saesuite.eval.dashboards.dashboard_layer
from saesuite.data.logs import job_log
from saesuite.eval.dashboards import dashboard_layer
from saesuite.spec.jobs import DashboardJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    dashboard_layer(
        DashboardJob.from_dict(sm.params.job),
        data_path=sm.input.data,
        cache_root=sm.params.cache_root,
        out=sm.output[0],
    )
