"""A cross-layer transcoder or crosscoder evaluated as a replacement model (rule
`evaluate_clt`); a crosscoder replaces the residual streams of its layers as a CLT
replaces MLP outputs, each layer's encoder reading the stream before it is written.

Three passes per batch of loss sequences, each against the clean pass:

- **all layers at once** (the replacement model, closed loop): every spanned MLP's
  output is the CLT's prediction, each layer's encoder reading the MLP input of the
  pass itself, so the errors of the layers before reach it, as in circuit-tracer's
  replacement model without error nodes. Delta loss, KL, and the loss recovered
  against zero-ablating every spanned MLP at once.
- **one layer at a time** (open loop): layer j's MLP output alone is replaced by
  Σ_{i≤j} W_dec,i→j f_i of the clean inputs, as one layer's transcoder is spliced in
  (`eval.passes`), so the two compare at that layer.
- **per-layer reconstruction** on every evaluation sequence (open loop, clean
  inputs): FVU and L0 per layer, total L0, dead latents.

Masked positions (BOS, pad) keep their clean activations and leave every mean, as in
`eval.passes`; so do the tokens a CLT trained without (`clt_train.clt_outliers`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saesuite.data.logs import progress_interval
from saesuite.data.models import load_model
from saesuite.data.sites import capture, layer_outputs, logits_from, site_hooks
from saesuite.eval.evaluate import evaluation_tokens
from saesuite.eval.passes import NextToken
from saesuite.sae.clt import CrossLayerTranscoder
from saesuite.sae.clt_train import clt_outliers, load_clt
from saesuite.spec import paths
from saesuite.spec.io import read_json, versions, write_json
from saesuite.spec.jobs import EvalJob
from saesuite.spec.metrics import health_warnings
from saesuite.spec.sites import Site

log = logging.getLogger(__name__)


class CLTAccumulator:
    """Running sums of one CLT's metrics (float64)."""

    def __init__(self, n_layers: int, width: int):
        L = n_layers
        self.sse = torch.zeros(L, dtype=torch.float64)
        self.sum_y = None  # (L, d)
        self.sum_y2 = torch.zeros(L, dtype=torch.float64)
        self.tokens = 0
        self.l0 = torch.zeros(L, dtype=torch.float64)
        self.counts = torch.zeros(L, width, dtype=torch.int64)
        self.outliers = 0
        self.preds = 0
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
        self.alone = torch.zeros(L, dtype=torch.float64)  # spliced CE, layer alone
        self.alone_kl = torch.zeros(L, dtype=torch.float64)

    def add_reconstruction(
        self, y: torch.Tensor, y_hat: torch.Tensor, f: torch.Tensor
    ) -> None:
        """Tokens (N, L, d) of targets and predictions, latents f (N, L, width)."""
        y, y_hat = y.double(), y_hat.double()
        self.sse += (y - y_hat).pow(2).sum(dim=(0, 2))
        s = y.sum(0)
        self.sum_y = s if self.sum_y is None else self.sum_y + s
        self.sum_y2 += y.pow(2).sum(dim=(0, 2))
        self.tokens += len(y)
        active = f > 0
        self.l0 += active.sum(dim=(0, 2)).double()
        self.counts += active.sum(0)

    def metrics(self) -> dict[str, Any]:
        n = max(self.tokens, 1)
        var = self.sum_y2 - self.sum_y.pow(2).sum(-1) / n  # Σ‖y − ȳ‖² per layer
        fvu = (self.sse / var.clamp_min(1e-30)).tolist()
        l0 = (self.l0 / n).tolist()
        dead = (self.counts == 0).sum(-1).tolist()
        p = max(self.preds, 1)
        ce = {k: v / p for k, v in self.ce.items()}
        zero = ce["zero"] - ce["clean"]
        out: dict[str, Any] = {
            "fvu": float(self.sse.sum() / var.sum().clamp_min(1e-30)),
            "l0": float(sum(l0)),  # active latents per token over all layers
            "l0_per_layer": float(sum(l0) / len(l0)),
            "dead": int(sum(dead)),
            "tokens": self.tokens,
            "outliers": self.outliers,
            "loss_tokens": self.preds,
        }
        if self.preds:
            delta = ce["spliced"] - ce["clean"]
            out |= {
                "ce_clean": ce["clean"],
                "ce_spliced": ce["spliced"],
                "ce_zero_ablation": ce["zero"],
                "delta_loss": delta,
                "kl": ce["kl"],
                "loss_recovered": 1 - delta / zero if zero else None,
            }
        alone = (self.alone / p - ce["clean"]).tolist() if self.preds else None
        alone_kl = (self.alone_kl / p).tolist() if self.preds else None
        out["by_layer"] = [
            {
                "fvu": fvu[i],
                "l0": l0[i],
                "dead": dead[i],
                "delta_loss_alone": None if alone is None else alone[i],
                "kl_alone": None if alone_kl is None else alone_kl[i],
            }
            for i in range(len(fvu))
        ]
        return out


