"""The GPU proof's report (`gpu.py`): the machine, and each section's table as
Markdown, saved beside the JSON of every figure. A helper module of that benchmark."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from common import matmul_ceiling

from saesuite.spec.io import atomic_open, write_json


def gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# Each section's table: title, (column, alignment) pairs, and a row's cells.
TABLES = {
    "correctness": (
        "Correctness: device against CPU",
        [("check", "<"), ("error", ">"), ("tolerance", ">"), ("result", "<")],
        lambda r: [r["check"], f"{r['error']:.2e}", f"{r['tolerance']:.0e}",
                   "pass" if r["pass"] else "FAIL"],
    ),
    "extraction": (
        "Extraction: all sites against the bare forward",
        [("model", "<"), ("dtype", "<"), ("tokens", ">"), ("sites", ">"),
         ("bare forward tok/s", ">"), ("all sites tok/s", ">"), ("all / bare", ">")],
        lambda r: [r["model"], r["dtype"], str(r["tokens"]), str(r["sites"]),
                   f"{r['bare_tok_s']:.0f}", f"{r['all_sites_tok_s']:.0f}",
                   f"{r['ratio']:.0%}"],
    ),
    "training": (
        "Training step and memory",
        [("d_in", ">"), ("width", ">"), ("L0 target", ">"), ("step", "<"),
         ("L0", ">"), ("tok/s", ">"), ("share of fp32 ceiling", ">"),
         ("sparse / dense", ">"), ("faster", "<"), ("auto picks", "<"),
         ("peak GB", ">"), ("estimate GB", ">"), ("peak / estimate", ">")],
        lambda r: [str(r["d_in"]), str(r["width"]), str(r["target_l0"]), r["step"],
                   f"{r['l0']:.1f}", f"{r['tok_s']:.0f}", f"{r['share_fp32']:.1%}",
                   f"{r['sparse_over_dense']:.2f}", r["faster"], r["auto"],
                   gb(r["peak_bytes"]), gb(r["estimate_bytes"]),
                   _ratio(r["peak_over_estimate"])],
    ),
    "saelens": (
        "SAELens's trainer on the same batches (dense; saesuite: its faster step)",
        [("d_in", ">"), ("width", ">"), ("L0 target", ">"), ("L0", ">"),
         ("SAELens tok/s", ">"), ("saesuite tok/s", ">"), ("saesuite / SAELens", ">"),
         ("sae-lens", "<")],
        lambda r: [str(r["d_in"]), str(r["width"]), str(r["target_l0"]),
                   f"{r['l0']:.1f}", f"{r['tok_s']:.0f}", f"{r['saesuite_tok_s']:.0f}",
                   f"{r['ratio']:.2f}", r["sae_lens"]],
    ),
    "evaluation": (
        "Evaluation: one SAE's marginal cost against a clean forward",
        [("model", "<"), ("dtype", "<"), ("layer", ">"), ("tokens", ">"),
         ("SAE width", ">"), ("clean forward s", ">"), ("per SAE s", ">"),
         ("shared s", ">"), ("per SAE / clean", ">")],
        lambda r: [r["model"], r["dtype"], str(r["layer"]), str(r["tokens"]),
                   str(r["width"]), f"{r['clean_s']:.3f}", f"{r['per_sae_s']:.3f}",
                   f"{r['shared_s']:.3f}", f"{r['per_sae_over_clean']:.2f}"],
    ),
}  # fmt: skip


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    out = [
        f"# GPU proof: {m['device_name']}",
        "",
        f"{rep['date']}; `{rep['command']}`; torch {m['torch']}, transformers "
        f"{m['transformers']}, Python {m['python']}; matmul ceiling "
        f"{m['fp32_flops'] / 1e12:.1f} TFLOP/s float32, "
        f"{m['bf16_flops'] / 1e12:.1f} TFLOP/s bfloat16 ({m['matmul_n']}³).",
        "",
    ]
    sec = rep["sections"]
    for name, (title, columns, cells) in TABLES.items():
        if name not in sec:
            continue
        if sec[name] and "note" in sec[name][0]:
            out += [f"## {title}", "", sec[name][0]["note"], ""]
            continue
        head = [c for c, _ in columns]
        align = "|" + "|".join("---" if a == "<" else "---:" for _, a in columns) + "|"
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", align]
        out += ["| " + " | ".join(cells(r)) + " |" for r in sec[name]]
        out.append("")
    return "\n".join(out)


def save(rep: dict[str, Any], out: Path) -> None:
    write_json(out / "gpu.json", rep)
    with atomic_open(out / "gpu.md") as f:
        f.write(markdown(rep))


def machine(device: str, s: dict) -> dict[str, Any]:
    import transformers

    name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "matmul_n": s["matmul"],
        "fp32_flops": matmul_ceiling(
            s["matmul"], s["matmul"], s["matmul"], device, torch.float32, 10
        ),
        "bf16_flops": matmul_ceiling(
            s["matmul"], s["matmul"], s["matmul"], device, torch.bfloat16, 10
        ),
    }
