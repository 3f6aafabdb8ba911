"""Sizes: bytes per storage dtype (the one table; the torch side maps the same names
with `getattr(torch, name)`), a dictionary's weight bytes and the dashboards' logit
block (torch-free: resources sizes jobs with them)."""

# (float64: only the evaluation's KL sums, never a stored tensor)
BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
# the dashboards' logit effects: one (latents, vocabulary) float32 block at once
LOGIT_BLOCK_BYTES = 2**30
# evaluation (saesuite.eval.passes): the work tensors of encoding one SAE's batch, and
# the elements of each float64 block of the KL sums over the vocabulary
ENCODE_BYTES = 2**31
KL_BLOCK = 1 << 24


def dictionary_bytes(
    d_in: int, width: int, dtype: str = "float32", skip: bool = False
) -> int:
    """W_enc and W_dec of a dictionary, and a skip-transcoder's W_skip (d_in × d_in:
    an MLP's input and output are one width); biases and thresholds are negligible."""
    return (2 * d_in * width + (d_in * d_in if skip else 0)) * BYTES[dtype]


def clt_params(n_layers: int, d_in: int, d_out: int, width: int) -> int:
    """A CLT's parameters: L encoders (d_in × width, b_enc, θ), the decoder blocks
    i→j for every i ≤ j (width × d_out each, L(L+1)/2 of them) and L output biases."""
    L = n_layers
    return L * width * (d_in + 2) + width * d_out * L * (L + 1) // 2 + L * d_out
