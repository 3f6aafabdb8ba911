"""saesuite: Gemma-Scope-style suites of sparse dictionaries as a Snakemake workflow.

Layers, bottom to top (each imports only those below it; checked by import-linter):
spec → cluster → data → sae → eval → release → report → cli. `spec` and `cluster`
never import torch, so planning a suite does not either.
"""
