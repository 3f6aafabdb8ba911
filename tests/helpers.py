"""Helpers shared by the tests (fixtures live in conftest.py): a tiny BPE tokenizer
trained here, tiny random Gemma 2 / Gemma 3 / Llama models saved as local model
directories, a config builder, a Snakemake runner, a copier of finished runs and the
SAEs of the gradient tests."""

from __future__ import annotations

import contextlib
import copy
import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from saesuite.data.corpus import embedded_documents
from saesuite.sae.jumprelu import JumpReLUSAE
from saesuite.spec.config import REPO_ROOT

EPS = 0.001  # the JumpReLU bandwidth of the gradient tests


SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    tok.train_from_iterator(itertools.islice(embedded_documents(), 40), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def tiny_hf_config(arch: str, vocab: int):
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if arch == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(**common, sliding_window=16)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(**common, sliding_window=16)
    from transformers import LlamaConfig

    return LlamaConfig(**common)


def save_tiny_model(path: Path, arch: str, tokenizer, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, len(tokenizer)))
    # Random init leaves Gemma's RMSNorm weights at 0 (scale 1): perturb them so the
    # norms, and hence the site definitions, are really tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_it_model(path: Path, pt_dir: Path, tokenizer, steps: int = 40) -> Path:
    """An "instruction-tuned" tiny model: the PT one after a short fine-tune on
    embedded documents in Gemma's chat format (its weights, and so its activations,
    move away from the PT model's)."""
    from saesuite.data.models import GEMMA_CHAT_TEMPLATE
    from saesuite.data.tokens import chat_wrap

    model = load_tiny(pt_dir).train()
    prefix, suffix = chat_wrap(GEMMA_CHAT_TEMPLATE, tokenizer)
    docs = list(itertools.islice(embedded_documents(), 64))
    texts = [f"<bos>{prefix}{d[:80]}{suffix}{d[80:200]}<end_of_turn>" for d in docs]
    batch = tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=48,
        padding="max_length", return_tensors="pt",
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(steps):
        rows = torch.randint(0, len(texts), (8,))
        ids, attn = batch["input_ids"][rows], batch["attention_mask"][rows]
        labels = ids.masked_fill(attn == 0, -100)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tiny(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()


BASE_CONFIG: dict[str, Any] = {
    "models": {"tiny": {"source": "test/placeholder"}},
    "suite": [
        {
            "layers": [1, 2],
            "sites": ["res", "att", "mlp"],
            "widths": [128],
            "sparsity": {"target_l0": [8, 16]},
            "tokens": 20000,
        }
    ],
    "data": {
        "context_size": 32,
        "train_tokens": 4096,
        "eval_tokens": 1024,
    },
    "activations": {"chunk_tokens": 1024, "shuffle_bucket": 1000},
    "train": {"batch_size": 256, "lr": 1e-3, "checkpoint_every": 20, "log_every": 10},
    "evaluate": {"loss_tokens": 256},
    "transfer": {"tokens": 512, "batch_size": 16},
}


def make_config(
    model_dir: Path | str = "test/placeholder", **overrides
) -> dict[str, Any]:
    """A raw (unvalidated) tiny config; overrides replace top-level keys."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["models"]["tiny"]["source"] = str(model_dir)
    cfg.update(copy.deepcopy(overrides))
    return cfg


# A local run gives each compute rule every core (rules/common.smk: job_threads),
# right for a real model; the tiny model's jobs are bound by Python start-up, so the
# test runs give them one thread each and run two at once: 99 s instead of ~160 s for
# the tiny workflow here, and the same bytes (sha256 of every chunk and SAE checked).
ONE_THREAD_EACH = ["--set-threads"] + [
    f"{rule}=1"
    for rule in ("extract", "train", "evaluate", "dashboards", "transfer_rollouts")
]


def snakemake(
    workdir: Path, *args: str, snakefile: Path = REPO_ROOT / "Snakefile"
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "snakemake",
        "-s", str(snakefile),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        *args,
    ]  # fmt: skip
    if "--cores" in args:
        cmd += ONE_THREAD_EACH
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def copy_run(work: Path, dest: Path) -> Path:
    """A copy of a finished workflow directory with every modification time kept
    (shutil.copy2), so Snakemake sees it as finished too: tests that change a run
    work on a copy and leave the shared one as the workflow left it."""
    shutil.copytree(work, dest, symlinks=True)
    return dest


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1].split("\n\n")[0]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)
    }


def sae64(d_in=5, d_sae=7, **kw) -> JumpReLUSAE:
    torch.manual_seed(0)
    sae = JumpReLUSAE(d_in, d_sae, dtype=torch.float64, bandwidth=EPS, **kw)
    sae.initialize(torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        theta = torch.rand(d_sae, dtype=torch.float64) * 0.5 + 0.1
        if sae.threshold_param == "log":
            sae.log_threshold.copy_(theta.log())
        else:
            sae.threshold_raw.copy_(theta)
    return sae


def x_near_threshold(sae: JumpReLUSAE, n=16) -> torch.Tensor:
    """Inputs whose pre-activations include values within ε/2 of θ (inside the
    kernel), just outside it, and far from it."""
    torch.manual_seed(2)
    x = torch.randn(n, sae.d_in, dtype=torch.float64)
    with torch.no_grad():
        pre = sae.pre_acts(x)
        theta = sae.threshold
        # Solve for inputs that put latent j of row i at θ_j + offset.
        offsets = torch.tensor([0.2, -0.3, 0.45, -0.49, 0.7, -2.0, 3.0]) * EPS
        for i, off in enumerate(offsets):
            j = i % sae.d_sae
            w = sae.W_enc[:, j]
            x[i] += (theta[j] + off - pre[i, j]) * w / w.dot(w)
    return x


CIRCUIT_TRACER_ENV = REPO_ROOT / ".venv-circuit-tracer"


def circuit_tracer_python() -> Path:
    """circuit-tracer's own environment (envs/circuit-tracer.txt, torch pinned first
    as the Makefile pins it), built once into .venv-circuit-tracer and reused while
    the requirements file is unchanged (~80 s to build here)."""
    import hashlib

    req = REPO_ROOT / "envs" / "circuit-tracer.txt"
    makefile = (REPO_ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH \?= (\S+)", makefile, re.M)
    key = hashlib.sha256(req.read_bytes() + torch_pin.group(1).encode()).hexdigest()
    stamp = CIRCUIT_TRACER_ENV / f".installed-{key[:12]}"
    python = CIRCUIT_TRACER_ENV / "bin" / "python"
    if not stamp.exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(CIRCUIT_TRACER_ENV)],
            check=True,
        )
        for args in ([torch_pin.group(1)], ["-r", str(req)]):
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *args],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if done.returncode:
                raise RuntimeError(
                    f"pip install {' '.join(args)}:\n{done.stderr[-3000:]}"
                )
        stamp.touch()
    return python


def run_circuit_tracer(
    out: Path, model_dir: Path, inputs: dict[str, torch.Tensor], sets: list[str]
) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """circuit-tracer, in its own environment, loads each `release:set` of `sets`
    and computes an attribution graph for inputs["input_ids"] (tests/
    circuit_tracer_client.py); per set, its JSON summary and its tensors: the graph's
    logits, token vectors and adjacency, and each layer's transcoder prediction on
    inputs["layer_L.mlp_in"]."""
    import json
    import os

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(out / "inputs.st"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    client = Path(__file__).with_name("circuit_tracer_client.py")
    done = subprocess.run(
        [str(circuit_tracer_python()), str(client), str(out / "inputs.st"), str(out),
         str(model_dir), *sets],
        capture_output=True, text=True, env=env, timeout=600, cwd=out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return [
        (
            json.loads((out / f"{n}.json").read_text()),
            load_file(out / f"{n}.safetensors"),
        )
        for n in range(len(sets))
    ]


def check_attribution(
    results: list[tuple[dict, dict[str, torch.Tensor]]],
    ids: torch.Tensor,
    logits: torch.Tensor,
    embedded: torch.Tensor,
) -> None:
    """What every graph must show (`logits`, `embedded`: the model's own, computed
    with saesuite's transformers): the replacement model's logits are the model's,
    its token vectors the model's embedding output (Gemma's √d_model scale included),
    and its nodes one per active feature, layer × position error, token and logit,
    the logit nodes the model's top tokens."""
    n_pos = len(ids)
    for info, tensors in results:
        torch.testing.assert_close(tensors["logits"], logits, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(tensors["token_vectors"], embedded,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        n_logits = len(info["logit_token_ids"])
        n_nodes = info["n_features"] + info["n_layers"] * n_pos + n_pos + n_logits
        assert tensors["adjacency"].shape == (n_nodes, n_nodes)
        assert info["n_features"] > 0 and info["n_pos"] == n_pos
        assert info["logit_token_ids"] == logits[-1].topk(n_logits).indices.tolist()
        tok = tensors["adjacency"][:, n_nodes - n_pos - n_logits : n_nodes - n_logits]
        assert torch.isfinite(tok).all() and tok.abs().sum() > 0


def release_meta(n_layers: int = 4, d: int = 64) -> dict:
    """What make_release passes build_release, for a release built in a test."""
    return {
        "model": "tiny",
        "hub_model": "google/gemma-3-270m",
        "model_type": "gemma3_text",
        "n_layers": n_layers,
        "site_widths": {"res": d, "att": d, "mlp": d, "mlp_in": d},
        "release_layers": [1, 2],
        "context_size": 32,
        "config_hash": "abc",
        "code": "0.1.0+test",
        "versions": {"saesuite": "0.1.0"},
        "data": {
            "sources": [{"type": "embedded"}],
            "context_size": 32,
            "train_tokens": 4096,
            "eval_tokens": 1024,
        },
        "seed": 0,
        "train": {"lr": 1e-3},
        "license": "apache-2.0",
        "canonical_l0": 100,
        "source_note": None,
        "evaluate": {"tokens": 1000, "loss_tokens": 100},
    }


def missing(why: str, require: str) -> None:
    """A test's outside part is missing: it skips, or fails where CI sets the
    environment variable `require` (.ci/run), so that a client test never passes
    as a skip there."""
    import os

    import pytest

    if os.environ.get(require):
        pytest.fail(f"{why} ({require} is set)")
    pytest.skip(why)


def client(module: str):
    """An external client (e.g. sae_lens) imported, or `missing` without it; CI sets
    SAESUITE_REQUIRE_CLIENTS."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} is not importable: {e}", "SAESUITE_REQUIRE_CLIENTS")


def chromium() -> str:
    """Debian's Chromium, or `missing` without it; CI sets SAESUITE_REQUIRE_CHROMIUM."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        why = "no chromium (Debian's chromium package; .ci/system-deps installs it)"
        missing(why, "SAESUITE_REQUIRE_CHROMIUM")
    return exe


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


CLIENT_PACKAGES = REPO_ROOT / ".venv-clients"


def client_module(package: str, requirement: str, module_path: str):
    """One module of a client package installed without its dependencies into
    .venv-clients/<package> (once), loaded from its file alone, without the package's
    __init__ (whose imports pin other versions of our dependencies): e.g.
    SAEDashboard's Neuronpedia dataclasses, which import only numpy."""
    import importlib.util

    target = CLIENT_PACKAGES / package
    stamp = target / f".installed-{requirement}"
    if not stamp.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
             "--target", str(target), requirement],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"pip install {requirement}:\n{done.stderr[-3000:]}")
        stamp.touch()
    spec = importlib.util.spec_from_file_location(
        f"_client_{module_path.replace('/', '_')}", target / module_path
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves annotations through it
    spec.loader.exec_module(module)
    return module


def chromium_dom(url: str, profile: Path) -> str:
    """The DOM of `url` after its scripts ran (Chromium's --dump-dom), failing on
    any console message."""
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    return done.stdout


def hub_cache(tmp_path, repo: str, folder, monkeypatch):
    """A local Hugging Face cache holding `folder` as the snapshot of `repo`, served
    offline: it stands in for the Hub, which cannot be reached from here."""
    import shutil

    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)

    # SAELens reads a safetensors header from the Hub with HTTP range requests: the
    # stand-in reads it from the cached file.
    import sae_lens.loading.pretrained_sae_loaders as loaders

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        from safetensors import safe_open

        with safe_open(str(snap / filename), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)


