"""Gemma Scope 2's IT SAEs (rule `finetune`): a PT model's trained dictionaries of one
layer, fine-tuned on another model's activations (a check's target: the IT model, or
the PT model itself in the format-shift variant) for a share of their budget.

The data is the target's chat-formatted training text: the corpus's training
documents (after the held-out ones, as the tokens rule splits them), each wrapped in
the target's chat template as a user turn, the user prefix and special tokens masked,
which is how Gemma Scope 1 trained its IT SAEs. Activations are extracted in the job,
every site of the layer in one pass over only as many sequences as the largest budget
needs, held in memory (tens of MB per site at the embedded default's scale: this is
not the paper-scale path, whose budgets need an activation cache) and normalised by
the base model's scalars, so the
training states carry on in the units they were trained in. Training is the train
rule's (`saesuite.sae.train.train_site`: groups, checkpoints, resumption), from each
PT dictionary's state, with λ at full strength from the first step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from saesuite.data.corpus import read_corpus
from saesuite.data.extract import extract_batches
from saesuite.data.models import chat_template, load_model, load_tokenizer
from saesuite.data.tokens import chat_wrap, tokenize_splits
from saesuite.sae.train import train_site
from saesuite.spec.io import read_json
from saesuite.spec.jobs import FinetuneJob
from saesuite.spec.sites import Site

log = logging.getLogger(__name__)
EXTRACT_BATCH = 8  # sequences per forward pass


class MemoryReader:
    """What `train_site` reads from an activation cache, from tensors in memory:
    batch `step` of a seeded permutation of the rows, a new one each epoch."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        batch_size: int,
        seed: int,
        scale: float,
        target_scale: float,
    ):
        if len(x) < batch_size:
            raise ValueError(
                f"{len(x)} fine-tuning tokens, fewer than one batch ({batch_size})"
            )
        self.x, self.y = x, y
        self.batch_size, self.seed = batch_size, seed
        self.scale, self.target_scale = scale, target_scale
        self.n_valid = len(x)
        self.d_in = x.shape[1]
        self.d_out = (x if y is None else y).shape[1]
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def pair(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        per_epoch = self.n_valid // self.batch_size
        epoch, i = divmod(step, per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_valid, generator=g)
        rows = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.x[rows] / self.scale
        y = None if self.y is None else self.y[rows] / self.target_scale
        return x, y


def available_bytes() -> int:
    """Memory the job may still take (the kernel's estimate of what is available)."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def chat_sequences(
    job: FinetuneJob, tokenizer: Any, model_type: str, tokens_needed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the fewest chat-formatted training sequences holding
    `tokens_needed` unmasked tokens (all of the split when it holds fewer: the
    training then repeats them)."""
    ctx = job.data["context_size"]
    template = chat_template(tokenizer, job.target_cfg, model_type)
    splits = tokenize_splits(
        read_corpus(job.corpus),
        tokenizer,
        ctx=ctx,
        n_train=job.data["train_tokens"] // ctx,
        n_eval=job.data["eval_tokens"] // ctx,
        chat=chat_wrap(template, tokenizer),
    )
    ids, mask = splits["train"]
    kept = mask.sum(1).cumsum(0)
    n = int(torch.searchsorted(kept, tokens_needed)) + 1
    return ids[:n], mask[:n]


def finetune_layer(
    job: FinetuneJob, *, model_info: str | Path, cache_root: str | Path
) -> list[dict[str, Any]]:
    """Rule `finetune`: fine-tune the base's dictionaries of one layer on the
    target's chat-formatted activations (every site extracted in one pass); write
    them as the train rule writes its own. Returns their sae.json records."""
    if len(job.init_dirs) != len(job.trains) or any(
        len(i) != len(t.dictionaries) for i, t in zip(job.init_dirs, job.trains)
    ):
        raise ValueError("a finetune job needs one trained folder per dictionary")
    need = max(d.tokens for t in job.trains for d in t.dictionaries)
    info = read_json(model_info)
    tokenizer = load_tokenizer(job.target_cfg, cache_root)
    ids, mask = chat_sequences(job, tokenizer, info["model_type"], need)
    sites = sorted({x for t in job.trains for x in (t.input_site, t.output_site)})
    widths = {s: int(info["site_widths"][Site.parse(s).kind]) for s in sites}
    # every position's float32 activations, then the kept ones: refused up front
    held = 2 * 4 * ids.numel() * sum(widths.values())
    if held > available_bytes():
        raise MemoryError(
            f"fine-tuning {job.trains[0].model} at layer "
            f"{Site.parse(sites[0]).layer} holds its activations in memory: "
            f"{held / 2**30:.1f} GiB for {need:,} tokens, more than the "
            f"{available_bytes() / 2**30:.1f} GiB available; lower "
            "transfer.finetune_share"
        )
    model = load_model(job.target_cfg, cache_root)
    acts = extract_batches(
        model,
        ids,
        sites,
        widths,
        "float32",
        EXTRACT_BATCH,
        desc=f"{job.target} chat-formatted",
    )
    del model
    keep = mask.reshape(-1)
    acts = {s: a[keep] for s, a in acts.items()}
    out = []
    for t, dirs in zip(job.trains, job.init_dirs, strict=True):
        norm = read_json(t.normalization)["scale"]
        paired = t.output_site != t.input_site
        reader = MemoryReader(
            acts[t.input_site],
            acts[t.output_site] if paired else None,
            batch_size=t.train.batch_size,
            seed=t.seed,
            scale=norm[t.input_site],
            target_scale=norm[t.output_site],
        )
        tokens = max(d.tokens for d in t.dictionaries)
        log.info(
            "%s: %d chat-formatted tokens of %s (%d sequences) for %d fine-tuning "
            "tokens (%.2f epochs)",
            t.name,
            reader.n_valid,
            job.target,
            len(ids),
            tokens,
            tokens / reader.n_valid,
        )
        init = {d.path: s for d, s in zip(t.dictionaries, dirs, strict=True)}
        record = {
            d.path: {
                "finetuned_from": {"model": job.base, "sae_dir": init[d.path]},
                "finetune_data": f"chat-formatted training text through {job.target}",
                "finetune_unique_tokens": reader.n_valid,
            }
            for d in t.dictionaries
        }
        out += train_site(t, reader=reader, init=init, info=record)
    return out
