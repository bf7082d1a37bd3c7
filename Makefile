# The two commands of the README: `make run` (the study) and `make test`.
# PRESET is one of smoke, cpu, paper (config/README.md); CORES is passed to snakemake; GPUS is the
# machine's GPU count (what nvidia-smi lists; 0 without one); MIRROR is a local copy of the corpora
# (config key data_mirror), by default ../shared/data where that folder exists, else none (download).
VENV   ?= .venv
PYTHON ?= python3
PRESET ?= cpu
CORES  ?= 2
GPUS   ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
MIRROR ?= $(abspath $(wildcard ../shared/data))

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.PHONY: run test bench gpu-bench paper-memory paper-runtime clean

# --keep-going: one failed run (its log says why) does not stop the others; the tables then wait for it.
run: $(VENV)/.installed
	$(VENV)/bin/snakemake all --keep-going --cores $(CORES) --resources gpu=$(or $(GPUS),0) \
		--config preset=$(PRESET) $(if $(MIRROR),data_mirror=$(MIRROR))
	$(VENV)/bin/snakemake --report results/report.html --config preset=$(PRESET) $(if $(MIRROR),data_mirror=$(MIRROR))

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench solvers --preset $(PRESET)

# One-shot GPU measurement (about 8 minutes on one H100/H200); commit its folder afterwards.
GPU_OUT ?= results/reference/$(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '-' || echo gpu)
gpu-bench: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench.gpu --out "$(GPU_OUT)"

# The first pip line prefers a torch wheel already provided locally (a site wheelhouse via pip's
# find-links), so a CPU-only machine does not pull a multi-GB CUDA build; without one, it fails
# harmlessly and the next line resolves torch normally.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --no-index --no-deps 'torch>=2.2' || true
	$(VENV)/bin/pip install -e '.[test,bench,slurm]'
	touch $@

# Removes everything the workflow generated; results/README.md and results/reference/ are kept.
clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md ! -name reference -exec rm -rf {} +
	rm -rf .snakemake .pytest_cache

# Tables 2-3's memory columns at the paper's exact widths on this machine (about an hour on 2 cores);
# commit results/reference/cpu/memory_paper.csv and README.md afterwards.
paper-memory: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench.paper_memory --out results/reference/cpu/memory_paper.csv --readme

# Table 4's transformer pair at the paper's exact widths on this machine's CPU (minutes at batch 2);
# commit results/reference/cpu/runtime_paper.csv (and .md) afterwards: Table 4 reads it where present.
paper-runtime: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench.runtime --paper-widths --out results/reference/cpu/runtime_paper.csv
