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
.PHONY: run locked-run test bench gpu-bench paper-memory paper-runtime clean

# --keep-going: one failed run (its log says why) does not stop the others; the tables then wait for it.
# After a crash (SIGKILL, power loss) `make run` simply finishes the study: it holds RUN_LOCK for the
# whole run, so no other `make run` works in this folder at once (a second one stops at once, naming
# the lock), and under it clears the lock Snakemake left behind (`snakemake --unlock`) before the run;
# the profile's rerun-incomplete reruns the killed jobs, and training resumes from its checkpoint.
# Not covered: a `snakemake` started by hand in this folder alongside a `make run` (it does not take
# RUN_LOCK, and its Snakemake lock would be cleared): run one or the other.
RUN_LOCK := .snakemake/make-run.lock
CONFIG    = --config preset=$(PRESET) $(if $(MIRROR),data_mirror=$(MIRROR))
run: $(VENV)/.installed
	$(VENV)/bin/python -c "$$HOLD_LOCK" $(RUN_LOCK) $(MAKE) --no-print-directory locked-run

# `make run`'s steps, run only under RUN_LOCK (do not call it directly).
locked-run:
	$(VENV)/bin/snakemake --unlock $(CONFIG)
	$(VENV)/bin/snakemake all --keep-going --cores $(CORES) --resources gpu=$(or $(GPUS),0) $(CONFIG)
	$(VENV)/bin/snakemake --report results/report.html $(CONFIG)

# HOLD_LOCK LOCKFILE COMMAND...: take an exclusive flock on LOCKFILE (or fail at once naming it and
# its holder's pid), then become COMMAND, which keeps the lock (and passes it to its children) until
# it and they end; the kernel drops it when they die, so a crash never leaves this lock stale.
define HOLD_LOCK
import fcntl, os, sys
path, command = sys.argv[1], sys.argv[2:]
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    sys.exit(f"make run: another make run (pid {holder}) or a process it started is still running in this "
             f"folder: {path} is locked; wait for it to finish or stop it")
os.ftruncate(fd, 0)
os.write(fd, str(os.getpid()).encode())
os.set_inheritable(fd, True)
os.execvp(command[0], command)
endef
export HOLD_LOCK

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
