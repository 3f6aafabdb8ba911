# Adapter: rule tokens → saesuite.data.tokens.tokenize_splits
from saesuite.data.logs import job_log
from saesuite.data.tokens import make_tokens

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    make_tokens(
        corpus=sm.input.corpus,
        model_info=sm.input.model,
        model_cfg=sm.params.model_cfg,
        cache_root=sm.params.cache_root,
        data=sm.params.data,
        out=dict(sm.output.items()),
    )
