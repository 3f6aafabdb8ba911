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
from saesuite.spec.config import expand_suite, load_config
from saesuite.spec.prompts import load_prompts


def pair_config(it_trained: bool, format_shift: bool = True) -> dict:
    cfg = make_config("pt-dir", transfer={"format_shift": format_shift})
    cfg["models"]["tiny-it"] = {"source": "it-dir", "role": "it", "base": "tiny"}
    cfg["models"]["other"] = {"source": "other-dir"}
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
    long = generate_rollouts(
        model, tokenizer, GEMMA_CHAT_TEMPLATE, ["word " * 200],
        n_seqs=1, ctx=64, temperature=1.0, batch_size=1, seed=0,
    )  # fmt: skip
    assert long[2]["mean_reply_tokens"] >= 64 - 32  # a long prompt is cut to half
    again, mask2, _ = roll(0)
    assert torch.equal(ids, again) and torch.equal(mask, mask2)
    assert not torch.equal(ids, roll(1)[0])


@pytest.mark.slow
def test_pt_to_it_workflow(tiny_models, tiny_it_model, tokenizer, tmp_path):
    """A real Snakemake run with a tiny PT model and a tiny IT model fine-tuned from
    it (with SAEs of its own, trained on chat-wrapped text): PT-trained and
    IT-trained SAEs land side by side on the IT model's data, and the losses are the
    IT model's."""
    import pandas as pd
    import yaml
    from helpers import snakemake
    from safetensors.torch import load_file

    from saesuite.spec.io import read_json

    cfg = make_config(tiny_models["gemma3"], output_root="results")
    cfg["models"]["tiny-it"] = {
        "source": str(tiny_it_model), "role": "it", "base": "tiny", "chat": True,
    }  # fmt: skip
    cfg["suite"][0].update(layers=[1], sites=["res", "att"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "results"
    table = pd.read_csv(out / "transfer" / "tiny-to-tiny-it" / "table.csv")
    assert (table["check"] == "pt->it").all()
    groups = table.groupby(["trained_on", "evaluated_on", "data"]).size().to_dict()
    assert groups == {
        ("tiny", "tiny", "text"): 4,
        ("tiny", "tiny-it", "text"): 4,
        ("tiny", "tiny-it", "chat"): 4,
        ("tiny-it", "tiny-it", "text"): 4,
        ("tiny-it", "tiny-it", "chat"): 4,
    }
    assert set(table[table.trained_on == "tiny"]["saes"]) == {"PT-trained"}
    assert set(table[table.trained_on == "tiny-it"]["saes"]) == {"IT-trained"}
    assert (
        read_json(out / "tiny-it" / "rollouts" / "rollouts.json")["model"] == "tiny-it"
    )
    assert not (out / "tiny" / "rollouts").exists()  # paired: no format-shift check
    assert not (out / "transfer" / "tiny-format-shift").exists()

    # The IT model's held-out split is chat-wrapped, user prefix masked.
    prefix, _ = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    it_tokens = load_file(out / "tiny-it" / "tokens" / "eval.safetensors")
    assert it_tokens["input_ids"][0, 1 : 1 + len(pre)].tolist() == pre

    # PT SAEs on IT text: the clean loss is the IT model's on that split.
    ids = it_tokens["input_ids"][:8].long()  # loss_tokens 256 / context 32
    m = it_tokens["mask"][:8]
    pred = m[:, :-1] & m[:, 1:]

    def loss_of(model_dir):
        with torch.no_grad():
            logits = load_tiny(model_dir)(input_ids=ids).logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
        )
        return float(ce[pred].mean())

    row = table[(table.trained_on == "tiny") & (table.evaluated_on == "tiny-it")]
    clean = row[row.data == "text"]["clean_loss"]
    assert clean.to_numpy() == pytest.approx(loss_of(tiny_it_model), rel=1e-5)
    assert abs(loss_of(tiny_models["gemma3"]) - loss_of(tiny_it_model)) > 0.05
    assert (out / "transfer" / "tiny-to-tiny-it" / "transfer.png").stat().st_size > 0
