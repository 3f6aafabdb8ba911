"""Transfer: which evaluations each config plans (PT→IT pairs, the format-shift
check), prompt files, and chat rollouts on a tiny model (shape, masks, seeding)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_tiny, make_config

from saesuite.data.models import GEMMA_CHAT_TEMPLATE
from saesuite.data.tokens import chat_wrap
from saesuite.eval.transfer import generate_rollouts
from saesuite.spec.checks import (
    FORMAT_SHIFT,
    PT_TO_IT,
    Evaluation,
    evaluations,
    transfer_checks,
)
from saesuite.spec.config import load_config
from saesuite.spec.prompts import load_prompts
from saesuite.spec.suite import expand_suite


def pair_config(it_trained: bool, format_shift: bool = True) -> dict:
    cfg = make_config("test/pt", transfer={"format_shift": format_shift})
    cfg["models"]["tiny-it"] = {"source": "test/it", "role": "it", "base": "tiny"}
    cfg["models"]["other"] = {"source": "test/other"}
    cfg["suite"][0]["models"] = ["tiny", "other"]
    cfg["suite"][0]["layers"] = [1, 2]
    if it_trained:  # the IT model gets SAEs at layer 1 only
        cfg["suite"].append({**cfg["suite"][0], "models": ["tiny-it"], "layers": [1]})
    return load_config(cfg)


def test_a_pt_it_pair_without_it_saes():
    cfg = pair_config(it_trained=False)
    checks = {c.name: c for c in transfer_checks(cfg, expand_suite(cfg))}
    assert set(checks) == {"tiny-to-tiny-it", "other-format-shift"}
    pair = checks["tiny-to-tiny-it"]
    assert (pair.kind, pair.base, pair.target) == (PT_TO_IT, "tiny", "tiny-it")
    assert set(pair.evaluations) == {
        Evaluation("tiny", "tiny", "text"),
        Evaluation("tiny", "tiny-it", "text"),
        Evaluation("tiny", "tiny-it", "chat"),
    }
    shift = checks["other-format-shift"]
    assert shift.kind == FORMAT_SHIFT and set(shift.evaluations) == {
        Evaluation("other", "other", "text"),
        Evaluation("other", "other", "chat"),
    }


def test_it_saes_sit_beside_pt_saes_on_the_same_data():
    cfg = pair_config(it_trained=True, format_shift=False)
    suite = expand_suite(cfg)
    checks = transfer_checks(cfg, suite)
    assert [c.name for c in checks] == ["tiny-to-tiny-it"]
    # Compared where the IT model has SAEs (layer 1), not at every PT layer.
    assert set(checks[0].evaluations) == {
        Evaluation("tiny", "tiny", "text", (1,)),
        Evaluation("tiny", "tiny-it", "text", (1,)),
        Evaluation("tiny", "tiny-it", "chat", (1,)),
        Evaluation("tiny-it", "tiny-it", "text", (1,)),
        Evaluation("tiny-it", "tiny-it", "chat", (1,)),
    }
    # Every trained model is also evaluated on its own held-out split.
    planned = set(evaluations(cfg, suite))
    for m in ("tiny", "tiny-it", "other"):
        assert Evaluation(m, m, "text") in planned
    assert Evaluation("other", "other", "chat") not in planned  # format_shift off


def test_fine_tuned_saes_join_every_check_at_its_layers_and_are_labelled():
    """transfer.finetune_share > 0: each check's base SAEs, fine-tuned on its target,
    are evaluated on the target's text and chat data (at the layers the check
    compares), under a key no model may take, and labelled by what they are."""
    from saesuite.eval.transfer import saes_label
    from saesuite.spec.checks import finetuned_specs
    from saesuite.spec.config import ConfigError
    from saesuite.spec.workflow import Workflow

    cfg = pair_config(it_trained=True)
    cfg["transfer"]["finetune_share"] = 0.1
    suite = expand_suite(cfg)
    checks = {c.name: c for c in transfer_checks(cfg, suite)}
    pair, shift = checks["tiny-to-tiny-it"], checks["other-format-shift"]
    assert pair.finetuned == "tiny-ft-tiny-it"
    assert Evaluation("tiny-ft-tiny-it", "tiny-it", "chat", (1,)) in pair.evaluations
    assert Evaluation("other-ft-other", "other", "text", (1, 2)) in shift.evaluations
    tuned = finetuned_specs(cfg, suite, list(checks.values()))
    assert {(s.model, s.layer) for s in tuned} == {
        ("tiny-ft-tiny-it", 1), ("other-ft-other", 1), ("other-ft-other", 2)
    }  # fmt: skip
    assert {s.tokens for s in tuned} == {2000}  # 0.1 of 20,000
    assert saes_label(pair, "tiny") == "PT-trained"
    assert saes_label(pair, "tiny-ft-tiny-it") == "PT, fine-tuned on IT"
    assert saes_label(pair, "tiny-it") == "IT-trained"
    assert "format shift" in saes_label(shift, "other-ft-other")
    cfg["models"]["tiny-ft-tiny-it"] = {**cfg["models"]["other"]}
    with pytest.raises(ConfigError, match="models.tiny-ft-tiny-it"):
        Workflow(cfg)


def test_prompt_files(tmp_path):
    assert len(load_prompts(None)) >= 32
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(txt) == ["first prompt", "second prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2: no string field 'prompt'"):
        load_prompts(jl)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="transfer.prompts"):
        load_prompts(tmp_path / "missing.txt")


def test_rollouts_are_chat_formatted_masked_and_seeded(tiny_models, tokenizer):
    model = load_tiny(tiny_models["gemma3"])
    prompts = ["Tell me about the sea.", "Why is the sky blue?", "Name three fruits."]

    def roll(seed: int):
        return generate_rollouts(
            model, tokenizer, GEMMA_CHAT_TEMPLATE, prompts,
            n_seqs=5, ctx=64, temperature=1.0, batch_size=2, seed=seed,
        )  # fmt: skip

    ids, mask, stats = roll(0)
    assert ids.shape == mask.shape == (5, 64) and ids.dtype == torch.int32
    prefix, suffix = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    for r in range(5):
        head = (
            [tokenizer.bos_token_id]
            + pre
            + tokenizer(prompts[r % 3], add_special_tokens=False)["input_ids"]
            + tokenizer(suffix, add_special_tokens=False)["input_ids"]
        )
        assert ids[r, : len(head)].tolist() == head  # prompt 3 comes round again
        assert not mask[r, : 1 + len(pre)].any()  # BOS and the user prefix
        assert mask[r, 1 + len(pre) : len(head)].all()  # the prompt itself
        pads = ids[r] == tokenizer.pad_token_id
        assert not mask[r][pads].any()
    assert stats["mean_reply_tokens"] > 0
    assert stats["n_prompts"] == len(prompts) and "prompts" not in stats
    long = generate_rollouts(
        model, tokenizer, GEMMA_CHAT_TEMPLATE, ["word " * 200],
        n_seqs=1, ctx=64, temperature=1.0, batch_size=1, seed=0,
    )  # fmt: skip
    assert long[2]["mean_reply_tokens"] >= 64 - 32  # a long prompt is cut to half
    again, mask2, _ = roll(0)
    assert torch.equal(ids, again) and torch.equal(mask, mask2)
    assert not torch.equal(ids, roll(1)[0])
