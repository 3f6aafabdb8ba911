# Adapter: rule manifest → saesuite.data.store.write_manifest
from saesuite.data.logs import job_log
from saesuite.data.store import write_manifest

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    m = write_manifest(list(sm.input.info), sm.output[0], sm.params.identity)
    print(
        f"{len(m['chunks'])} chunks, {m['n_tokens']} tokens ({m['n_valid']} unmasked)"
    )