def _stack(acts: dict[Site, torch.Tensor], sites: list[Site]) -> torch.Tensor:
    return torch.stack([acts[s] for s in sites], dim=2)  # (B, T, L, d)


def _predict(clt: CrossLayerTranscoder, x: torch.Tensor):
    """(ŷ, f) of inputs x (B, T, L, d)."""
    B, T = x.shape[:2]
    f = clt.encode(x.reshape(B * T, *x.shape[2:]).float())
    return clt.decode(f).view(B, T, clt.n_layers, -1), f.view(B, T, *f.shape[1:])


def _keep(m: torch.Tensor, x: torch.Tensor, y: torch.Tensor, multiple) -> torch.Tensor:
    """The tokens (B, T) the CLT is scored and spliced on: unmasked, and not an
    outlier at any of its sites when it trained without them."""
    if not multiple:
        return m
    B, T = m.shape
    flat = m.reshape(-1)
    out = torch.zeros_like(flat)
    xs, ys = x.reshape(B * T, *x.shape[2:]), y.reshape(B * T, *y.shape[2:])
    out[flat] = clt_outliers(xs[flat].float(), ys[flat].float(), multiple)
    return m & ~out.view(B, T)


def replacement_pass(
    model: torch.nn.Module,
    clt: CrossLayerTranscoder,
    ids: torch.Tensor,
    ins: list[Site],
    outs: list[Site],
    keep: torch.Tensor,
) -> torch.Tensor:
    """Logits with every spanned MLP output replaced by the CLT's prediction from
    the pass's own MLP inputs (closed loop), on the tokens of `keep` (B, T)."""
    latents: dict[int, torch.Tensor] = {}
    reads = {s: i for i, s in enumerate(ins)}
    writes = {s: j for j, s in enumerate(outs)}
    B, T = ids.shape

    def replace(site: Site, act: torch.Tensor) -> torch.Tensor | None:
        if site in reads:  # encode what the pass holds here (before a write here)
            i = reads[site]
            latents[i] = clt.encode_layer(act.reshape(B * T, -1).float(), i)
        if site not in writes:
            return None
        y = clt.predict_layer(latents, writes[site]).view(B, T, -1).to(act.dtype)
        return torch.where(keep[..., None], y, act)

    with torch.no_grad(), site_hooks(model, _every(ins, outs), replace=replace):
        return model(input_ids=ids, use_cache=False).logits


def _every(ins: list[Site], outs: list[Site]) -> list[Site]:
    """Each site once: a crosscoder reads and writes the same ones."""
    return list(dict.fromkeys(ins + outs))


def _loss_passes(
    model: torch.nn.Module,
    clt: CrossLayerTranscoder,
    ids: torch.Tensor,
    m: torch.Tensor,
    keep: torch.Tensor,
    ins: list[Site],
    outs: list[Site],
    y_hat: torch.Tensor,
    kept: dict[int, Any],
    clean: NextToken,
    p: torch.Tensor,
    neg_entropy: torch.Tensor,
    acc: CLTAccumulator,
) -> None:
    """A loss batch's zero-ablation, replacement and one-layer passes, into `acc`."""
    pred = m[:, :-1] & m[:, 1:]  # input and target both unmasked

    def put(new: torch.Tensor):
        def replace(_s: Site, act: torch.Tensor) -> torch.Tensor:
            return torch.where(keep[..., None], new.to(act.dtype), act)

        return replace

    zero = NextToken(logits_from(model, ids, outs, put(torch.zeros(()))), ids)
    full = NextToken(replacement_pass(model, clt, ids, ins, outs, keep), ids)
    acc.ce["clean"] += float(clean.loss[pred].sum())
    acc.ce["zero"] += float(zero.loss[pred].sum())
    acc.ce["spliced"] += float(full.loss[pred].sum())
    acc.ce["kl"] += float(full.kl_from(p, neg_entropy)[pred].sum())
    del zero, full
    for j, site in enumerate(outs):
        resume = (site.layer - 1, kept[site.layer - 1]) if site.layer > 0 else None
        one = NextToken(
            logits_from(model, ids, [site], put(y_hat[:, :, j]), resume), ids
        )
        acc.alone[j] += float(one.loss[pred].sum())
        acc.alone_kl[j] += float(one.kl_from(p, neg_entropy)[pred].sum())
    acc.preds += int(pred.sum())


