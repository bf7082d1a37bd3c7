"""Recovery after a crash (issue #15): `make run` killed with SIGKILL, then `make run` again, finishes the
study with the same numbers as an uninterrupted run, with no `snakemake --unlock` or
`--rerun-incomplete` typed by hand; and two `make run` in one folder do not run at once."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (MAKE, REPO, RUN_LOCK, assert_same_numbers, fresh_copy, incomplete, interrupted_training,
                      kill_when, make_env, make_run, start, unrecorded_result)

pytestmark = pytest.mark.skipif(MAKE is None, reason="make not installed")


def assert_stale_lock(folder: Path):
    locks = folder / ".snakemake" / "locks"
    assert locks.is_dir() and any(locks.iterdir()), "the killed Snakemake left no lock: the crash tests nothing"
    assert not (folder / "results" / "table1.csv").exists(), "the study got to its tables before the kill"


def refuses_at_once(folder: Path, holder: str) -> str:
    """`make run` in ``folder`` while ``holder`` holds the run lock: it must stop at once, naming the lock."""
    begin = time.perf_counter()
    second = subprocess.run(make_run(folder), env=make_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - begin
    message = second.stdout + second.stderr
    assert second.returncode != 0, message[-3000:]
    assert str(RUN_LOCK) in message and "another make run" in message and f"pid {holder}" in message, message
    assert "bin/snakemake" not in message, message  # it stopped before `snakemake --unlock`
    assert elapsed < 20, f"the second make run took {elapsed:.1f} s to refuse"
    return message


def test_second_make_run_in_one_folder_stops_at_once_naming_the_lock(tmp_path):
    # Another `make run` (here: a process holding its lock, as `make run` does for its whole length) is
    # working in the folder: a second one must not start Snakemake, it stops within seconds and says why.
    shutil.copy(REPO / "Makefile", tmp_path)
    (tmp_path / ".snakemake").mkdir()
    with open(tmp_path / RUN_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242")
        lock.flush()
        refuses_at_once(tmp_path, "4242")
        assert sorted(p.name for p in (tmp_path / ".snakemake").iterdir()) == ["make-run.lock"]
        assert not (tmp_path / "results").exists()
        assert (tmp_path / RUN_LOCK).read_text() == "4242"  # the holder's record left as it was


def test_make_run_after_sigkill_finishes_the_study_with_the_same_numbers(tmp_path, smoke_study):
    # The crash of issue #15 item 5, twice: `make run` SIGKILLed (make, Snakemake and every job at once)
    # (1) while a training run is between its checkpoint and its result, and (2) just after a run wrote
    # result.json, before Snakemake recorded the job as finished. Each leaves Snakemake's lock behind;
    # (2) also leaves an existing output marked incomplete. A plain `make run` must then finish the study,
    # and the tables' deterministic columns must equal those of the uninterrupted `smoke_study`.
    folder = fresh_copy(tmp_path / "clone")
    log = tmp_path / "make-run.log"

    first = start(folder, log)
    deadline = time.monotonic() + 120
    while not ((folder / RUN_LOCK).exists() and (folder / RUN_LOCK).read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)
    # While the first runs (and holds the lock), a second `make run` stops at once, naming the lock.
    refuses_at_once(folder, (folder / RUN_LOCK).read_text().strip())
    killed_in = kill_when(first, folder, lambda: interrupted_training(folder), "training run with a checkpoint", log)
    assert_stale_lock(folder)
    # metrics.jsonl's line for step 1 (its time and tokens/s are this attempt's): kept by a resume, rewritten
    # by a run that starts over.
    first_lines = {run: (run / "metrics.jsonl").read_text().splitlines()[0] for run in killed_in
                   if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()}
    assert first_lines, f"no metrics line in {killed_in} at the kill"

    second = start(folder, log)
    unrecorded = kill_when(second, folder, lambda: unrecorded_result(folder), "result.json marked incomplete", log)
    assert_stale_lock(folder)
    assert set(unrecorded) <= incomplete(folder)

    begin = time.perf_counter()
    third = subprocess.run(make_run(folder), env=make_env(), capture_output=True, text=True, timeout=1800)
    message = third.stdout + third.stderr
    assert third.returncode == 0, (f"killed in {[run.name for run in killed_in]}, then {unrecorded}; the run "
                                   f"after the crash failed:\n{message[-5000:]}")
    print(f"killed (1) in training {[run.name for run in killed_in]}, (2) with {unrecorded} unrecorded; "
          f"make run after the crash: {time.perf_counter() - begin:.0f} s")
    assert not (folder / ".snakemake" / "locks").exists() or not any((folder / ".snakemake" / "locks").iterdir())
    assert (folder / "results" / "report.html").exists()
    for run, line in first_lines.items():  # each killed training run resumed from its checkpoint
        assert (run / "result.json").exists(), run
        assert (run / "metrics.jsonl").read_text().splitlines()[0] == line, f"{run.name} started over"

    assert_same_numbers(folder, smoke_study)
