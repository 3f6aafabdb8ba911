"""Run by circuit-tracer's own Python (helpers.run_circuit_tracer): load
each named transcoder set of a release with saesuite.release.circuit_tracer, compute
an attribution graph for the token ids given, and write what the test compares
with saesuite's own computations: the graph's logits and token vectors, each
layer's transcoder prediction on the activations given, the graph's sizes.

A CLT folder (saesuite.release.clt_layout, either layout) is named clt:FOLDER;
its prediction of every layer's MLP output at once is written as "clt" (n_layers,
n_pos, d_model). Given "loss_ids" (N, T) and "loss_keep" (N, T) too, it also writes
"replacement_ce" (N, T − 1): the next-token loss of circuit-tracer's replacement
model with its error nodes removed, every MLP output the CLT's prediction from the
pass's own MLP inputs (read and written at circuit-tracer's own hook locations) on
the tokens of loss_keep, the model's own elsewhere.

usage: circuit_tracer_client.py INPUTS.safetensors OUT_DIR MODEL_DIR RELEASE:SET ..."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from circuit_tracer import attribute
from circuit_tracer.graph import compute_graph_scores
from nnsight import save
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
            # the nodes: feature node k is active_features[selected_features[k]]
            # (layer, position, latent) with activation_values[…]; then the errors
            # (layer × position), the tokens (position) and the logits
            "active_features": graph.active_features.long(),
            "selected_features": graph.selected_features.long(),
            "activation_values": graph.activation_values.float(),
            "logit_token_ids": torch.as_tensor(graph.logit_token_ids).long(),
        }
        # the set the replacement model holds, read again outside nnsight's wrapper
        n_layers = model.cfg.n_layers
        xs = [given[f"layer_{layer}.mlp_in"] for layer in range(n_layers)]
        if name is None:
            transcoders = clt(release)
            with torch.no_grad():
                tensors["clt"] = transcoders(torch.stack(xs)).float()
            if "loss_ids" in given:
                tensors["replacement_ce"] = replacement_ce(
                    model, given["loss_ids"], given["loss_keep"].bool()
                )
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
                    # circuit-tracer's own: the share of the logits' influence that
                    # reaches them not through error nodes, and of each node's input
                    "scores": dict(
                        zip(
                            ("replacement", "completeness"),
                            map(float, compute_graph_scores(graph)),
                        )
                    ),
                }
            )
        )


def replacement_ce(model, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (N, T − 1) of the replacement model without error
    nodes: at each layer j, in one traced pass, the CLT's layer-j latents from the
    feature input location, and Σ_{i≤j} f_i W_dec,i→j + b_dec,j set as the feature
    output location's value where `keep`."""
    tc = model.transcoders
    with torch.no_grad(), model.trace(ids.long()):
        feats = []
        for j in range(model.cfg.n_layers):
            x = model.get_feature_input_loc(j).output
            feats.append(tc.encode_layer(x, j))
            y = tc.b_dec[j] + sum(f @ tc._get_decoder_vectors(i)[:, j - i]
                                  for i, f in enumerate(feats))  # fmt: skip
            out = model.get_feature_output_loc(j)
            out.output = torch.where(keep[..., None], y.to(out.output.dtype),
                                     out.output)  # fmt: skip
        logits = save(model.output.logits)
    logits = logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().long(), reduction="none"
    ).view(len(ids), -1)


if __name__ == "__main__":
    main(*sys.argv[1:])
