"""Issue 36, item 6: the planner's memory formulas against the peak a real pass or
training step reaches on the CPU (resident memory, measured in a process of its own
by tests/cluster/memory_worker.py), on tiny models sized so that the counted tensors
dominate. The margin: the formula may overstate the measured growth by at most
MARGIN, and never understate it (a SLURM job sized from it must not be killed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saesuite.cluster.memory import evaluate_work_bytes, sae_gpu_bytes

WORKER = Path(__file__).with_name("memory_worker.py")
MARGIN = 1.6


def peak(what: str, **args) -> int:
    done = subprocess.run(
        [sys.executable, str(WORKER), what, json.dumps(args)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["bytes"]


def test_an_evaluate_pass_stays_within_its_estimate():
    """Logits of 4 × 256 tokens × a 32,768 vocabulary (134 MB a tensor), an SAE and
    a skip-transcoder (three sites captured) at width 8,192."""
    a = dict(vocab=32768, d=64, ctx=256, seqs=8, batch=8, loss_batch=4, width=8192)
    got = peak("evaluate", **a)
    want = evaluate_work_bytes(
        vocab=a["vocab"], ctx=a["ctx"], loss_batch_size=a["loss_batch"],
        batch_size=a["batch"], model_dtype="float32", site_widths=[a["d"]] * 3,
        max_width=a["width"],
    )  # fmt: skip
    assert got <= want <= MARGIN * got, (got, want)


@pytest.mark.parametrize("step", ["dense", "sparse"])
def test_training_steps_stay_within_their_estimate(step):
    """An SAE of width 16,384 on batches of 2,048 (the (rows, width) tensors: 134 MB
    each): the dense step is what the formula counts; the sparse one, which `auto`
    takes once L0 is low (θ₀ 3 on N(0, 1) pre-activations: L0 ≈ 22), holds less."""
    threshold = 0.001 if step == "dense" else 3.0
    a = dict(d=64, width=16384, batch=2048, step=step, threshold=threshold)
    got = peak("train", **a)
    want = sae_gpu_bytes(a["batch"], a["d"], a["width"], 1)
    assert got <= want, (got, want)
    if step == "dense":
        assert want <= MARGIN * got, (got, want)
