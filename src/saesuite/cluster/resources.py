"""What each job asks a scheduler for: memory, runtime, CPUs and GPUs (a GRES), from
the config (`resources`) and the size of the model and SAEs involved.

Estimates, stated so they can be checked (requests are twice the compute estimate,
clamped to [min_runtime, max_runtime] minutes; memory has a 1.5× margin):
- a model in memory takes N_params × bytes of its dtype; loading may briefly hold a
  second copy, so model jobs ask for 2× that;
- extract: a batch of every site's activations (float32 and the cache dtype; the
  chunk streams to its file), the split's token ids and the model; FLOPs
  2·N·(L_max + 1)/n_layers per token;
- train: the shuffle bucket plus per SAE its weights, gradients and Adam moments and
  the (batch, width) work tensors, on one GPU or split over several (`sae_gpu_bytes`);
  FLOPs 10·d_in·width per token per SAE;
- evaluate: the model and the layer's SAEs (on GPUs one SAE at a time: they go to
  the GPU in groups that fit beside the model); FLOPs as in the pre-flight plan;
- dashboards: the model, the layer's SAEs and per latent its streamed contexts (top-k
  and sample, each a window of values and token ids); FLOPs a truncated forward over
  the tokens plus 2·d_in·width per token per SAE;
- transfer_rollouts: the model; decoding runs ~10× below the dense rate;
- finetune: the target model, its activations of the budget's chat-formatted tokens
  at the site (float32, in memory, twice while they are selected), and a train job's
  memory; FLOPs a truncated forward over those tokens plus the training.
An unknown model (not in known_models) gets conservative fixed requests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saesuite.cluster.memory import (
    F32,
    GPU_HEADROOM,
    clt_bytes,
    clt_flops,
    evaluate_work_bytes,
    forward_flops,
    n_prefixes,
    sae_gpu_bytes,
    train_flops,
)
from saesuite.spec.dictionary import Dictionary
from saesuite.spec.known_models import ModelShape, known_shape
from saesuite.spec.sizes import BYTES, LOGIT_BLOCK_BYTES, clt_params, dictionary_bytes
from saesuite.spec.suite import known_site_width, sequences
from saesuite.spec.workflow import Workflow

GPU_STAGES = frozenset(
    {"extract", "train", "evaluate", "dashboards", "transfer_rollouts", "finetune"}
)
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt"}
BASE_MB = 2048  # interpreter, torch, transformers


def _shape(config: dict[str, Any], model: str) -> ModelShape | None:
    return known_shape(config["models"][model]["source"])


def model_mb(config: dict[str, Any], model: str) -> int:
    """Host memory to load `model` in its configured dtype (2 copies while loading).
    A model of unknown shape in a local folder or file: 4× its weight files (a
    quantised GGUF or bf16 weights grow when loaded as float32); elsewhere
    resources.unknown_model_mb."""
    shape = _shape(config, model)
    if shape is not None:
        return int(2 * shape.n_params * BYTES[config["models"][model]["dtype"]] / 2**20)
    src = Path(config["models"][model]["source"])
    files = [src] if src.is_file() else list(src.glob("*")) if src.is_dir() else []
    weights = sum(f.stat().st_size for f in files if f.suffix in WEIGHT_SUFFIXES)
    if weights:
        return int(4 * weights / 2**20)
    return config["resources"]["unknown_model_mb"]


def uses_gpu(config: dict[str, Any], stage: str) -> bool:
    return config["resources"]["gpu"] and stage in GPU_STAGES


def train_nproc(config: dict[str, Any], widths: list[int]) -> int:
    """Data-parallel processes of a training job: train.nproc, or more for wide SAEs
    (resources.nproc_by_width)."""
    n = config["train"]["nproc"]
    for min_width, nproc in config["resources"]["nproc_by_width"].items():
        if max(widths, default=0) >= int(min_width):
            n = max(n, nproc)
    return n


def runtime_min(config: dict[str, Any], stage: str, flops: float | None) -> int:
    """Minutes to ask for: twice the FLOPs at the stage's effective rate, clamped."""
    r = config["resources"]
    if flops is None:
        return r["max_runtime"]
    rate = (r["gpu_tflops"] if uses_gpu(config, stage) else r["cpu_tflops"]) * 1e12
    return min(
        r["max_runtime"], max(r["min_runtime"], math.ceil(2 * flops / rate / 60))
    )


def train_group_bytes(config: dict[str, Any]) -> float | None:
    """Bytes per GPU a group of SAEs trained together may take, as planned from
    resources.gpu_mem_gb (None on CPU: one group). The trainer forms its groups from
    the memory of the GPU it runs on (saesuite.sae.groups.device_budget)."""
    if not uses_gpu(config, "train"):
        return None
    return GPU_HEADROOM * config["resources"]["gpu_mem_gb"] * 1e9


