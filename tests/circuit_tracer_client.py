"""Run by circuit-tracer's own Python (helpers.run_circuit_tracer): load
each named transcoder set of a release with saesuite.release.circuit_tracer, compute
an attribution graph for the token ids given, and write what the test compares
with saesuite's own computations: the graph's logits and token vectors, each
layer's transcoder prediction on the activations given, the graph's sizes.

A CLT folder (saesuite.release.clt_layout, either layout) is named clt:FOLDER;
its prediction of every layer's MLP output at once is written as "clt" (n_layers,
n_pos, d_model).

usage: circuit_tracer_client.py INPUTS.safetensors OUT_DIR MODEL_DIR RELEASE:SET ..."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from circuit_tracer import attribute
from safetensors.torch import load_file, save_file

from saesuite.release.circuit_tracer import clt, replacement_model, transcoder_set


def main(inputs: str, out_dir: str, model_dir: str, *sets: str) -> None:
    given = load_file(inputs)
    ids = given.pop("input_ids")
    out = Path(out_dir)
    for n, spec in enumerate(sets):
        release, name = spec.rsplit(":", 1)
        if release == "clt":
            release, name = name, None
        start = time.perf_counter()
        model = replacement_model(release, name, model_dir=model_dir)
        graph = attribute(ids, model, max_n_logits=3, batch_size=64)
        seconds = time.perf_counter() - start
        ctx = model.setup_attribution(ids)
        tensors = {
            "logits": ctx.logits.reshape(len(ids), -1).float(),
            "token_vectors": ctx.token_vectors.float(),
            "adjacency": graph.adjacency_matrix.float(),
        }
        # the set the replacement model holds, read again outside nnsight's wrapper
        n_layers = model.cfg.n_layers
        xs = [given[f"layer_{layer}.mlp_in"] for layer in range(n_layers)]
        if name is None:
            transcoders = clt(release)
            with torch.no_grad():
                tensors["clt"] = transcoders(torch.stack(xs)).float()
        else:
            transcoders = transcoder_set(release, name)
            with torch.no_grad():
                for layer, x in enumerate(xs):
                    tensors[f"layer_{layer}"] = transcoders[layer](x).float()
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(out / f"{n}.safetensors"),
        )
        (out / f"{n}.json").write_text(
            json.dumps(
                {
                    "set": name or release,
                    "skip": bool(transcoders.skip_connection),
                    "n_features": len(graph.selected_features),
                    "n_layers": model.cfg.n_layers,
                    "n_pos": graph.n_pos,
                    "logit_token_ids": [int(t) for t in graph.logit_token_ids],
                    "seconds": seconds,
                }
            )
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