def frozen_direct_effects(model, ids: torch.Tensor, target) -> dict[str, Any]:
    """The gradients attribution edges are made of, as circuit-tracer documents them
    and computed here from the model itself (a Gemma 3: its RMSNorm and eager
    attention are the ones frozen): one backward pass of `target` through
    the model with every attention pattern and every RMSNorm denominator frozen (as
    constants of the clean pass) and no gradient through the MLPs, read at each
    layer's MLP output ("mlp", (L, T, d)) and at the embedding output ("embed",
    (T, d), with "embedded" its value). `target(acts)` gets the pass's MLP inputs
    ({layer: (T, d)}) and final hidden state ("final", (T, d)) and returns a scalar.

    An edge into the target is then ⟨gradient at the source's location, what the
    source writes there⟩: a token's embedding, a latent's activation times each of
    its decoder rows (summed over the layers it writes)."""
    import contextlib

    import torch.nn.functional as F
    from transformers.models.gemma3 import modeling_gemma3

    from saesuite.data.sites import decoder_layers

    def frozen_norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps).detach()

    dropout = F.dropout

    def frozen_pattern(x, *args, **kwargs):  # attention's only dropout: its pattern
        return dropout(x, *args, **kwargs).detach()

    layers = decoder_layers(model)
    zs = [torch.zeros(ids.shape[-1], model.config.hidden_size, requires_grad=True)
          for _ in layers]  # fmt: skip
    acts: dict[Any, torch.Tensor] = {}
    handles = []

    def embed_hook(_m, _a, out):
        acts["embed"] = e = out.detach()[0].requires_grad_()
        return e[None]

    def mlp_in_hook(i):
        def hook(_m, _a, out):
            acts[i] = out[0]

        return hook

    def mlp_out_hook(i):
        def hook(_m, _a, out):
            return out.detach() + zs[i][None]

        return hook

    handles.append(model.get_input_embeddings().register_forward_hook(embed_hook))
    for i, layer in enumerate(layers):
        handles.append(
            layer.pre_feedforward_layernorm.register_forward_hook(mlp_in_hook(i))
        )
        handles.append(
            layer.post_feedforward_layernorm.register_forward_hook(mlp_out_hook(i))
        )
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in handles])
        stack.enter_context(
            _patched(modeling_gemma3.Gemma3RMSNorm, "_norm", frozen_norm)
        )
        stack.enter_context(_patched(modeling_gemma3.nn.functional, "dropout",
                                     frozen_pattern))  # fmt: skip
        out = model.model(input_ids=ids[None], use_cache=False)
        acts["final"] = out.last_hidden_state[0]
        target(acts).backward()
    return {
        # no gradient reaches the MLP outputs after the target
        "mlp": torch.stack(
            [torch.zeros_like(z) if z.grad is None else z.grad for z in zs]
        ),  # fmt: skip
        "embed": acts["embed"].grad,
        "embedded": acts["embed"].detach(),
    }


@contextlib.contextmanager
def _patched(owner, name: str, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)
