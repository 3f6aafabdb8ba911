"""Storage dtypes by name: the one table of their sizes (torch-free; the torch side
maps the same names with `getattr(torch, name)`)."""

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
