"""Peak memory of one evaluate pass or a few training steps, in a process of its own
(tests/cluster/test_memory_measured.py): the growth of resident memory (VmHWM after
/proc/self/clear_refs reset it, less VmRSS then) over what the set-up holds."""

from __future__ import annotations

import json
import sys

import torch


def rss_kib(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measured(run) -> int:
    """Bytes `run()` grew the process's resident memory by, at its peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = rss_kib("VmRSS")
    run()
    return (rss_kib("VmHWM") - before) * 1024


def evaluate_pass(a: dict) -> int:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from saesuite.eval.passes import evaluate
    from saesuite.sae.jumprelu import JumpReLUSAE
    from saesuite.spec.sites import Site

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=a["vocab"], hidden_size=a["d"], intermediate_size=2 * a["d"],
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, sliding_window=8, query_pre_attn_scalar=16, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    sae = JumpReLUSAE(a["d"], a["width"], apply_b_dec_to_input=False).initialize(g)
    tc = JumpReLUSAE(a["d"], a["width"], skip=True, apply_b_dec_to_input=False)
    tc = tc.initialize(g)
    saes = {"sae": (Site(1, "res"), sae), "tc": (Site(1, "mlp_in"), Site(1, "mlp"), tc)}
    ids = torch.randint(3, a["vocab"], (a["seqs"], a["ctx"]), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    kw = dict(batch_size=a["batch"], loss_batch_size=a["loss_batch"])
    evaluate(model, ids[:1, :8], mask[:1, :8], saes, **kw)  # kernels and caches warm
    return measured(lambda: evaluate(model, ids, mask, saes, **kw))


def train_steps(a: dict) -> int:
    from saesuite.sae.member import Member, train_step
    from saesuite.spec.config import schema_defaults
    from saesuite.spec.dictionary import Dictionary
    from saesuite.spec.sections import TrainConfig

    cfg = TrainConfig.from_dict(
        schema_defaults("train") | {"batch_size": a["batch"], "step": a["step"],
                                    "log_every": 10**9, "device": "cpu",
                                    "init_threshold": a["threshold"]}
    )  # fmt: skip
    spec = Dictionary.of("m", "sae", 0, "res", a["width"], 10**9, lambda_=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a["batch"], a["d"], generator=g)

    def run():
        m = Member(spec, a["d"], cfg, seed=0, device="cpu")
        for step in range(3):
            train_step(m, x, step, cfg, 1)

    return measured(run)


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = json.loads(sys.argv[2])
    fn = {"evaluate": evaluate_pass, "train": train_steps}[sys.argv[1]]
    print(json.dumps({"bytes": fn(args)}))
