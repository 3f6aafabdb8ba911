"""Sizes: bytes per storage dtype (the one table; the torch side maps the same names
with `getattr(torch, name)`) and a dictionary's weight bytes (torch-free)."""

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dictionary_bytes(d_in: int, width: int, dtype: str = "float32") -> int:
    """W_enc and W_dec of a dictionary (the biases and thresholds are negligible)."""
    return 2 * d_in * width * BYTES[dtype]
