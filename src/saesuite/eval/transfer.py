"""PT→IT transfer checks (rules `transfer_rollouts` and `transfer_table`).

For every IT model with a `base`, the base's SAEs run through the IT model on two
data sets: its held-out text split and chat rollouts it generates (prompts wrapped in
its chat template, sampled at temperature 1.0 as Gemma Scope did). Where the IT model
has SAEs of its own they are evaluated on the same data, side by side. A PT model
that no IT model names gets the same code run on itself as a *format-shift* check:
its own SAEs on chat-formatted rollouts it generated. That is what the embedded
default can do offline; it is labelled so in every table and plot, never as PT→IT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from saesuite.data.models import chat_template, load_model, load_tokenizer
from saesuite.data.tokens import chat_wrap, save_tokens, special_ids
from saesuite.eval.plots import pareto_axes, pareto_series, save_png, save_svg, subplots
from saesuite.eval.tables import eval_frame, html_table, write_table
from saesuite.spec.checks import FORMAT_SHIFT, TransferCheck, check_label
from saesuite.spec.hashing import derived_seed
from saesuite.spec.io import atomic_path, versions, write_json
from saesuite.spec.jobs import RolloutsJob
from saesuite.spec.prompts import load_prompts

log = logging.getLogger(__name__)


def _seed(seed: int, batch: int) -> int:
    return derived_seed("rollouts", seed, batch)


def _stop_ids(tokenizer: Any) -> list[int]:
    """EOS, and the chat template's end of turn where the vocabulary has it."""
    end_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    has_end = isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id
    return [tokenizer.eos_token_id] + ([end_turn] if has_end else [])


def _sample(
    model: torch.nn.Module,
    heads: list[list[int]],
    *,
    ctx: int,
    temperature: float,
    stops: list[int],
    pad: int,
    bos: int,
    seed: int,
) -> list[list[int]]:
    """Each head's sampled reply (plain sampling at `temperature`), cut after its
    first stop token. Heads are left-padded, so every prompt ends where generation
    starts."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(map(len, heads))
    x = torch.tensor([[pad] * (width - len(h)) + h for h in heads], device=device)
    attn = torch.tensor(
        [[0] * (width - len(h)) + [1] * len(h) for h in heads], device=device
    )
    gen = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=ctx - min(map(len, heads)),
        eos_token_id=stops,
        pad_token_id=pad,
        bos_token_id=bos,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=attn, generation_config=gen)
    replies = []
    for row in out[:, width:].tolist():
        ends = [k for k, t in enumerate(row) if t in stops]
        replies.append(row[: ends[0] + 1] if ends else row)
    return replies


def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    template: str,
    prompts: list[str],
    *,
    n_seqs: int,
    ctx: int,
    temperature: float,
    batch_size: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """n_seqs sequences (prompts cycled) of ctx tokens: BOS, user prefix (masked),
    prompt, model-turn opening, then the model's sampled reply until it ends its
    turn, right-padded (masked). Returns (ids int32, mask bool, stats)."""
    prefix, suffix = chat_wrap(template, tokenizer)
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    suf = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    specials = special_ids(tokenizer)
    stops = _stop_ids(tokenizer)
    # A prompt may take at most half the context, so there is room for a reply.
    room = max(1, ctx // 2 - len(pre) - len(suf) - 1)
    bodies = [
        tokenizer(p, add_special_tokens=False)["input_ids"][:room] for p in prompts
    ]
    ids = torch.full((n_seqs, ctx), pad, dtype=torch.int32)
    mask = torch.zeros(n_seqs, ctx, dtype=torch.bool)
    reply_lens = []
    sampling = dict(ctx=ctx, temperature=temperature, stops=stops, pad=pad, bos=bos)
    for bi, b0 in enumerate(range(0, n_seqs, batch_size)):
        rows = range(b0, min(b0 + batch_size, n_seqs))
        heads = [[bos] + pre + bodies[r % len(bodies)] + suf for r in rows]
        replies = _sample(model, heads, seed=_seed(seed, bi), **sampling)
        for r, head, reply in zip(rows, heads, replies):
            seq = (head + reply)[:ctx]
            keep = [False] * (1 + len(pre)) + [
                t not in specials for t in seq[1 + len(pre) :]
            ]
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.int32)
            mask[r, : len(seq)] = torch.tensor(keep[: len(seq)])
            reply_lens.append(max(0, len(seq) - len(head)))
    stats = {
        "sequences": n_seqs,
        "tokens": n_seqs * ctx,
        "unmasked_tokens": int(mask.sum()),
        "mean_reply_tokens": sum(reply_lens) / max(len(reply_lens), 1),
        "n_prompts": len(prompts),
    }
    return ids, mask, stats


def make_rollouts(
    job: RolloutsJob, *, model_type: str, cache_root: str | Path, out: dict[str, str]
) -> dict[str, Any]:
    """Rule `transfer_rollouts`: chat rollouts of one model, saved as a token file."""
    model_cfg, transfer, ctx, seed = (
        job.model_cfg,
        job.transfer,
        job.context_size,
        job.seed,
    )
    prompts = load_prompts(transfer.prompts)
    tokenizer = load_tokenizer(model_cfg, cache_root)
    template = chat_template(tokenizer, model_cfg, model_type)
    model = load_model(model_cfg, cache_root)
    ids, mask, stats = generate_rollouts(
        model,
        tokenizer,
        template,
        prompts,
        n_seqs=max(1, transfer.tokens // ctx),
        ctx=ctx,
        temperature=transfer.temperature,
        batch_size=transfer.batch_size,
        seed=seed,
    )
    save_tokens(out["data"], ids, mask)
    info = {
        "model": job.model,
        "role": model_cfg["role"],
        "prompts": str(transfer.prompts or "saesuite:spec/prompts.txt"),
        "temperature": transfer.temperature,
        "seed": seed,
        "context_size": ctx,
        **stats,
        "versions": versions(),
    }
    write_json(out["info"], info)
    log.info(
        "%d rollouts, mean reply %.1f tokens",
        stats["sequences"],
        stats["mean_reply_tokens"],
    )
    return info


def transfer_frame(check: TransferCheck, layer_jsons: list[str | Path]):
    """One row per SAE × evaluation of the check, labelled with what it is."""
    triples = [(e.trained_on, e.evaluated_on, e.data) for e in check.evaluations]
    df = eval_frame(layer_jsons, triples)
    df.insert(0, "check", check.kind)
    df.insert(1, "check_label", check_label(check.kind))
    df.insert(2, "saes", df["trained_on"].map(lambda m: saes_label(check, m)))
    return df


def saes_label(check: TransferCheck, trained_on: str) -> str:
    """What a row's SAEs are: the base's, the base's fine-tuned on the check's target
    (transfer.finetune_share; on the PT model itself in a format-shift check), or
    the IT model's own."""
    if trained_on == check.base:
        return "PT-trained"
    if trained_on == check.finetuned:
        if check.kind == FORMAT_SHIFT:
            return "PT, fine-tuned on chat-formatted text (format shift)"
        return "PT, fine-tuned on IT"
    return "IT-trained"


