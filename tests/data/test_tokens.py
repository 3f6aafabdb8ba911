"""Tokenisation: BOS-first packed sequences, masks, disjoint splits, chat mode."""

from __future__ import annotations

import itertools

import pytest
import torch

from saesuite.data.corpus import build_corpus, embedded_documents, read_corpus
from saesuite.data.models import GEMMA_CHAT_TEMPLATE
from saesuite.data.tokens import chat_wrap, document_tokens, pack, tokenize_splits

DOCS = [
    f"Document number {i} talks about topic {i % 7} at some length." for i in range(60)
]


def test_sequences_start_with_bos_and_mask_specials(tokenizer):
    splits = tokenize_splits(DOCS, tokenizer, ctx=16, n_train=20, n_eval=5)
    for ids, mask in splits.values():
        assert ids.dtype == torch.int32 and mask.dtype == torch.bool
        assert (ids[:, 0] == tokenizer.bos_token_id).all()
        special = (ids == tokenizer.bos_token_id) | (ids == tokenizer.eos_token_id)
        special |= ids == tokenizer.pad_token_id
        assert torch.equal(mask, ~special)
        assert (ids == tokenizer.eos_token_id).any()  # documents are EOS-separated


def test_splits_share_no_document_and_keep_text_order(tokenizer):
    splits = tokenize_splits(DOCS, tokenizer, ctx=16, n_train=20, n_eval=5)
    text = {n: tokenizer.decode(ids[m].tolist()) for n, (ids, m) in splits.items()}
    numbers = {
        n: {int(w) for w in t.replace(".", " ").split() if w.isdigit()}
        for n, t in text.items()
    }
    eval_docs = {i for i in range(60) if f"Document number {i} " in text["eval"]}
    train_docs = {i for i in range(60) if f"Document number {i} " in text["train"]}
    assert eval_docs and train_docs and not eval_docs & train_docs
    assert max(eval_docs) < min(train_docs)
    assert numbers["eval"]  # sanity: the decode worked


def test_deterministic(tokenizer):
    a = tokenize_splits(DOCS, tokenizer, ctx=16, n_train=20, n_eval=5)
    b = tokenize_splits(DOCS, tokenizer, ctx=16, n_train=20, n_eval=5)
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])


def test_corpus_too_small_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="corpus ran out"):
        tokenize_splits(DOCS[:3], tokenizer, ctx=16, n_train=50, n_eval=5)


def test_chat_mode_masks_user_prefix(tokenizer):
    prefix, suffix = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    assert prefix == "<start_of_turn>user\n"
    assert suffix == "<end_of_turn>\n<start_of_turn>model\n"
    ((ids, keep),) = document_tokens(["hello there"], tokenizer, (prefix, suffix))
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    assert keep[:n_prefix] == [False] * n_prefix
    assert all(keep[n_prefix:-1]) and keep[-1] is False  # the EOS
    assert tokenizer.decode(ids[n_prefix:-1]) == "hello there" + suffix


def test_pack_rows_continue_the_stream():
    stream = iter([([10, 11, 12], [True] * 3), ([13, 14, 1], [True, True, False])])
    ids, mask, used = pack(stream, 2, 3, bos=2)
    assert ids.tolist() == [[2, 10, 11], [2, 12, 13]]
    assert mask.tolist() == [[False, True, True], [False, True, True]]
    assert used == 2


def test_embedded_corpus_is_deterministic_prose(tmp_path):
    docs = list(itertools.islice(embedded_documents(), 100))
    assert len(docs) == 100 and sum(map(len, docs)) > 100_000
    info = build_corpus(
        [{"type": "embedded"}],
        tmp_path / "a.jsonl",
        tmp_path / "a.json",
        max_chars=200_000,
        shuffle=True,
        seed=3,
    )
    build_corpus(
        [{"type": "embedded"}],
        tmp_path / "b.jsonl",
        tmp_path / "b.json",
        max_chars=200_000,
        shuffle=True,
        seed=3,
    )
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert info["characters"] >= 200_000
    words = " ".join(read_corpus(tmp_path / "a.jsonl")).split()
    alpha = sum(w.isalpha() for w in words) / len(words)
    assert alpha > 0.6  # mostly words, not code


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text('{"body": "json one"}\n{"body": "json two"}\n')
    import pandas as pd

    pd.DataFrame({"body": ["parquet doc"]}).to_parquet(tmp_path / "c.parquet")
    build_corpus(
        [
            {"type": "files", "paths": [str(tmp_path / "a.txt")]},
            {
                "type": "files",
                "paths": [str(tmp_path / "*.jsonl")],
                "text_field": "body",
            },
            {
                "type": "files",
                "paths": [str(tmp_path / "c.parquet")],
                "text_field": "body",
            },
        ],
        tmp_path / "out.jsonl",
        tmp_path / "out.json",
        max_chars=10_000,
        shuffle=False,
        seed=0,
    )
    assert list(read_corpus(tmp_path / "out.jsonl")) == [
        "plain text document",
        "json one",
        "json two",
        "parquet doc",
    ]
    with pytest.raises(KeyError, match="b.jsonl:1"):
        build_corpus(
            [{"type": "files", "paths": [str(tmp_path / "b.jsonl")]}],
            tmp_path / "x.jsonl",
            tmp_path / "x.json",
            max_chars=100,
            shuffle=False,
            seed=0,
        )


def test_hub_source_streams_through_datasets(tmp_path):
    # A local folder stands in for a Hub dataset id: `datasets.load_dataset` takes the
    # same streaming path for both, and nothing can be downloaded here.
    data = tmp_path / "ds"
    data.mkdir()
    (data / "train.jsonl").write_text('{"content": "first"}\n{"content": "second"}\n')
    build_corpus(
        [{"type": "hub", "id": str(data), "text_field": "content", "max_documents": 1}],
        tmp_path / "h.jsonl",
        tmp_path / "h.json",
        max_chars=1000,
        shuffle=False,
        seed=0,
    )
    assert list(read_corpus(tmp_path / "h.jsonl")) == ["first"]


@pytest.mark.parametrize(
    "name, content, needle",
    [
        (
            "model.txt",
            b"\x00\x9f\x92\x96 binary",
            "model.txt: not UTF-8 text (byte 1 is 0x9f)",
        ),
        ("empty.txt", b"", "empty.txt: holds no text (an empty or blank file)"),
        ("blank.txt", b"  \n\n", "blank.txt: holds no text"),
        ("rows.jsonl", b'{"text": "a"}\nnot json\n', "rows.jsonl:2: not JSON"),
    ],
)
def test_bad_corpus_files_are_named_at_the_corpus_job(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "good.txt").write_text("a fine document")
    sources = [
        {"type": "files", "paths": [str(tmp_path / "good.txt")]},
        {"type": "files", "paths": [str(tmp_path / name)]},
    ]
    with pytest.raises(ValueError) as err:
        build_corpus(sources, tmp_path / "c.jsonl", tmp_path / "c.json",
                     max_chars=10_000, shuffle=False, seed=0)  # fmt: skip
    assert f"config key 'data.sources.1': {tmp_path / name}" in str(err.value)
    assert needle in str(err.value)
    assert not (tmp_path / "c.jsonl").exists()  # nothing half-written