def clt_passes(
    model: torch.nn.Module,
    clt: CrossLayerTranscoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ins: list[Site],
    outs: list[Site],
    *,
    loss_sequences: int,
    batch_size: int = 8,
    loss_batch_size: int = 2,
    multiple: float | None = None,
    progress: Any = None,
) -> CLTAccumulator:
    """Every metric of `clt` (raw units) reading sites `ins` and writing `outs` on
    sequences `ids` (N, T) with `mask`: loss passes on the first `loss_sequences`,
    reconstruction on all; tokens outlying at `multiple` × a site's median left out
    as in training (`clt_outliers`). `progress(n)` hears of every batch."""
    device = next(model.parameters()).device
    n_seq = len(ids)
    acc = CLTAccumulator(clt.n_layers, clt.width)
    before = sorted({s.layer - 1 for s in outs if s.layer > 0})
    b0 = 0
    while b0 < n_seq:
        loss = b0 < loss_sequences
        stop = min(b0 + loss_batch_size, loss_sequences) if loss else b0 + batch_size
        x_ids = ids[b0:stop].long().to(device)
        m = mask[b0:stop].to(device)
        b0 += len(x_ids)
        kept: dict[int, Any] = {}
        if loss:
            captured: dict[Site, torch.Tensor] = {}
            with torch.no_grad(), site_hooks(model, _every(ins, outs),
                                             captured=captured), \
                    layer_outputs(model, before, kept):  # fmt: skip
                clean = NextToken(model(input_ids=x_ids, use_cache=False).logits, x_ids)
            p, neg_entropy = clean.as_reference()
        else:
            captured = capture(model, x_ids, _every(ins, outs))
        x, y = _stack(captured, ins), _stack(captured, outs)
        keep = _keep(m, x, y, multiple)
        acc.outliers += int((m & ~keep).sum())
        with torch.no_grad():
            y_hat, f = _predict(clt, x)
        acc.add_reconstruction(y[keep], y_hat[keep], f[keep])
        if loss:
            _loss_passes(model, clt, x_ids, m, keep, ins, outs, y_hat, kept, clean,
                         p, neg_entropy, acc)  # fmt: skip
        if progress:
            progress(len(x_ids))
    return acc


def evaluate_clt(
    job: EvalJob, *, data_path: str | Path, cache_root: str | Path, out: str | Path
) -> dict[str, Any]:
    """Rule `evaluate_clt`: the job's one CLT (`EvalJob` of one member) through
    model `job.evaluated_on` on its held-out split; writes the member's JSON and
    `out` (the same record: the rule's output)."""
    (member,) = job.members
    d = member.dictionary
    ev = job.evaluate
    ids, mask, n_loss = evaluation_tokens(data_path, ev)
    n_seq = len(ids)
    model = load_model(job.model_cfg, cache_root)
    device = next(model.parameters()).device
    clt = load_clt(member.dir).to(device)
    trained = read_json(paths.sae_file(member.dir, "info"))["train"]
    multiple = trained["max_norm_multiple"]
    start = time.perf_counter()
    with tqdm(total=n_seq, unit="seq", desc="evaluate_clt",
              mininterval=progress_interval()) as bar:  # fmt: skip
        acc = clt_passes(model, clt, ids, mask, list(d.reads), list(d.writes),
                         loss_sequences=min(n_loss, n_seq), batch_size=ev.batch_size,
                         loss_batch_size=ev.loss_batch_size, multiple=multiple,
                         progress=bar.update)  # fmt: skip
    metrics = acc.metrics()
    elapsed = time.perf_counter() - start
    for w in health_warnings(d.width * clt.n_layers, metrics["dead"],
                             metrics.get("loss_recovered")):  # fmt: skip
        log.warning("%s on %s: %s", member.key, job.evaluated_on, w)
    result = {
        "identity": {**d.record(), "kind": d.kind, "layers": list(d.layers)},
        "evaluation": {
            **job.evaluation(member),
            "data_path": str(data_path),
            "max_norm_multiple": multiple,
            "seconds": elapsed,
        },  # fmt: skip
        "metrics": metrics,
        "versions": versions(),
    }
    write_json(member.out, result)
    if Path(out) != Path(member.out):
        write_json(out, result)
    return result