def train_mem_mb(config: dict[str, Any], specs: list[Dictionary], d_in: int) -> int:
    """Host memory of a training job. On CPU the SAEs train there; on GPUs the host
    holds the bucket and, while a checkpoint is written, one group's weights and
    Adam's two moments, and rank 0 gathers a sharded SAE's weights (twice, while
    they are serialised). GPU memory is not requested: a GRES is whole GPUs."""
    t = config["train"]
    bucket = config["activations"]["shuffle_bucket"] * d_in * F32
    sizes = [dictionary_bytes(d_in, s.width, skip=s.skip) for s in specs]
    params = sum(sizes)
    if uses_gpu(config, "train"):
        # one SAE at least: weights, gradients and two Adam moments
        group = max(4 * n for n in sizes)
        group = max(group, train_group_bytes(config) or 0)
        gathered = max(2 * n for n in sizes)
        saes = max(min(3 * params, 3 * group // 4), gathered)
    else:  # the SAEs train here, one process: the GPU formula, on the host
        pre = n_prefixes(t["matryoshka_fractions"])
        saes = sum(
            sae_gpu_bytes(t["batch_size"], d_in, s.width, 1, skip=s.skip, prefixes=pre)
            for s in specs
        )
    return int((bucket + saes) / 2**20 * 1.5) + BASE_MB


GENERATION_SLOWDOWN = 10


def clt_estimate(
    config: dict[str, Any], wf: Workflow, model: str, path: str
) -> tuple[int, float]:
    """Host memory (MB) and FLOPs of a train_clt job: on CPU the CLT trains there
    (`clt_bytes`), on a GPU the host holds the bucket of every site it reads and a
    checkpoint's copy of weights and moments; plus the bucket."""
    (d,) = [s for s in wf.spanning if (s.model, s.path) == (model, path)]
    d_in = known_site_width(config, model, d.reads[0].kind)
    d_out = known_site_width(config, model, d.writes[0].kind)
    L = len(d.layers)
    # clt_train.clt_bucket: the rows of one site's bucket spread over all its sites
    bucket = config["activations"]["shuffle_bucket"] * (d_in + d_out) // 2 * F32
    if uses_gpu(config, "train"):
        held = 3 * clt_params(L, d_in, d_out, d.width) * F32
    else:
        held = clt_bytes(config["train"]["batch_size"], L, d_in, d_out, d.width)
    mem = int((bucket + held) / 2**20 * 1.5) + BASE_MB
    return mem, clt_flops(d, d_in, d_out)


def extract_estimate(config: dict[str, Any], model: str, sites: list[tuple[int, str]]):
    """(mem_mb, flops) of one extract job (one chunk, streamed to its file)."""
    shape = _shape(config, model)
    if shape is None:
        return model_mb(config, model) + BASE_MB, None
    tokens = config["activations"]["chunk_tokens"]
    # A batch of every site's activations in float32 and in the cache dtype, and the
    # train split's token ids and mask (int32 + bool), read whole.
    batch = config["models"][model]["batch_size"] * config["data"]["context_size"]
    d_sum = sum(shape.site_width(k) for _, k in sites)
    acts = batch * d_sum * (4 + BYTES[config["activations"]["dtype"]])
    ids = 5 * sequences(config, "train") * config["data"]["context_size"]
    mem = model_mb(config, model) + int((acts + ids) / 2**20 * 1.5) + BASE_MB
    last = max(L for L, _ in sites)
    return mem, forward_flops(shape, tokens, last + 1)


def dashboards_estimate(
    config: dict[str, Any], model: str, specs: list[Dictionary]
) -> tuple[int, float | None]:
    """(mem_mb, flops) of one dashboards job: one layer's SAEs (`specs`) on `model`;
    memory depends on width × (top_k + samples) × window, not on the token budget."""
    shape = _shape(config, model)
    d = config["dashboards"]
    slots = (d["top_k"] + d["samples"]) * (2 * d["window"] + 1)
    widths = [shape.site_width(s.input_site.kind) if shape else 4096 for s in specs]
    saes = sum(
        dictionary_bytes(w_in, s.width, skip=s.skip)
        for w_in, s in zip(widths, specs, strict=True)
    )
    stats = sum(s.width * (slots * 12 + 8 * 70) for s in specs)  # values, ids, hist
    logits = LOGIT_BLOCK_BYTES  # one block of logit effects (saesuite.eval.latents)
    mem = model_mb(config, model) + int(1.5 * (saes + stats + logits) / 2**20)
    mem += BASE_MB
    if shape is None:
        return mem, None
    tokens = min(d["tokens"], config["data"]["eval_tokens"])
    layer = specs[0].layer
    encode = sum(2 * w_in * s.width for w_in, s in zip(widths, specs, strict=True))
    # the logit effects: every latent's residual direction through the unembedding
    effects = sum(2 * shape.d_model * shape.vocab * s.width for s in specs)
    return mem, forward_flops(shape, tokens, layer + 1) + encode * tokens + effects


def finetune_estimate(
    config: dict[str, Any], target: str, specs: list[Dictionary]
) -> tuple[int, float | None]:
    """(mem_mb, flops) of one finetune job: `specs` (one layer's fine-tuned
    dictionaries) trained on `target`'s activations (saesuite.sae.finetune), every
    site they read or predict extracted once."""
    shape = _shape(config, target)
    sites = {x for s in specs for x in (*s.reads, *s.writes)}
    d_sum = sum(known_site_width(config, target, x.kind) for x in sites)
    tokens = max(s.tokens for s in specs) * 5 // 4  # ~1/5 of chat tokens are masked
    acts = 2 * 4 * tokens * d_sum
    train = 0  # the train jobs run one after another
    for job in {s.job for s in specs}:
        group = [s for s in specs if s.job == job]
        d_in = known_site_width(config, target, group[0].input_site.kind)
        train = max(train, train_mem_mb(config, group, d_in))
    mem = model_mb(config, target) + int(1.5 * acts / 2**20) + train
    if shape is None:
        return mem, None
    layer = specs[0].layer
    flops = sum(
        train_flops([s], known_site_width(config, target, s.input_site.kind))
        for s in specs
    )
    return mem, forward_flops(shape, tokens, layer + 1) + flops


def evaluate_estimate(
    config: dict[str, Any], lm: str, data: str, specs: list[Dictionary]
) -> tuple[int, float | None]:
    """(mem_mb, flops) of one evaluate job: one layer's SAEs (`specs`) through lm."""
    shape = _shape(config, lm)
    ev = config["evaluate"]
    sizes = [
        dictionary_bytes(
            shape.site_width(s.site) if shape else 4096, s.width, skip=s.skip
        )
        for s in specs
    ]
    # On a GPU the SAEs pass through the host one at a time (saesuite.eval.evaluate).
    sae_mb = max(sizes, default=0) if uses_gpu(config, "evaluate") else sum(sizes)
    mem = model_mb(config, lm) + int(1.5 * sae_mb / 2**20) + BASE_MB
    if shape is None:
        return mem, None
    if not uses_gpu(config, "evaluate"):  # the pass's tensors live on the host
        mem += int(1.5 * eval_work(config, lm, shape, specs) / 2**20)
    n_tok = ev["tokens"] or (
        sequences(config, "eval") * config["data"]["context_size"]
        if data == "text"
        else config["transfer"]["tokens"]
    )
    loss_tok = min(ev["loss_tokens"] or n_tok, n_tok)
    n_sites = len({s.site for s in specs})
    # Each group of SAEs that fits a GPU beside the model repeats the clean passes.
    groups = 1
    if uses_gpu(config, "evaluate"):
        free = GPU_HEADROOM * config["resources"]["gpu_mem_gb"] * 1e9
        free -= shape.n_params * BYTES[config["models"][lm]["dtype"]] + 2**32
        groups = max(1, math.ceil(sum(sizes) / max(free, 1e9)))
    clean = n_tok + loss_tok * (n_sites + 1)
    return mem, forward_flops(shape, groups * clean + loss_tok * len(specs))


def clt_eval_flops(config: dict[str, Any], d: Dictionary) -> float | None:
    """An evaluate_clt job's FLOPs: per loss token the clean, zero-ablated and
    replacement passes and one per layer alone, per other token a forward pass, and
    the CLT's forward (a third of its training FLOPs per token) on every token."""
    shape = _shape(config, d.model)
    if shape is None:
        return None
    ev = config["evaluate"]
    n_tok = ev["tokens"] or sequences(config, "eval") * config["data"]["context_size"]
    loss_tok = min(ev["loss_tokens"] or n_tok, n_tok)
    d_in, d_out = (shape.site_width(x[0].kind) for x in (d.reads, d.writes))
    passes = n_tok + loss_tok * (3 + len(d.layers))
    return (
        forward_flops(shape, passes) + clt_flops(d, d_in, d_out) / 3 * n_tok / d.tokens
    )


def clt_eval_estimate(
    config: dict[str, Any], wf: Workflow, model: str, path: str
) -> tuple[int, float | None]:
    """(mem_mb, flops) of an evaluate_clt job: the model, the CLT (three copies:
    loaded, moved, folded), one batch's work tensors at every site it reads and
    writes; FLOPs `clt_eval_flops`."""
    (d,) = [s for s in wf.spanning if (s.model, s.path) == (model, path)]
    shape = _shape(config, model)
    d_in = known_site_width(config, model, d.reads[0].kind)
    d_out = known_site_width(config, model, d.writes[0].kind)
    params = clt_params(len(d.layers), d_in, d_out, d.width) * F32
    mem = model_mb(config, model) + int(3 * params / 2**20) + BASE_MB
    if shape is None:
        return mem, None
    ev = config["evaluate"]
    ctx = config["data"]["context_size"]
    rows = max(ev["batch_size"], ev["loss_batch_size"]) * ctx
    work = rows * len(d.layers) * (4 * d.width + 3 * (d_in + d_out)) * F32
    mem += int(1.5 * (work + eval_work(config, model, shape, [])) / 2**20)
    return mem, clt_eval_flops(config, d)


def eval_work(
    config: dict[str, Any], lm: str, shape: ModelShape, specs: list[Dictionary]
) -> int:
    """`evaluate_work_bytes` of one evaluate job: its dictionaries' sites, both of a
    transcoder's captured."""
    ev = config["evaluate"]
    sites = {site for s in specs for site in (s.input_site, s.output_site)}
    return evaluate_work_bytes(
        vocab=shape.vocab,
        ctx=config["data"]["context_size"],
        loss_batch_size=ev["loss_batch_size"],
        batch_size=ev["batch_size"],
        model_dtype=config["models"][lm]["dtype"],
        site_widths=[shape.site_width(site.kind) for site in sites],
        max_width=max((s.width for s in specs), default=0),
    )


def rollouts_estimate(config: dict[str, Any], model: str) -> tuple[int, float | None]:
    shape = _shape(config, model)
    mem = model_mb(config, model) + BASE_MB
    if shape is None:
        return mem, None
    tokens = config["transfer"]["tokens"]
    return mem, GENERATION_SLOWDOWN * forward_flops(shape, tokens)


def request(
    config: dict[str, Any],
    stage: str,
    mem_mb: int,
    flops: float | None = None,
    gpus: int = 1,
    minutes: float | None = None,
) -> dict[str, Any]:
    """Snakemake resources of one job, by the SLURM plugin's names. Runtime comes from
    `flops` at the stage's rate, or from `minutes` (stages without a FLOP model)."""
    r = config["resources"]
    if minutes is not None:
        runtime = min(r["max_runtime"], max(r["min_runtime"], math.ceil(2 * minutes)))
    else:
        runtime = runtime_min(config, stage, flops)
    out: dict[str, Any] = {"mem_mb": int(mem_mb), "runtime": runtime}
    if uses_gpu(config, stage):
        out["gres"] = r["gres"].format(n=gpus)
        out["cpus_per_task"] = r["cpus_per_gpu"] * gpus
    else:
        out["cpus_per_task"] = r["cpus"]
    if stage == "train" and r["preempt_signal_s"]:
        # USR1 to the job's steps (not the batch shell) before the limit: the trainer
        # checkpoints and exits, and Snakemake's retry resumes it. The lead time is
        # added to the request, so that a job that fits is never signalled.
        out["slurm_extra"] = f"--signal=USR1@{r['preempt_signal_s']}"
        out["runtime"] = min(
            r["max_runtime"], runtime + math.ceil(r["preempt_signal_s"] / 60)
        )
    return out


def cache_plan(
    site_widths: dict[str, int],
    n_tokens: int,
    dtype: str,
) -> dict[str, int]:
    """Bytes the cache takes per site (plus token ids and mask)."""
    plan = {name: n_tokens * d * BYTES[dtype] for name, d in site_widths.items()}
    plan["input_ids+mask"] = n_tokens * 5
    return plan


def cache_bytes(
    config: dict[str, Any], model: str, sites: list[tuple[int, str]]
) -> int:
    """Bytes of a model's whole activation cache (0 for an unknown model)."""
    shape = _shape(config, model)
    if shape is None:
        return 0
    tokens = sequences(config, "train") * config["data"]["context_size"]
    widths = {f"{L}.{k}": shape.site_width(k) for L, k in sites}
    return sum(cache_plan(widths, tokens, config["activations"]["dtype"]).values())


def data_request(config: dict[str, Any], stage: str, model: str | None = None):
    """corpus, model, tokens: CPU stages sized by the corpus or the model."""
    data = config["data"]
    tokens = data["train_tokens"] + data["eval_tokens"]
    if stage == "corpus":
        # streaming text at ~1 MB/s (Hub) with ~4 characters per token
        return request(config, stage, BASE_MB * 2, minutes=4 * tokens / 1e6 / 60)
    if stage == "model":
        return request(config, stage, model_mb(config, model) + BASE_MB, minutes=30)
    # tokenising at ~200k tokens/s; the splits as int32, three copies at most
    mem = BASE_MB + 12 * tokens / 2**20
    return request(config, stage, mem, minutes=tokens / 2e5 / 60)


def io_request(config: dict[str, Any], stage: str, n_bytes: int, rate: float):
    """Stages that read or send files (manifest hashes, normalisation, publish)."""
    return request(config, stage, BASE_MB * 2, minutes=n_bytes / rate / 60)


# Rates of the stages bound by files (bytes/s): hashing, then one pass per site, over
# a shared filesystem (manifest, normalize); sending to the Hub (publish).
READ_RATE = 2e8
UPLOAD_RATE = 2e7
SMALL_JOB_MINUTES = 2.0  # tables, figures, release folders (seconds in the default)


class JobResources:
    """Every job's resources (a dict by the SLURM plugin's names) from the workflow's
    plan, computed once per job: Snakemake asks for them key by key."""

    def __init__(self, wf: Workflow):
        self.wf = wf
        self.config = wf.config
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], dict] = {}

    def keys(self, stage: str) -> list[str]:
        return list(request(self.config, stage, 0, 0.0, 1))

    def cpus(self, stage: str) -> int:
        """CPUs a job of `stage` asks for (its threads on a cluster)."""
        return request(self.config, stage, 0)["cpus_per_task"]

    def __call__(self, stage: str, wildcards: dict[str, str]) -> dict[str, Any]:
        key = (stage, tuple(sorted(wildcards.items())))
        if key not in self._cache:
            self._cache[key] = self._compute(stage, wildcards)
        return self._cache[key]

    def train_nproc(self, model: str, layer: int, kind: str) -> int:
        specs = self.wf.site_specs(model, layer, kind)
        return train_nproc(self.config, [s.width for s in specs])

    def _compute(self, stage: str, w: dict[str, str]) -> dict[str, Any]:
        config, wf = self.config, self.wf
        if stage in ("corpus", "model", "tokens"):
            return data_request(config, stage, w.get("model"))
        if stage == "extract":
            est = extract_estimate(config, w["model"], wf.model_sites(w["model"]))
            return request(config, stage, *est)
        if stage in ("manifest", "normalize"):
            n = cache_bytes(config, w["model"], wf.model_sites(w["model"]))
            passes = 1 if stage == "manifest" else 2
            return io_request(config, stage, n * passes, READ_RATE)
        if stage == "train" and "clt" in w:  # one cross-layer transcoder
            return request(
                config, stage, *clt_estimate(config, wf, w["model"], w["clt"])
            )
        if stage == "train":
            model, layer, kind = w["model"], int(w["layer"]), w["kind"]
            specs = wf.site_specs(model, layer, kind)
            d_in = known_site_width(config, model, specs[0].input_site.kind)
            return request(
                config,
                stage,
                train_mem_mb(config, specs, d_in),
                train_flops(specs, d_in),
                self.train_nproc(model, layer, kind),
            )
        if stage == "finetune":
            c = wf.tuned[w["tuned"]]
            specs = wf.layer_specs(w["tuned"], int(w["layer"]))
            return request(config, stage, *finetune_estimate(config, c.target, specs))
        if stage == "evaluate" and "clt" in w:  # a CLT as a replacement model
            return request(
                config, stage, *clt_eval_estimate(config, wf, w["model"], w["clt"])
            )
        if stage == "evaluate":
            specs = wf.eval_passes[(w["lm"], w["data"], int(w["layer"]))]
            est = evaluate_estimate(config, w["lm"], w["data"], specs)
            return request(config, stage, *est)
        if stage == "dashboards":
            specs = wf.layer_specs(w["model"], int(w["layer"]))
            return request(
                config, stage, *dashboards_estimate(config, w["model"], specs)
            )
        if stage == "transfer_rollouts":
            return request(config, stage, *rollouts_estimate(config, w["model"]))
        if stage == "publish":
            n = wf.releases[w["release"]].n_bytes
            return io_request(config, stage, n, UPLOAD_RATE)
        # tables, figures and release folders: small files, a few minutes at most
        return request(config, stage, 2 * BASE_MB, minutes=SMALL_JOB_MINUTES)
