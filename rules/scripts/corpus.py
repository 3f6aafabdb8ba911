# Adapter: rule corpus → saesuite.data.corpus.build_corpus
from saesuite.data.corpus import build_corpus
from saesuite.data.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    info = build_corpus(
        sm.params.sources,
        sm.output.jsonl,
        sm.output.info,
        max_chars=sm.params.max_chars,
        shuffle=sm.params.shuffle,
        seed=sm.params.seed,
    )
    print(f"{info['documents']} documents, {info['characters']} characters")
