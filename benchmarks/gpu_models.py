"""The random-weight models, inputs and sizes of the GPU proof (`gpu.py`): a helper
module of that benchmark, not a benchmark of its own."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from saesuite.data.models import DTYPES, default_attention
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.known_models import KNOWN
from saesuite.spec.sites import SITE_NAMES

# Model shapes beyond KNOWN's: vocabularies, KV heads and sliding windows of the
# published config.json files.
EXTRA = {
    "gemma-3-270m": {"arch": "gemma3", "vocab": 262144, "kv": 1, "window": 512},
    "gemma-2-2b": {"arch": "gemma2", "vocab": 256000, "kv": 4, "window": 4096},
}


# Each size on one GPU and in the quick CPU run (the test suite's): (full, quick).
SIZES: dict[str, tuple[Any, Any]] = {
    "ctx": (1024, 16),  # tokens per sequence
    "seqs": (16, 4),  # sequences extracted (half for the 2B shape)
    "batch": (8, 2),  # sequences per forward pass
    "check_ctx": (128, 16),  # tokens per sequence in the correctness checks
    "d_ins": ([640, 2304], [32, 48]),
    "widths": ([16384, 65536, 262144], [256, 1024]),
    "l0s": ([20, 100], [20, 100]),
    "train_batch": (4096, 128),
    "check_width": (4096, 256),
    "check_batch": (1024, 64),
    "warmup": (2, 1),  # training steps before the timed ones
    "steps": (5, 2),  # timed training steps
    "eval_width": (16384, 64),
    "eval_seqs": (4, 2),
    "matmul": (8192, 256),  # n of the n×n×n matmul ceiling
    "repeats": (2, 1),  # best of
}


def sizes(quick: bool) -> dict[str, Any]:
    return {k: v[1] if quick else v[0] for k, v in SIZES.items()}


def hf_config(name: str, quick: bool) -> Any:
    """The transformers config of a random model of `name`'s shape (tiny if quick)."""
    from transformers import Gemma2Config, Gemma3TextConfig

    shape, extra = KNOWN[name], EXTRA[name]
    kw = {
        "vocab_size": extra["vocab"],
        "hidden_size": shape.d_model,
        "intermediate_size": shape.d_mlp,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": extra["kv"],
        "head_dim": shape.head_dim,
        "sliding_window": extra["window"],
        "query_pre_attn_scalar": shape.head_dim,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }
    if quick:
        kw |= {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "sliding_window": 8,
            "query_pre_attn_scalar": 16,
        }
    return (Gemma2Config if extra["arch"] == "gemma2" else Gemma3TextConfig)(**kw)


def build_model(name: str, quick: bool, dtype: str, device: str, seed: int = 0):
    """A random-weight causal LM of `name`'s shape, initialised on `device`."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(name, quick)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=DTYPES[dtype], attn_implementation=default_attention(cfg)
        )
    return model.eval().requires_grad_(False)


def sibling(name: str):
    """Another benchmark of this folder, as a module."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_ids(vocab: int, n_seq: int, ctx: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (n_seq, ctx), generator=g)
    ids[:, 0] = 2  # <bos>
    return ids


def every_site(model) -> list[str]:
    n = model.config.get_text_config().num_hidden_layers
    return [f"layer_{L}.{k}" for L in range(n) for k in SITE_NAMES]


def threshold_for(l0: float, width: int) -> float:
    """θ at which a latent with N(0, 1) pre-activations fires on a share l0/width of
    tokens: with unit-norm encoder columns (the initialisation) and x ~ N(0, I), every
    pre-activation is N(0, 1)."""
    return float(
        torch.special.ndtri(torch.tensor(1.0 - l0 / width, dtype=torch.float64))
    )


def bench_spec(width: int, tokens: int, coefficient: float) -> Dictionary:
    return Dictionary.of("bench", "sae", 0, "res", width, tokens, lambda_=coefficient)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def eval_sae(d_in: int, width: int, device: str) -> JumpReLUSAE:
    sae = JumpReLUSAE(d_in, width, apply_b_dec_to_input=False)
    return sae.initialize(torch.Generator().manual_seed(0)).to(device)
