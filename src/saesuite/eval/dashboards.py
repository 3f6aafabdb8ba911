"""Latent dashboards (rule `dashboards`, issue 17): one job per (model, layer) runs
the held-out split through the model once, truncated after the layer, encodes each
batch with every dictionary of the layer and streams their latents' statistics
(saesuite.eval.latents); then writes, per dictionary, a folder that a browser and the
Neuronpedia export read:

- `dashboard.json`: what it is (model, layer, dictionary, width, tokens, settings)
  and how the shards are cut;
- `text.js`: the dashboard split's token ids (one list per sequence) and the string
  of every id in them, as `saesuite.text({...})`;
- `shards/shard_NNNNN.js`: SHARD latents each, as `saesuite.shard(N, [...])`: per
  latent its frequency, max and mean activation, its histogram (LINEAR_BINS counts
  over [0, max]), the
  top-k contexts and the sample as [sequence, position, value, [[offset, value],
  ...]] (the window's non-zero values; its tokens are in text.js) and the logit
  effect (top and bottom tokens with their values);
- `order/{id,frequency,max}_NNNNN.js`: the index, PAGE latents a page in each sort
  order, as [id, frequency, max, mean];
- `info.js`: dashboard.json's content for the page;
- `index.html`, `viewer.js`, `dashboard.css`: the page (dashboard_site/), which
  loads only the files it shows: a 2^20-latent dictionary opens as fast as a small one;
- `stats.safetensors`: count, max, mean and frequency of every latent.

JavaScript files rather than JSON: a page opened from file:// may load scripts but
not fetch files. `read_js` reads either kind back.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from saesuite.data.logs import progress_interval
from saesuite.data.models import load_model, load_tokenizer
from saesuite.data.sites import capture
from saesuite.data.tokens import load_tokens
from saesuite.eval.evaluate import load_released, trained_outlier_multiple
from saesuite.eval.latents import (
    LatentStats,
    TopContexts,
    linear_histogram,
    logit_effects,
)
from saesuite.eval.passes import outlier_split
from saesuite.spec.io import atomic_path, new_dir_beside, swap_in, versions, write_json
from saesuite.spec.jobs import DashboardJob
from saesuite.spec.sites import ARCHITECTURES, Site

SHARD = 256  # latents per shard file
PAGE = 500  # latents per page of the index (order/), in each sort order
SITE = Path(__file__).with_name("dashboard_site")
SITE_FILES = ("index.html", "viewer.js", "dashboard.css")
log = logging.getLogger(__name__)


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def _contexts(top: TopContexts, half: int) -> list[list[list[Any]]]:
    """Per latent its contexts as [sequence, position, value, [[offset, value], …]]
    (the window's non-zero values), empty slots left out; tensors are read once."""
    seq, pos = top.seq.tolist(), top.pos.tolist()
    value, window = top.value.tolist(), top.window_values.tolist()
    out = []
    for c in range(len(seq)):
        rows = []
        for j, s in enumerate(seq[c]):
            if s < 0:
                continue
            nz = [[o - half, _round(v)] for o, v in enumerate(window[c][j]) if v != 0]
            rows.append([s, pos[c][j], _round(value[c][j]), nz])
        out.append(rows)
    return out


def latent_records(
    stats: LatentStats, effects: tuple[torch.Tensor, ...], strings: dict[int, str]
) -> list[dict[str, Any]]:
    """One JSON-ready record per latent (the shards' content)."""
    top_v, top_i, bot_v, bot_i = (t.tolist() for t in effects)
    freq, mean = stats.frequency.tolist(), stats.mean.tolist()
    mx, hist = stats.max.tolist(), stats.hist.tolist()
    top = _contexts(stats.top, stats.half_window)
    sample = _contexts(stats.sample, stats.half_window)
    return [
        {
            "i": c,
            "freq": _round(freq[c]),
            "max": _round(mx[c]),
            "mean": _round(mean[c]),
            "hist": linear_histogram(hist[c], mx[c]),
            "top": top[c],
            "sample": sample[c],
            "pos": [[strings[t], _round(v)] for t, v in zip(top_i[c], top_v[c])],
            "neg": [[strings[t], _round(v)] for t, v in zip(bot_i[c], bot_v[c])],
        }
        for c in range(stats.width)
    ]


def write_js(path: Path, call: str, *args: Any) -> None:
    """`call(args…)` as one line of JavaScript; the arguments as JSON."""
    body = ", ".join(
        json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in args
    )
    with atomic_path(path) as tmp:
        tmp.write_text(f"{call}({body});\n", encoding="utf-8")


def read_js(path: str | Path) -> list[Any]:
    """The JSON arguments of a file written by `write_js`."""
    text = Path(path).read_text(encoding="utf-8").strip()
    start, end = text.index("("), text.rindex(")")
    return json.loads(f"[{text[start + 1 : end]}]")


def decoder_in_residual(model: torch.nn.Module, sae: Any, site: Site, arch: Any):
    """The latents' output directions in the residual stream: the decoder rows, or,
    for an attention-output SAE (which reconstructs the heads before W_O), the rows
    through W_O."""
    W_dec = sae.W_dec.detach().float()
    if site.kind == "att":
        o_proj = model.get_submodule(f"{arch.layers}.{site.layer}.{arch.att}")
        W_dec = W_dec @ o_proj.weight.detach().float().T
    return W_dec


def shown_tokens(
    mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor, multiple: float | None
) -> torch.Tensor:
    """The tokens of a batch (`mask`, bool (B, T)) a dictionary's dashboard shows:
    one trained without its outlier tokens (at its input `x` or, a transcoder's, its
    target `y`; `multiple` its max_norm_multiple) shows none of them, as it shows no
    BOS, by the rule of its evaluation (`eval.passes.outlier_split`)."""
    return outlier_split(mask, x, y, multiple)[0]


def dashboard_layer(
    job: DashboardJob,
    *,
    data_path: str | Path,
    cache_root: str | Path,
    out: str | Path,
) -> dict[str, Any]:
    """Rule `dashboards`: every dictionary of one layer (see the module docstring);
    `out` is the layer's summary, written last."""
    cfg = job.dashboards
    ids, mask = load_tokens(data_path)
    n_seq = max(1, min(len(ids), cfg.tokens // ids.shape[1]))
    ids, mask = ids[:n_seq], mask[:n_seq]
    model = load_model(job.model_cfg, cache_root)
    tok = load_tokenizer(job.model_cfg, cache_root)
    arch = ARCHITECTURES[model.config.model_type]
    device = next(model.parameters()).device
    saes = {
        m.key: (m.dictionary.input_site, load_released(m.dir).to(device))
        for m in job.members
    }
    targets = {m.key: m.dictionary.output_site for m in job.members}
    multiples = {m.key: trained_outlier_multiple(m.dir) for m in job.members}
    stats = {
        key: LatentStats(
            sae.W_enc.shape[1],
            k=cfg.top_k,
            half_window=cfg.window,
            samples=cfg.samples,
            seed=job.seed,
        )
        for key, (_, sae) in saes.items()
    }
    sites = sorted({site for site, _ in saes.values()} | set(targets.values()))
    batch = cfg.batch_size
    with tqdm(
        total=n_seq, unit="seq", desc="dashboards", mininterval=progress_interval()
    ) as bar:
        for lo in range(0, n_seq, batch):
            b_ids, b_mask = ids[lo : lo + batch], mask[lo : lo + batch]
            acts = capture(model, b_ids.to(device), sites)
            with torch.no_grad():
                for key, (site, sae) in saes.items():
                    x = acts[site]
                    keep = shown_tokens(
                        b_mask.to(x.device), x, acts[targets[key]], multiples[key]
                    )
                    stats[key].update(sae.encode(x), b_ids, keep.cpu(), lo)
            bar.update(len(b_ids))
    W_U = model.get_output_embeddings().weight.detach()
    used = sorted(set(ids.flatten().tolist()))
    effects = {
        key: logit_effects(
            decoder_in_residual(model, sae, site, arch).to(W_U.device),
            W_U,
            n=cfg.logit_tokens,
        )
        for key, (site, sae) in saes.items()
    }
    strings = token_strings(tok, used, effects)
    text = {
        "ids": ids.tolist(),
        "mask": mask.int().tolist(),
        "strings": {str(t): strings[t] for t in used},
    }
    summary = []
    for m in job.members:
        st = stats[m.key]
        write_dashboard(
            Path(m.out),
            st,
            latent_records(st, effects[m.key], strings),
            text,
            dashboard_info(job, m, st, n_seq),
        )
        summary.append({"key": m.key, "dir": m.out, "dead": int((st.count == 0).sum())})
    result = {"model": job.model, "layer": job.layer, "dashboards": summary}
    write_json(out, result)
    return result


def dashboard_info(job: DashboardJob, m: Any, st: LatentStats, n_seq: int) -> dict:
    """A dashboard's dashboard.json header: what it shows and how it was streamed."""
    return {
        "model": job.model,
        "layer": job.layer,
        "dictionary": m.key,
        "input_site": m.input_site,
        "output_site": m.output_site,
        "width": st.width,
        "tokens": st.tokens,
        "sequences": n_seq,
        "top_k": st.k,
        "window": st.half_window,
        "samples": st.samples,
        "shard_size": SHARD,
        "n_shards": -(-st.width // SHARD),
        "versions": versions(),
    }


def token_strings(tok: Any, used: list[int], effects: dict[str, Any]) -> dict[int, str]:
    """The text of every token the pages show: those of the held-out contexts and
    those of each latent's logit effects (positive and negative), decoded once."""
    needed = set(used)
    for e in effects.values():
        needed.update(e[1].flatten().tolist())
        needed.update(e[3].flatten().tolist())
    order = sorted(needed)
    return dict(zip(order, tok.batch_decode([[t] for t in order]), strict=True))


def write_dashboard(
    folder: Path,
    stats: LatentStats,
    records: list[dict[str, Any]],
    text: dict[str, Any],
    info: dict[str, Any],
) -> None:
    """One dictionary's dashboard folder, built beside and swapped in whole."""
    tmp = new_dir_beside(folder)
    try:
        for name in SITE_FILES:  # the page itself
            with atomic_path(tmp / name) as f:
                f.write_bytes((SITE / name).read_bytes())
        freq, mx = stats.frequency, stats.max
        orders = {
            "id": torch.arange(stats.width),
            "frequency": torch.argsort(-freq, stable=True),
            "max": torch.argsort(-mx, stable=True),
        }
        rows = [
            [
                c,
                _round(float(freq[c])),
                _round(float(mx[c])),
                _round(float(stats.mean[c])),
            ]
            for c in range(stats.width)
        ]
        for key, order in orders.items():
            ranked = [rows[c] for c in order.tolist()]
            for n in range(0, len(ranked), PAGE):
                write_js(
                    tmp / "order" / f"{key}_{n // PAGE:05d}.js",
                    "saesuite.order",
                    key,
                    n // PAGE,
                    ranked[n : n + PAGE],
                )
        write_js(
            tmp / "info.js",
            "saesuite.info",
            {**info, "orders": list(orders), "page_size": PAGE},
        )
        for n in range(0, len(records), SHARD):
            write_js(
                tmp / "shards" / f"shard_{n // SHARD:05d}.js",
                "saesuite.shard",
                n // SHARD,
                records[n : n + SHARD],
            )
        write_js(tmp / "text.js", "saesuite.text", text)
        with atomic_path(tmp / "stats.safetensors") as f:
            save_file(
                {
                    "count": stats.count,
                    "max": stats.max,
                    "mean": stats.mean.float(),
                    "frequency": stats.frequency.float(),
                },
                str(f),
            )
        write_json(tmp / "dashboard.json", info)
        swap_in(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# Gemma-style thirds of the max for the sampled contexts (the page shows the same)
SAMPLE_BINS = ((2 / 3, 1.0), (1 / 3, 2 / 3), (0.0, 1 / 3))


def _np_activation(
    ctx: list[Any], bin_: tuple[float, float, float], text: dict, window: int
) -> dict:
    """One context as a Neuronpedia activation: its tokens' strings and values in
    the ±window span, inside the bin (bin_min, bin_max, bin_contains)."""
    seq, pos, _, nz = ctx
    ids, strings = text["ids"][seq], text["strings"]
    vals = dict((o, v) for o, v in nz)
    span = [p for p in range(pos - window, pos + window + 1) if 0 <= p < len(ids)]
    return {
        "bin_min": bin_[0],
        "bin_max": bin_[1],
        "bin_contains": bin_[2],
        "tokens": [strings[str(ids[p])] for p in span],
        "values": [float(vals.get(p - pos, 0.0)) for p in span],
    }


def _np_feature(r: dict, info: dict, text: dict) -> dict:
    """One latent's record as a Neuronpedia feature. Top contexts are the "top
    activations" bin (bin_min −1, bin_max the max, bin_contains −1); the sample is
    cut into thirds of the max, each bin's bin_contains the share of the sample in
    it (the sample is uniform over firing tokens)."""
    w, top, bars = info["window"], r["max"], len(r["hist"])
    acts = [_np_activation(c, (-1, top, -1), text, w) for c in r["top"]]
    n = max(1, len(r["sample"]))
    for lo, hi in SAMPLE_BINS:
        inside = [
            c
            for c in r["sample"]
            if lo * top <= c[2] < hi * top or (hi == 1.0 and c[2] == top)
        ]
        bin_ = (lo * top, hi * top, len(inside) / n)
        acts += [_np_activation(c, bin_, text, w) for c in inside]
    return {
        "feature_index": r["i"],
        "neg_str": [s for s, _ in r["neg"]],
        "neg_values": [float(v) for _, v in r["neg"]],
        "pos_str": [s for s, _ in r["pos"]],
        "pos_values": [float(v) for _, v in r["pos"]],
        "frac_nonzero": float(r["freq"]),
        "freq_hist_data_bar_values": [(b + 0.5) * top / bars for b in range(bars)],
        "freq_hist_data_bar_heights": [float(c) for c in r["hist"]],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "n_prompts_total": info["sequences"],
        "n_tokens_in_prompt": len(text["ids"][0]) if text["ids"] else 0,
        "dataset": "",
        "activations": acts,
    }


def neuronpedia_batches(
    folder: str | Path,
    out_dir: str | Path,
    *,
    model_id: str,
    source: str,
    batch_size: int = 128,
) -> list[Path]:
    """A dictionary's dashboard as the batch files SAEDashboard's Neuronpedia runner
    writes (`batch-N.json`: NeuronpediaDashboardBatch → features → activations), for
    Neuronpedia's import: `model_id` and `source` (its SAE set, e.g. "9-res-ss") name
    it there. The activation histogram is the dashboard's (bar centres over [0, max]
    and their counts); logit histograms are left empty: saesuite does not compute
    them."""
    folder, out_dir = Path(folder), Path(out_dir)
    (info,) = read_js(folder / "info.js")
    (text,) = read_js(folder / "text.js")
    features = [
        _np_feature(r, info, text)
        for shard in sorted((folder / "shards").glob("shard_*.js"))
        for r in read_js(shard)[1]
    ]
    written = []
    for n in range(0, len(features), batch_size):
        path = out_dir / f"batch-{n // batch_size}.json"
        batch = {
            "model_id": model_id,
            "layer": info["layer"],
            "sae_set": source,
            "features": features[n : n + batch_size],
        }
        write_json(path, batch)
        written.append(path)
    return written
