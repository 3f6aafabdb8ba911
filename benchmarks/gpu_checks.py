"""The GPU proof's correctness section (`gpu.py`): the device against the CPU on the
same weights and inputs: one extraction batch, both training steps of an SAE and of
a skip-transcoder, and one evaluation batch. A helper module of that benchmark."""

from __future__ import annotations

import copy
from typing import Any

import torch
from gpu_models import (
    build_model,
    eval_sae,
    every_site,
    rel_err,
    threshold_for,
    token_ids,
)

from saesuite.data.extract import extract_batches
from saesuite.data.sites import site_width
from saesuite.eval.passes import evaluate
from saesuite.sae.jumprelu import JumpReLUSAE, LossTerms
from saesuite.sae.step import dense_step, sparse_step
from saesuite.spec.sites import Site

# Tolerances of the correctness checks: the largest relative error ‖a − b‖ / ‖b‖ over
# the compared tensors (or |a − b| / max(|b|, 1e-3) over metrics). float32 kernels
# differ in summation order (~1e-6 relative per op over 18 layers). θ's gradient is a
# sum over the few pre-activations inside the kernel window: one that rounds across
# the window's edge moves it by a whole term, hence the looser bound (the check uses
# a bandwidth of 0.05 so that the window holds thousands of terms).
EXTRACT_TOL = 1e-3
GRAD_TOL = 1e-3
THETA_TOL = 2e-2
EVAL_TOL = 1e-3
CHECK_BANDWIDTH = 0.05


def check(name: str, err: float, tol: float) -> dict[str, Any]:
    return {"check": name, "error": err, "tolerance": tol, "pass": err <= tol}


def check_extraction(cpu_model, dev_model, s: dict) -> dict[str, Any]:
    sites = every_site(cpu_model)
    widths = {x: site_width(cpu_model, Site.parse(x).kind) for x in sites}
    ids = token_ids(cpu_model.config.vocab_size, 2, s["check_ctx"])
    a = extract_batches(cpu_model, ids, sites, widths, "float32", 2, "cpu")
    b = extract_batches(dev_model, ids, sites, widths, "float32", 2, "device")
    err = max(rel_err(b[x], a[x]) for x in sites)
    return check(f"extraction batch: {len(sites)} sites, float32", err, EXTRACT_TOL)


def check_steps(device: str, s: dict, kind: str = "sae") -> list[dict[str, Any]]:
    """Gradients of both steps, device against CPU, for an SAE or a skip-transcoder
    (its target a random linear map of the input plus noise)."""
    d, w, n = s["d_ins"][0], s["check_width"], s["check_batch"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    tc = kind == "skip_transcoder"
    base = JumpReLUSAE(
        d, w, skip=tc, apply_b_dec_to_input=not tc, bandwidth=CHECK_BANDWIDTH
    ).initialize(torch.Generator().manual_seed(0))
    y = None
    with torch.no_grad():
        base.threshold_raw.fill_(threshold_for(0.02 * w, w))
        if tc:
            base.W_skip.normal_(0, d**-0.5, generator=g)
            y = x @ torch.randn(d, d, generator=g) / d**0.5 + torch.randn(n, d)
    terms = LossTerms("l0", 1e-3)
    grads = {}
    for where, fn in (
        ("cpu", dense_step),
        ("cpu", sparse_step),
        (device, dense_step),
        (device, sparse_step),
    ):
        sae = copy.deepcopy(base).to(where)
        fn(sae, x.to(where), terms, target=None if y is None else y.to(where))
        grads[where, fn.__name__] = {k: p.grad for k, p in sae.named_parameters()}
    rows = []
    what = "skip-transcoder " if tc else ""
    for step in ("dense_step", "sparse_step"):
        rows += pair(f"{what}{step}: device vs CPU", grads[device, step],
                     grads["cpu", step])  # fmt: skip
    rows += pair(
        f"{what}sparse vs dense step on the device",
        grads[device, "sparse_step"],
        grads[device, "dense_step"],
    )
    return rows


def pair(name: str, a: dict, b: dict) -> list[dict[str, Any]]:
    theta = [k for k in b if k.startswith("threshold")]
    rest = max(rel_err(a[k], b[k]) for k in b if k not in theta)
    names = ", ".join(k for k in b if k not in theta)
    return [
        check(f"{name}, gradients of {names}", rest, GRAD_TOL),
        check(f"{name}, gradient of θ", rel_err(a[theta[0]], b[theta[0]]), THETA_TOL),
    ]


EVAL_KEYS = (
    "mse",
    "fvu",
    "l0",
    "cosine",
    "clean_loss",
    "spliced_loss",
    "zero_ablation_loss",
    "kl",
)


def check_evaluation(cpu_model, dev_model, device: str, s: dict) -> dict[str, Any]:
    site = Site(cpu_model.config.num_hidden_layers // 2, "res")
    ids = token_ids(cpu_model.config.vocab_size, 2, s["check_ctx"])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    sae = eval_sae(site_width(cpu_model, "res"), s["eval_width"], "cpu")
    out = {}
    for where, model in (("cpu", cpu_model), (device, dev_model)):
        acc = evaluate(
            model,
            ids.to(where),
            mask.to(where),
            {"sae": (site, copy.deepcopy(sae).to(where))},
            batch_size=2,
            loss_batch_size=2,
        )["sae"]
        out[where] = acc.metrics()
    a, b = out[device], out["cpu"]
    err = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-3) for k in EVAL_KEYS)
    return check(f"evaluation batch: {', '.join(EVAL_KEYS)}", err, EVAL_TOL)


def correctness(device: str, quick: bool, s: dict) -> list[dict[str, Any]]:
    cpu_model = build_model("gemma-3-270m", quick, "float32", "cpu")
    dev_model = copy.deepcopy(cpu_model).to(device)
    rows = [check_extraction(cpu_model, dev_model, s)]
    rows += check_steps(device, s) + check_steps(device, s, "skip_transcoder")
    rows.append(check_evaluation(cpu_model, dev_model, device, s))
    return rows
