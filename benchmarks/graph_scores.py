"""circuit-tracer's replacement and completeness scores of one prompt's attribution
graph (issue 37, check (c)), per dictionary set of a run's releases: a CLT folder
(either layout) or a per-layer transcoder set, each through circuit-tracer's own
`attribute` and `compute_graph_scores`. Run in circuit-tracer's own environment:

    PYTHONPATH=src .venv-circuit-tracer/bin/python benchmarks/graph_scores.py \\
        --model-dir MODEL_FOLDER clt:RELEASE/clt/NAME RELEASE:SET_NAME ...

The replacement score is the share of the logit nodes' influence that does not pass
through an error node; the completeness score the same per node, averaged by
influence (circuit-tracer's definitions).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

DEFAULT_PROMPT = "The capital of the state containing Dallas is"


def scores(model_dir: str, spec: str, prompt: str, max_feature_nodes: int | None):
    """(set, features, replacement, completeness, seconds) of one set's graph."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores

    from saesuite.release.circuit_tracer import replacement_model

    release, name = spec.rsplit(":", 1)
    if release == "clt":
        release, name = name, None
    start = time.perf_counter()
    model = replacement_model(release, name, model_dir=model_dir)
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids[0]
    graph = attribute(ids, model, max_n_logits=5, batch_size=64,
                      max_feature_nodes=max_feature_nodes)  # fmt: skip
    replacement, completeness = compute_graph_scores(graph)
    seconds = time.perf_counter() - start
    n = len(graph.selected_features)
    return name or release, n, float(replacement), float(completeness), seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", help="clt:FOLDER or RELEASE:SET_NAME")
    ap.add_argument("--model-dir", required=True, help="the model's local folder")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    a = ap.parse_args(argv)
    print(f"{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; prompt {a.prompt!r}")  # fmt: skip
    print("\n| set | feature nodes | replacement score | completeness score | s |")
    print("|---|---:|---:|---:|---:|")
    for spec in a.sets:
        name, n, rep, comp, s = scores(a.model_dir, spec, a.prompt,
                                       a.max_feature_nodes)  # fmt: skip
        print(f"| {name} | {n} | {rep:.4f} | {comp:.4f} | {s:.0f} |")


if __name__ == "__main__":
    main()
