"""The cluster path on a live SLURM (issue #17): `make run PROFILE=slurm` on a one-node cluster started
on this machine (tests/slurm/local_cluster.sh: SLURM 22.05 from Debian's packages, partitions cpu and
gpu, no GPUs, no accounting database), its submitting Snakemake SIGKILLed while a training job is
between its checkpoint and its result, then the same command again: it must finish the smoke study with
the numbers of the local smoke study.

Runs where SLURM is installed (root needed to start its daemons); `make test-slurm` installs it first and
runs only this file; CI installs it before `make test` (.ci/run). Elsewhere it is skipped, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (MAKE, REPO, assert_same_numbers, fresh_copy, interrupted_training, kill_when, make_env,
                      make_run, start)

SCRIPT = REPO / "tests" / "slurm" / "local_cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "munged")
REQUIRED = os.environ.get("DEQ_TEST_SLURM") == "1"  # make test-slurm: a missing SLURM is a failure


def why_not() -> str | None:
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing): `make test-slurm` installs it and runs this test"
    if os.geteuid() != 0:
        return "starting SLURM's daemons needs root"
    if MAKE is None:
        return "make not installed"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM for this module's tests, stopped afterwards."""
    reason = why_not()
    if reason:
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    yield folder
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, text=True, timeout=120)


# The profile as a user has it, with two changes for a test: Snakemake polls the queue 5 s after a
# submission instead of 40 s (the smoke study's jobs take seconds, and the default wait would be most of the
# test), and training uses one thread, as in the local smoke study it is compared with: the thread count
# changes a DEQ's numbers (copy-deq-transformer's smoke test loss: 2.156 with 1 thread, 2.026 with the
# profile's 8), and the comparison is of numbers.
SLURM_RUN = ("PROFILE=slurm", "SNAKEMAKE_ARGS=--slurm-init-seconds-before-status-checks 5 --set-threads train=1")


def submitted(text: str) -> int:
    return len(re.findall(r"has been submitted with SLURM jobid", text))


def suspend_jobs(folder: Path):
    """Suspend the study's SLURM jobs (`scontrol suspend`: SIGSTOP) and return how to resume them: they run
    outside the test's process group, so freezing make and Snakemake does not hold them still. Pending
    jobs refuse to be suspended, which is fine: they are not running."""
    from deq.engine.slurm import queued_jobs

    jobs = queued_jobs(str(folder))
    subprocess.run(["scontrol", "suspend", *jobs], capture_output=True)
    return lambda: subprocess.run(["scontrol", "resume", *jobs], capture_output=True)


def test_make_run_on_slurm_after_a_killed_submitter_gives_the_local_numbers(cluster, smoke_study, tmp_path):
    from deq.engine.slurm import queued_jobs

    folder = fresh_copy(tmp_path / "clone")
    log = tmp_path / "make-run.log"
    begin = time.perf_counter()
    first = start(folder, log, *SLURM_RUN)
    # SIGKILL make and the submitting Snakemake the moment a training job is between its checkpoint and its
    # result; that job stays suspended, as one the crash interrupted would be, until the rerun cancels it.
    killed_in = kill_when(first, folder, lambda: interrupted_training(folder), "a training job with a checkpoint",
                          log, freeze_others=lambda: suspend_jobs(folder))
    killed_after = time.perf_counter() - begin
    orphans = queued_jobs(str(folder))
    first_lines = {run: (run / "metrics.jsonl").read_text().splitlines()[0] for run in killed_in
                   if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()}
    assert first_lines, f"no metrics line in {killed_in} at the kill"

    begin = time.perf_counter()
    second = subprocess.run(make_run(folder, *SLURM_RUN), env=make_env(), capture_output=True, text=True,
                            timeout=1800)
    rerun = second.stdout + second.stderr
    assert second.returncode == 0, f"killed in {[run.name for run in killed_in]}; the rerun failed:\n{rerun[-5000:]}"
    rerun_s = time.perf_counter() - begin
    first_log = log.read_text(errors="replace")
    assert "--slurm-status-command squeue" in first_log, "a cluster without accounting must be polled with squeue"
    assert submitted(first_log) > 0 and submitted(rerun) > 0, "the jobs did not go through SLURM"
    assert orphans, "the interrupted training jobs were not in the queue at the kill"
    # the jobs the killed run left queued are cancelled before anything is resubmitted
    assert f"cancelling {len(orphans)} job(s)" in rerun, rerun[-3000:]
    assert queued_jobs(str(folder)) == [], "jobs of the study still queued after it finished"
    print(f"SLURM smoke study: {submitted(first_log)} jobs submitted before the kill at {killed_after:.0f} s "
          f"(training {[run.name for run in killed_in]} interrupted, {len(orphans)} jobs left queued); the "
          f"rerun cancelled them, submitted {submitted(rerun)} jobs and finished in {rerun_s:.0f} s")

    for run, line in first_lines.items():  # each killed training run resumed from its checkpoint
        assert (run / "result.json").exists(), run
        assert (run / "metrics.jsonl").read_text().splitlines()[0] == line, f"{run.name} started over"
    assert (folder / "results" / "report.html").exists()
    assert_same_numbers(folder, smoke_study)
