"""Tokenisation (rule `tokens`): documents → packed sequences of `context_size`
tokens, each starting with BOS, with a mask that is False at BOS, EOS and padding
(and, in chat mode, at the user-prefix tokens), split into a held-out evaluation set
and a training set that share no document.

Packing: documents are joined with EOS into one stream; sequence i is BOS followed by
the next context_size − 1 stream tokens. The evaluation split takes documents from the
start of the corpus until it is full; the rest of its last document is dropped, so no
document straddles the two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from saesuite.data.corpus import read_corpus
from saesuite.data.models import chat_template, load_tokenizer
from saesuite.spec.io import atomic_path, read_json, write_json

MARK = "\x00SAESUITE_TEXT\x00"


def chat_wrap(template: str, tokenizer: Any) -> tuple[str, str]:
    """(user prefix, suffix) of the chat template around one user message, without
    BOS: prefix + text + suffix is the user turn followed by the model-turn opening."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": MARK}],
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
    )
    if MARK not in rendered:
        raise ValueError("the chat template drops the user message")
    prefix, suffix = rendered.split(MARK)
    bos = tokenizer.bos_token or ""
    return prefix.removeprefix(bos), suffix


def special_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {i for i in ids if i is not None}


def document_tokens(
    docs: Iterable[str],
    tokenizer: Any,
    chat: tuple[str, str] | None = None,
    batch: int = 64,
) -> Iterator[tuple[list[int], list[bool]]]:
    """(ids, keep) per document, EOS appended; keep is False on special and prefix
    tokens."""
    specials = special_ids(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    prefix_ids: list[int] = []
    suffix_ids: list[int] = []
    if chat:
        prefix_ids = tokenizer(chat[0], add_special_tokens=False)["input_ids"]
        suffix_ids = tokenizer(chat[1], add_special_tokens=False)["input_ids"]
    buf: list[str] = []

    def flush() -> Iterator[tuple[list[int], list[bool]]]:
        for ids in tokenizer(buf, add_special_tokens=False)["input_ids"]:
            body = ids + suffix_ids + [eos]
            keep = [False] * len(prefix_ids) + [t not in specials for t in body]
            yield prefix_ids + body, keep

    for doc in docs:
        buf.append(doc)
        if len(buf) == batch:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


def pack(
    stream: Iterator[tuple[list[int], list[bool]]],
    n_seqs: int,
    ctx: int,
    bos: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fill n_seqs sequences of ctx tokens from the document stream.
    Returns (ids int32 (n, ctx), mask bool (n, ctx), documents consumed)."""
    ids = torch.empty(n_seqs, ctx, dtype=torch.int32)
    mask = torch.empty(n_seqs, ctx, dtype=torch.bool)
    ids[:, 0] = bos
    mask[:, 0] = False
    row, col, used = 0, 1, 0
    while row < n_seqs:
        try:
            doc_ids, keep = next(stream)
        except StopIteration:
            raise ValueError(
                f"the corpus ran out after {row} of {n_seqs} sequences of {ctx} "
                "tokens: add data sources or lower data.train_tokens/eval_tokens"
            ) from None
        used += 1
        pos = 0
        while pos < len(doc_ids) and row < n_seqs:
            take = min(ctx - col, len(doc_ids) - pos)
            ids[row, col : col + take] = torch.tensor(doc_ids[pos : pos + take])
            mask[row, col : col + take] = torch.tensor(keep[pos : pos + take])
            col += take
            pos += take
            if col == ctx:
                row, col = row + 1, 1
    return ids, mask, used


def tokenize_splits(
    docs: Iterable[str],
    tokenizer: Any,
    *,
    ctx: int,
    n_train: int,
    n_eval: int,
    chat: tuple[str, str] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token")
    stream = document_tokens(docs, tokenizer, chat)
    eval_ids, eval_mask, _ = pack(stream, n_eval, ctx, tokenizer.bos_token_id)
    # pack() stopped inside the last evaluation document; the stream resumes at the
    # next document, so the splits share none.
    train_ids, train_mask, _ = pack(stream, n_train, ctx, tokenizer.bos_token_id)
    return {"train": (train_ids, train_mask), "eval": (eval_ids, eval_mask)}


def save_tokens(path: str | Path, ids: torch.Tensor, mask: torch.Tensor) -> None:
    with atomic_path(path) as tmp:
        save_file({"input_ids": ids, "mask": mask}, str(tmp))


def load_tokens(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_file(str(path))
    return data["input_ids"], data["mask"]


def write_token_info(path: str | Path, splits: dict[str, Any], info: dict) -> None:
    stats = {
        name: {
            "sequences": int(ids.shape[0]),
            "tokens": int(ids.numel()),
            "trainable_tokens": int(mask.sum()),
        }
        for name, (ids, mask) in splits.items()
    }
    write_json(path, {**info, "splits": stats})


def make_tokens(
    *,
    corpus: str | Path,
    model_info: str | Path,
    model_cfg: dict[str, Any],
    cache_root: str | Path,
    data: dict[str, Any],
    out: dict[str, str],
) -> dict[str, Any]:
    """Rule `tokens`: the model's train and eval splits from the corpus."""
    info = read_json(model_info)
    tokenizer = load_tokenizer(model_cfg, cache_root)
    chat = None
    if model_cfg.get("chat"):
        chat = chat_wrap(
            chat_template(tokenizer, model_cfg, info["model_type"]), tokenizer
        )
    ctx = data["context_size"]
    splits = tokenize_splits(
        read_corpus(corpus),
        tokenizer,
        ctx=ctx,
        n_train=data["train_tokens"] // ctx,
        n_eval=data["eval_tokens"] // ctx,
        chat=chat,
    )
    for name, (ids, mask) in splits.items():
        save_tokens(out[name], ids, mask)
    meta = {"model": info["model"], "context_size": ctx, "chat": chat is not None}
    write_token_info(out["info"], splits, meta)
    return meta
