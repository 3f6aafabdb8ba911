"""Issue 19's IT fine-tuning (saesuite.sae.finetune), on a tiny random Gemma 3: the
chat-formatted data (user prefix masked, as few sequences as the budget needs), the
in-memory reader's epochs, a fine-tuned SAE starting from its PT state, and the job
end to end (its activations against an independent forward pass with hooks). The
workflow test runs it through Snakemake (test_workflow: test_pt_to_it_workflow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import load_tiny
from safetensors.torch import load_file, save_file

from saesuite.data.models import GEMMA_CHAT_TEMPLATE, describe_model
from saesuite.data.tokens import chat_wrap
from saesuite.sae.finetune import MemoryReader, chat_sequences, finetune_layer
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.sae.member import Member
from saesuite.sae.outputs import start_from
from saesuite.spec import paths
from saesuite.spec.checks import finetuned_specs, transfer_checks
from saesuite.spec.config import load_config
from saesuite.spec.io import read_json, write_json
from saesuite.spec.jobs import FinetuneJob
from saesuite.spec.make_jobs import finetune_job
from saesuite.spec.suite import expand_suite


def test_the_reader_permutes_every_row_once_per_epoch_and_scales():
    x = torch.arange(12.0)[:, None].repeat(1, 3)
    r = MemoryReader(x, None, batch_size=4, seed=0, scale=2.0, target_scale=1.0)
    for epoch in range(2):
        rows = torch.cat([r.pair(3 * epoch + i)[0] for i in range(3)])
        assert sorted((rows[:, 0] * 2).tolist()) == list(range(12))
    first = torch.cat([r.pair(i)[0] for i in range(3)])
    second = torch.cat([r.pair(3 + i)[0] for i in range(3)])
    assert not torch.equal(first, second)  # a new order each epoch
    with pytest.raises(ValueError, match="fewer than one batch"):
        MemoryReader(x[:3], None, batch_size=4, seed=0, scale=1, target_scale=1)


@pytest.fixture
def ft_config(tiny_models, tmp_path):
    root = tmp_path / "results"
    raw = {
        "output_root": str(root),
        "models": {"tiny": {"source": str(tiny_models["gemma3"])}},
        "suite": [{"layers": [1], "sites": ["res"], "widths": [64],
                   "sparsity": {"target_l0": [8, 16]}, "tokens": 4096},
                  {"layers": [1], "sites": ["mlp"], "widths": [64],
                   "kind": "transcoder", "skip": "affine",
                   "sparsity": {"target_l0": [8]}, "tokens": 4096}],
        "data": {"context_size": 32, "train_tokens": 4096, "eval_tokens": 1024},
        "train": {"batch_size": 128, "lr": 1e-3},
        "transfer": {"finetune_share": 0.25, "tokens": 512},
    }  # fmt: skip
    return load_config(raw)


def corpus_file(path: Path, n: int = 400) -> Path:
    words = "the cat sat on a mat and then ran to see what it was".split()
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(words[(i + j) % len(words)] for j in range(20 + i % 17))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def located_job(config, tmp_path) -> FinetuneJob:
    """The finetune job of layer 1, with the files it reads written here: the
    corpus, the model info, unit normalisation scalars and PT states (seeded
    initialisations standing in for trained ones)."""
    suite = expand_suite(config)
    checks = transfer_checks(config, suite)
    tuned = finetuned_specs(config, suite, checks)
    key = checks[0].finetuned
    job = finetune_job(config, suite, tuned, key, "tiny", "tiny", 1)
    root = Path(config["output_root"])
    norm = root / "tiny" / "activations" / "normalization.json"  # as the rule's input
    norm.parent.mkdir(parents=True)
    write_json(norm, {"scale": {"layer_1.res": 1.0, "layer_1.mlp": 1.0,
                                "layer_1.mlp_in": 1.0}})  # fmt: skip
    for t, dirs in zip(job.trains, job.init_dirs, strict=True):
        for d, pt in zip(t.dictionaries, dirs, strict=True):
            sae = JumpReLUSAE(64, d.width, d_out=64, skip=d.kind == "skip_transcoder",
                              apply_b_dec_to_input=d.kind == "sae")  # fmt: skip
            sae.initialize(torch.Generator().manual_seed(d.width + len(d.path)))
            Path(pt).mkdir(parents=True, exist_ok=True)
            save_file(sae.state_dict(), str(paths.sae_file(pt, "state")))
    return job.located(str(corpus_file(tmp_path / "corpus.jsonl")), str(norm))


def test_the_plan_fine_tunes_every_pt_sae_for_its_share(ft_config):
    suite = expand_suite(ft_config)
    checks = transfer_checks(ft_config, suite)
    assert [c.finetuned for c in checks] == ["tiny-ft-tiny"]
    evals = {(e.trained_on, e.evaluated_on, e.data) for e in checks[0].evaluations}
    assert {("tiny-ft-tiny", "tiny", "text"), ("tiny-ft-tiny", "tiny", "chat")} < evals
    tuned = finetuned_specs(ft_config, suite, checks)
    assert [(s.model, s.path, s.tokens) for s in tuned] == [
        ("tiny-ft-tiny", s.path, 1024)
        for s in suite  # 0.25 × 4096
    ]
    off = load_config({**ft_config, "transfer": {"finetune_share": 0.0}})
    assert finetuned_specs(off, suite, transfer_checks(off, suite)) == []


def test_chat_sequences_mask_the_user_prefix_and_stop_at_the_budget(
    ft_config, tmp_path, tokenizer
):
    job = located_job(ft_config, tmp_path)
    ids, mask = chat_sequences(job, tokenizer, "gemma3_text", 1000)
    kept = mask.sum(1).cumsum(0)
    assert kept[-1] >= 1000 > kept[-2]  # the fewest sequences that hold the budget
    prefix, _ = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert ids[0, 1 : 1 + len(pre)].tolist() == pre
    assert not mask[0, : 1 + len(pre)].any() and mask[0, 1 + len(pre)]


def test_a_member_starts_from_the_pt_state_exactly(ft_config, tmp_path):
    job = located_job(ft_config, tmp_path)
    d = job.trains[0].dictionaries[0]
    m = Member(d, 64, job.trains[0].train, seed=0, device="cpu")
    start_from(m, job.init_dirs[0][0])
    want = load_file(str(paths.sae_file(job.init_dirs[0][0], "state")))
    for k, v in m.sae.state_dict().items():
        assert torch.equal(v, want[k]), k
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"W_enc": torch.zeros(2, 2)}, str(paths.sae_file(bad, "state")))
    with pytest.raises(ValueError, match="training state has"):
        start_from(m, str(bad))


def test_the_job_fine_tunes_every_site_on_the_targets_chat_activations(
    ft_config, tmp_path, tiny_models
):
    job = located_job(ft_config, tmp_path)
    assert [t.name for t in job.trains] == ["layer_1.mlp_in_to_mlp", "layer_1.res"]
    info = tmp_path / "model.json"
    write_json(info, describe_model("tiny", ft_config["models"]["tiny"], tmp_path))
    captured = []
    import saesuite.sae.finetune as ft

    real = ft.MemoryReader

    def spy(x, y, **kw):
        captured.append((x, y))
        return real(x, y, **kw)

    ft.MemoryReader = spy
    try:
        results = finetune_layer(job, model_info=info, cache_root=tmp_path)
    finally:
        ft.MemoryReader = real
    # the activations: an independent forward pass with hooks on the same tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["gemma3"])
    ids, mask = chat_sequences(job, tok, "gemma3_text", 1024)
    model = load_tiny(tiny_models["gemma3"])
    layer = model.model.layers[1]
    got = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o: got.__setitem__(
            "res", o[0] if isinstance(o, tuple) else o)),
        layer.pre_feedforward_layernorm.register_forward_hook(
            lambda m, a, o: got.__setitem__("mlp_in", o)),
        layer.post_feedforward_layernorm.register_forward_hook(
            lambda m, a, o: got.__setitem__("mlp", o)),
    ]  # fmt: skip
    with torch.no_grad():
        model(input_ids=ids.long())
    for h in hooks:
        h.remove()
    keep = mask.reshape(-1)
    want = {k: v.reshape(-1, 64)[keep] for k, v in got.items()}
    close = dict(rtol=1e-4, atol=1e-5)  # sdpa attention there, eager here
    (x_tc, y_tc), (x_res, y_res) = captured
    torch.testing.assert_close(x_res, want["res"], **close)
    assert y_res is None
    torch.testing.assert_close(x_tc, want["mlp_in"], **close)
    torch.testing.assert_close(y_tc, want["mlp"], **close)
    dicts = [(t, d) for t in job.trains for d in t.dictionaries]
    inits = [p for dirs in job.init_dirs for p in dirs]
    assert len(results) == len(dicts) == 3
    for (t, d), r, pt in zip(dicts, results, inits, strict=True):
        assert r["finetuned_from"] == {"model": "tiny", "sae_dir": pt}
        assert r["steps"] == 1024 // 128 and r["schedule"]["lambda_warmup_steps"] == 0
        assert read_json(paths.sae_file(t.out_dir(d), "info")) == r
        start = load_file(str(paths.sae_file(pt, "state")))
        end = load_file(str(paths.sae_file(t.out_dir(d), "state")))
        moved = float((end["W_enc"] - start["W_enc"]).abs().max())
        # Adam (β1 0) moves each weight a few lr per step at most, from where the PT
        # state left it; the PT states here differ from a fresh init by ~0.1
        assert 0 < moved <= 3 * 1e-3 * r["steps"]
        fresh = Member(d, 64, job.trains[0].train, seed=0, device="cpu")
        assert float((end["W_enc"] - fresh.sae.W_enc.detach()).abs().max()) > 10 * moved


def test_fine_tuning_runs_at_its_own_share_of_the_training_lr(ft_config):
    """transfer.finetune_lr_scale: every train job of a finetune job runs at that
    multiple of train.lr (1 by default); the PT train jobs keep train.lr."""
    from saesuite.spec.config import load_config

    def lrs(scale: float | None) -> set[float]:
        raw = {**ft_config, "transfer": {**ft_config["transfer"]}}
        if scale is not None:
            raw["transfer"]["finetune_lr_scale"] = scale
        config = load_config(raw)
        suite = expand_suite(config)
        tuned = finetuned_specs(config, suite, transfer_checks(config, suite))
        job = finetune_job(config, suite, tuned, tuned[0].model, "tiny", "tiny", 1)
        return {t.train.lr for t in job.trains}

    assert lrs(None) == {1e-3}
    assert lrs(0.1) == {1e-3 * 0.1}
    from saesuite.spec.config import ConfigError

    with pytest.raises(ConfigError, match="finetune_lr_scale"):
        lrs(0)


def test_the_job_round_trips_and_its_fingerprint_covers_the_recipe(ft_config, tmp_path):
    """The rule passes the job as JSON; a changed lr is a new fine-tuning, not a
    resumption of the old one's checkpoint."""
    a = located_job(ft_config, tmp_path)
    assert FinetuneJob.from_dict(a.to_dict()) == a
    t = a.trains[0]
    b = dataclasses.replace(t, train=t.train.replace(lr=2e-3))
    assert t.fingerprint() != b.fingerprint()
    root = ft_config["output_root"]
    assert t.checkpoint == f"{root}/tiny-ft-tiny/checkpoints/layer_1.mlp_in_to_mlp.pt"


def test_a_share_too_large_for_memory_is_refused_before_the_model_loads(
    ft_config, tmp_path, monkeypatch
):
    import saesuite.sae.finetune as ft

    job = located_job(ft_config, tmp_path)
    info = tmp_path / "model.json"
    write_json(info, describe_model("tiny", ft_config["models"]["tiny"], tmp_path))
    monkeypatch.setattr(ft, "available_bytes", lambda: 1 << 20)  # 1 MiB left
    monkeypatch.setattr(ft, "load_model", lambda *a: pytest.fail("model loaded"))
    with pytest.raises(MemoryError, match="transfer.finetune_share"):
        finetune_layer(job, model_info=info, cache_root=tmp_path)
    outs = [Path(t.out_dir(d)) for t in job.trains for d in t.dictionaries]
    assert not any(p.exists() for p in outs)
