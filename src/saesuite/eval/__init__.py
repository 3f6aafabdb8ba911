"""Evaluation: metrics, the per-layer evaluate job, tables, transfer, plots."""
