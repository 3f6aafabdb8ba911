# Adapter: rule publish → saesuite.release.publish.publish_release
# (a summary line on stderr)
import sys
from pathlib import Path

from saesuite.data.logs import job_log
from saesuite.release.publish import publish_release
from saesuite.spec.jobs import PublishJob

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    r = publish_release(
        PublishJob.from_dict(sm.params.job),
        folder=Path(sm.input[0]).parent,
        out=sm.output[0],
    )
verb = "sent" if r["mode"] == "upload" else "to send"
print(f"publish {r['mode']} {r['repo_id']}: {r['upload_files']} of {len(r['files'])} "
      f"files ({r['upload_bytes'] / 1e6:.1f} MB) {verb}; remote {r['remote']}; "
      f"plan in {sm.output[0]}", file=sys.stderr)  # fmt: skip
