"""Memory and FLOP formulas of training and inference (no torch, no config): what a
dictionary takes on a device, how dictionaries are grouped to fit one, over how many
processes a wide one must be sharded, and a step's or a pass's FLOPs. The planner and
the resources (`cluster.resources`), the trainer's groups and the evaluate job's use
them, so a job is sized by the formula it runs under.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from saesuite.spec.dictionary import Dictionary
from saesuite.spec.known_models import ModelShape
from saesuite.spec.sizes import (
    BYTES,
    ENCODE_BYTES,
    KL_BLOCK,
    clt_params,
    dictionary_bytes,
)

GPU_HEADROOM = 0.9  # of resources.gpu_mem_gb: CUDA context, allocator, the batch


F32 = BYTES["float32"]
# (rows, width) float32 tensors a dense training step holds at its peak:
# pre-activations, activations, the step's output, their gradients and the
# estimators' temporaries (7.3 measured on the CPU:
# tests/cluster/test_memory_measured.py)
WORK_TENSORS = 8


def n_prefixes(fractions: Sequence[float] | None) -> int:
    """The Matryoshka loss's inner prefixes (train.matryoshka_fractions)."""
    return len(fractions or ())


def sae_gpu_bytes(
    batch_size: int,
    d_in: int,
    width: int,
    nproc: int,
    sharded: bool = False,
    skip: bool = False,
    prefixes: int = 0,
) -> int:
    """Bytes one SAE takes on each GPU of a job of `nproc` processes: fp32 weights,
    gradients and two Adam moments, and the dense step's (rows, width) work tensors
    (WORK_TENSORS). Data parallelism gives each
    process the whole SAE and batch/nproc rows; `sharded` gives it width/nproc
    latents (saesuite.sae.shard) and the whole batch. `skip`: a skip-transcoder,
    whose W_skip every process holds whole. `prefixes` (`n_prefixes`): the Matryoshka
    loss keeps, per group of latents (the inner prefixes and the rest), a partial
    decode, the reconstruction from it, its error and its gradient, (rows, d_in)
    each (saesuite.sae.step, the dense loss about the same)."""
    groups = prefixes + 1 if prefixes else 0
    # weights, gradients and two Adam moments: 4 copies of the parameters
    if sharded:  # a block of the latents; W_skip and b_dec whole on every process
        latents = -(-width // nproc)
        rows, params = batch_size, dictionary_bytes(d_in, latents)
        params += (d_in + (d_in * d_in if skip else 0)) * F32
    else:
        latents, rows = width, batch_size // nproc
        params = dictionary_bytes(d_in, width, skip=skip)
    work = WORK_TENSORS * rows * latents * F32
    matryoshka = 4 * groups * rows * d_in * F32
    return 4 * params + work + matryoshka


def evaluate_work_bytes(
    *,
    vocab: int,
    ctx: int,
    loss_batch_size: int,
    batch_size: int,
    model_dtype: str,
    site_widths: Sequence[int],
    max_width: int,
) -> int:
    """Bytes an evaluate pass holds beside the model and the dictionaries
    (saesuite.eval.passes.evaluate): per loss batch of (B, T, V) logits, the clean
    distribution p in float32, a spliced pass's logits in the model's dtype with one
    temporary of the head (Gemma 2's soft-capping), their float32 copy when the model
    is not float32, and the KL's two float64 blocks (KL_BLOCK elements each); per
    reconstruction batch, every captured site (a transcoder's input and output both:
    `site_widths`) and its reconstruction; and the encoding's work tensors (three
    (rows, T, width) float32 tensors, ENCODE_BYTES at most)."""
    logits = loss_batch_size * ctx * vocab
    model = BYTES[model_dtype]
    head = logits * (F32 + 2 * model + (F32 if model != F32 else 0))
    kl = 2 * min(KL_BLOCK, logits) * BYTES["float64"]
    acts = 2 * batch_size * ctx * sum(site_widths) * F32
    encode = min(ENCODE_BYTES, 3 * F32 * batch_size * ctx * max_width)
    return head + kl + acts + encode


def fit_groups(
    sizes: list[float], budget: float | None, alone: frozenset[int] = frozenset()
) -> list[list[int]]:
    """Indices of items of `sizes` bytes in consecutive groups within `budget` (None:
    one group); an item larger than the budget, or in `alone`, is a group of its own."""
    if budget is None:
        return [list(range(len(sizes)))] if sizes else []
    groups: list[list[int]] = []
    used = math.inf
    for i, n in enumerate(sizes):
        if i in alone:
            groups.append([i])
            used = math.inf
            continue
        if used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def shards_needed(
    batch_size: int, d_in: int, width: int, budget: float, prefixes: int = 0
) -> int | None:
    """The fewest processes over which one SAE fits `budget` bytes per GPU (1: it
    fits whole; None: not even over 1024)."""
    if sae_gpu_bytes(batch_size, d_in, width, 1, prefixes=prefixes) <= budget:
        return 1
    for n in range(2, 1025):
        if (
            sae_gpu_bytes(batch_size, d_in, width, n, sharded=True, prefixes=prefixes)
            <= budget
        ):
            return n
    return None


def train_flops(specs: list[Dictionary], d_in: int) -> float:
    """A dense training step is ≈ 10·d·width FLOPs per token (forward, backward)."""
    return float(sum(10 * d_in * s.width * s.tokens for s in specs))


def forward_flops(shape: ModelShape, tokens: int, layers: int | None = None) -> float:
    """2·params FLOPs per token through the model, or through its first `layers`."""
    share = 1.0 if layers is None else layers / shape.n_layers
    return 2 * shape.n_params * share * tokens


# Sampling one token at a time runs far below the matmul rate: rollout jobs ask for
# this many times the time of their FLOPs.


def clt_bytes(batch_size: int, n_layers: int, d_in: int, d_out: int, width: int) -> int:
    """Bytes a CLT's training takes on its device (saesuite.sae.clt_train): fp32
    weights, gradients and two Adam moments of every tensor (`clt_params`), the
    step's (rows, L, width) work tensors (WORK_TENSORS, as an SAE's), and the
    batch's inputs, targets and prediction, (rows, L, d) each."""
    L = n_layers
    params = 4 * clt_params(L, d_in, d_out, width) * F32
    work = WORK_TENSORS * batch_size * L * width * F32
    batch = batch_size * L * (d_in + 2 * d_out) * F32
    return params + work + batch


def clt_flops(d: Dictionary, d_in: int, d_out: int, l0: float = 100.0) -> float:
    """A CLT's training FLOPs: per token 6·L·d_in·width for the encoders (forward
    and backward), 6·L0·d_out per decoder block i→j an active latent writes
    (L(L+1)/2 of them per L0), and Adam's ~10 FLOPs per parameter per step are left
    out (a share of the matmuls at batch ≥ 1024)."""
    L = len(d.layers)
    l0 = d.target_l0 or l0
    per_token = 6 * L * d_in * d.width + 6 * l0 * d_out * L * (L + 1) / 2
    return float(per_token * d.tokens)
