# Adapter: rule extract → saesuite.data.extract.extract_chunk
from saesuite.data.extract import extract_chunk
from saesuite.data.logs import job_log
from saesuite.spec.io import read_json

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    acts = sm.params.activations
    model = read_json(sm.input.model)
    extract_chunk(
        model_cfg=sm.params.model_cfg,
        cache_root=sm.params.cache_root,
        tokens_path=sm.input.tokens,
        chunk=int(sm.wildcards.chunk),
        seqs_per_chunk=sm.params.seqs_per_chunk,
        sites=sm.params.sites,
        site_widths=model["site_widths"],
        dtype=acts["dtype"],
        min_free_gb=acts["min_free_gb"],
        out=sm.output.data,
        out_info=sm.output.info,
        identity=sm.params.identity,
    )
