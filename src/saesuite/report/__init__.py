"""The report: figures and tables for `snakemake --report`."""