def plot_transfer(df, check: TransferCheck, out: str | Path, svg: str | Path) -> None:
    """Delta loss and FVU against L0, one panel row per data set; a series per
    (SAEs, model they run through), a marker per site kind."""
    datas = [d for d in ("text", "chat") if d in set(df["data"])]
    fig, axes = subplots(len(datas), 2, figsize=(10, 3.6 * len(datas)), squeeze=False)
    markers = {"res": "o", "att": "s", "mlp": "^", "mlp_in": "v"}
    groups = df.groupby(["trained_on", "evaluated_on"], sort=True)
    for row, data in enumerate(datas):
        for col, metric in enumerate(("delta_loss", "fvu")):
            ax = axes[row][col]
            for gi, ((trained_on, evaluated_on), g) in enumerate(groups):
                g = g[g["data"] == data]
                for site, gs in g.groupby("site"):
                    if metric not in gs:
                        continue
                    pareto_series(
                        ax,
                        list(gs["l0"]),
                        list(gs[metric]),
                        line=False,
                        marker=markers.get(site, "x"),
                        color=f"C{gi}",
                        alpha=0.8,
                        label=f"{saes_label(check, trained_on)} SAEs on "
                        f"{evaluated_on} ({site})",
                    )
            pareto_axes(ax, metric, title=f"{metric.replace('_', ' ')} on {data} data")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{check.name}: {check_label(check.kind)}", fontsize=9)
    fig.tight_layout()
    save_svg(fig, svg)
    save_png(fig, out)


def transfer_table(
    check: TransferCheck | dict[str, Any],
    layer_jsons: list[str | Path],
    out: dict[str, str],
) -> None:
    """Rule `transfer_table`: the check's table (CSV, parquet, HTML) and plot."""
    if isinstance(check, dict):
        check = TransferCheck.from_dict(check)
    df = transfer_frame(check, layer_jsons)
    write_table(df, out["csv"], out["parquet"])
    with atomic_path(out["html"]) as tmp:
        tmp.write_text(html_table(df, f"{check.name}: {check_label(check.kind)}"))
    plot_transfer(df, check, out["plot"], out["svg"])
