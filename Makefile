# The two commands of the README: `make run` (the embedded default) and `make test`.
# Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# torch is installed first and pinned: 2.13.0 is a CPU build on this machine's disk,
# while an unpinned torch would download a multi-GB CUDA build. On another CPU-only
# machine: make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: run test dry-run lint format bench clean-results

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/snakemake --profile config/profiles/local --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

dry-run: $(STAMP)
	$(BIN)/snakemake --profile config/profiles/local -n

lint: $(STAMP)
	$(BIN)/lint-imports pyproject.toml
	$(BIN)/ruff check src tests benchmarks rules/scripts
	$(BIN)/ruff format --check src tests benchmarks rules/scripts
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks rules/scripts
	$(BIN)/ruff format src tests benchmarks rules/scripts
	$(BIN)/snakefmt Snakefile rules

bench: $(STAMP)
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/evaluate.py
