# The two commands of the README: `make run` (the study) and `make test`.
# PRESET is one of smoke, cpu, paper (config/README.md); CORES is passed to snakemake; GPUS is the
# machine's GPU count (what nvidia-smi lists; 0 without one); MIRROR is a local copy of the corpora
# (config key data_mirror), by default ../shared/data where that folder exists, else none (download).
# PROFILE is default (this machine) or slurm (every job submitted to SLURM: profiles/slurm/config.yaml);
# SNAKEMAKE_ARGS are more options for the study's snakemake (e.g. "--set-threads train=2").
VENV   ?= .venv
PYTHON ?= python3
PRESET ?= cpu
PROFILE ?= default
SNAKEMAKE_ARGS ?=
CORES  ?= 2
GPUS   ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
MIRROR ?= $(abspath $(wildcard ../shared/data))

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.PHONY: run locked-run test test-slurm bench gpu-bench paper-memory paper-runtime readme clean

# --keep-going: one failed run (its log says why) does not stop the others; the tables then wait for it.
# After a crash (SIGKILL, power loss) `make run` simply finishes the study: it holds RUN_LOCK for the
# whole run, so no other `make run` works in this folder at once (a second one stops at once, naming
# the lock), and under it clears the lock Snakemake left behind (`snakemake --unlock`) before the run;
# the profile's rerun-incomplete reruns the killed jobs, and training resumes from its checkpoint.
# Not covered: a `snakemake` started by hand in this folder alongside a `make run` (it does not take
# RUN_LOCK, and its Snakemake lock would be cleared): run one or the other.
# With PROFILE=slurm the same holds for the submitting Snakemake (its jobs keep running when it is
# killed): the rerun first cancels the jobs the killed one left in the queue for this folder, then
# resubmits what is unfinished (deq/engine/slurm.py); it asks for job states with squeue where the
# cluster has no accounting database (sacct would never answer, and Snakemake would wait forever).
RUN_LOCK := .snakemake/make-run.lock
CONFIG    = --config preset=$(PRESET) $(if $(MIRROR),data_mirror=$(MIRROR))
PROFILES  = default slurm
run: $(VENV)/.installed
	$(if $(filter $(PROFILE),$(PROFILES)),,$(error PROFILE=$(PROFILE) is not a profile; allowed: $(PROFILES)))
	$(VENV)/bin/python -c "$$HOLD_LOCK" $(RUN_LOCK) $(MAKE) --no-print-directory locked-run

# `make run`'s steps, run only under RUN_LOCK (do not call it directly).
locked-run:
	$(VENV)/bin/snakemake --unlock $(CONFIG)
ifeq ($(PROFILE),slurm)
	$(VENV)/bin/python -m deq.engine.slurm cancel-orphans .
	status=$$($(VENV)/bin/python -m deq.engine.slurm status-command) && \
	$(VENV)/bin/snakemake all --keep-going --workflow-profile profiles/slurm --slurm-status-command $$status $(SNAKEMAKE_ARGS) $(CONFIG)
else
	$(VENV)/bin/snakemake all --keep-going --cores $(CORES) --resources gpu=$(or $(GPUS),0) $(SNAKEMAKE_ARGS) $(CONFIG)
endif
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

# The live SLURM test alone (tests/test_slurm_live.py), after installing SLURM and munge from Debian's
# packages where missing (root); `make test` runs it too wherever SLURM is installed.
test-slurm: $(VENV)/.installed
	bash tests/slurm/local_cluster.sh install
	DEQ_TEST_SLURM=1 $(VENV)/bin/python -m pytest tests/test_slurm_live.py -s

bench: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench solvers --preset $(PRESET)

# One-shot GPU measurement within its time budget (--budget-s, 480 s by default); commit its folder afterwards.
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

# README's Performance section rendered from the committed CSVs of results/reference/cpu/
# (deq/report/readme.py; `python -m deq.report.readme --check` changes nothing and names stale blocks).
# Remeasure one first with `python -m deq.report.readme measure NAME --checkout DIR` (NAME: solvers,
# memory, depth or runtime; DIR a clean checkout of the revision, e.g. a git worktree).
readme: $(VENV)/.installed
	$(VENV)/bin/python -m deq.report.readme

# Tables 2-3's memory columns at the paper's exact widths on this machine (the memory benchmark at the paper
# preset; the CSV's wall_s says how long it took); commit results/reference/cpu/memory_paper.csv and README.md.
paper-memory: $(VENV)/.installed
	$(VENV)/bin/python -m deq.report.readme measure memory --preset paper
	$(VENV)/bin/python -m deq.report.readme

# Table 4's transformer pair at the paper's exact widths on this machine's CPU (at batch 2; wall_s says how long);
# commit results/reference/cpu/runtime_paper.csv (and .md) afterwards: Table 4 reads it where present.
paper-runtime: $(VENV)/.installed
	$(VENV)/bin/python -m deq.bench.runtime --paper-widths --out results/reference/cpu/runtime_paper.csv
