"""Recovery after a crash (issue #15): `make run` killed with SIGKILL, then `make run` again, finishes the
study with the same numbers as an uninterrupted run, with no `snakemake --unlock` or
`--rerun-incomplete` typed by hand; and two `make run` in one folder do not run at once."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import MIRROR, REPO

MAKE = shutil.which("make")
VENV = Path(sys.executable).parent.parent  # the environment running the tests: make must not reinstall it
RUN_LOCK = Path(".snakemake") / "make-run.lock"  # the Makefile's RUN_LOCK
TABLES = ("table1.csv", "table2.csv", "table3.csv", "table4.csv", "size_sweep.csv")

pytestmark = pytest.mark.skipif(MAKE is None, reason="make not installed")


def make_run(folder: Path) -> list[str]:
    """The README's `make run` at the smoke preset in ``folder``, on the test's environment and corpora."""
    # -o: the environment's install stamp counts as up to date (it is the running one; nothing to install).
    return [MAKE, "-C", str(folder), "-f", str(folder / "Makefile"), "run", "PRESET=smoke", "CORES=2",
            f"VENV={VENV}", f"MIRROR={MIRROR}", "-o", f"{VENV}/.installed"]


def make_env() -> dict[str, str]:
    # Not an enclosing `make test`'s flags and variables; the checkout importable as in tests/conftest.py.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def fresh_copy(folder: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore) copied to ``folder``: a fresh clone
    of the working tree, without .snakemake/, results of earlier runs or .venv/."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():  # not one deleted in the working tree
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    return folder


def start(folder: Path, log: Path) -> subprocess.Popen:
    # Its own process group (and session), so one killpg reaches make, Snakemake and every job.
    with open(log, "ab") as out:
        return subprocess.Popen(make_run(folder), env=make_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def incomplete(folder: Path) -> set[str]:
    """The outputs Snakemake has marked incomplete (jobs started, not recorded as finished): the files under
    .snakemake/incomplete/ are named by the output's path in urlsafe base64 (split into folders when long)."""
    root = folder / ".snakemake" / "incomplete"
    marked = set()
    for marker in root.rglob("*") if root.is_dir() else ():
        if marker.is_file():
            name = "".join(part.removeprefix("@") for part in marker.relative_to(root).parts)
            try:
                marked.add(base64.urlsafe_b64decode(name).decode())
            except ValueError:
                pass
    return marked


def kill_when(process: subprocess.Popen, folder: Path, state: Callable[[], object], what: str, log: Path,
              timeout: float = 900):
    """SIGKILL the whole run at the first moment ``state()`` is true; return its value at that moment.

    The run is frozen (SIGSTOP) while the state is checked a second time, so what it returns is what the
    run was killed in; if the state went by in between, the run continues and the wait goes on. It returns
    once the killed processes have let go of ``folder``'s run lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the study ended (exit {process.returncode}) before {what}:\n"
                        + log.read_text(errors="replace")[-3000:])
        if state():
            os.killpg(process.pid, signal.SIGSTOP)
            time.sleep(0.2)  # every process of the group has stopped
            found = state()
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                wait_until_released(folder, process.pid)
                return found
            os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    pytest.fail(f"no {what} within {timeout:.0f} s")


def wait_until_released(folder: Path, group: int, timeout: float = 60):
    """Until the killed run's processes let go of the run lock: make exits first, and a job's process may take
    a moment longer to die (a straggler that outlived the SIGKILL would hold it: the test says so)."""
    deadline = time.monotonic() + timeout
    with open(folder / RUN_LOCK, "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    left = subprocess.run(["ps", "-o", "pid,stat,args", "-s", str(group)], capture_output=True,
                                          text=True)
                    pytest.fail(f"the killed run's lock still held after {timeout:.0f} s:\n{left.stdout}")
                time.sleep(0.05)
            else:
                fcntl.flock(lock, fcntl.LOCK_UN)
                return


def interrupted_training(folder: Path) -> list[Path]:
    """Run folders with a checkpoint and no result yet: training killed here resumes there."""
    runs = folder / "results" / "runs" / "smoke"
    return [run for run in runs.glob("*") if (run / "checkpoint.pt").exists() and not (run / "result.json").exists()]


def unrecorded_result(folder: Path) -> list[str]:
    """Finished training runs Snakemake has not recorded yet: result.json written, still marked incomplete.
    A crash here needs rerun-incomplete (Snakemake refuses an existing output marked incomplete)."""
    return [path for path in incomplete(folder) if path.endswith("/result.json") and (folder / path).exists()]


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
    import pandas as pd

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

    # Numbers that do not depend on the machine's load: parameter counts, losses and perplexities, steps,
    # token counts, model and run names (not times, memory peaks or the ratios made of them).
    exact = {"table": ["model", "dataset", "params", "nonembedding_params", "metric", "value", "test_tokens", "steps",
                       "deq_counterpart", "solver_code", "preset"],
             "table4": ["weights", "deq_model", "explicit_model", "phase", "paper_ratio", "preset", "tokens"],
             "size_sweep": ["family", "size", "driver", "model", "run", "dataset", "params", "nonembedding_params",
                            "steps", "valid_ppl", "test_ppl", "test_tokens", "ppl_ratio", "preset"]}
    for name in TABLES:
        columns = exact.get(name.removesuffix(".csv"), exact["table"])
        resumed = pd.read_csv(folder / "results" / name)[columns]
        reference = pd.read_csv(smoke_study / "results" / name)[columns]
        pd.testing.assert_frame_equal(resumed, reference, check_exact=False, rtol=1e-9, obj=name)
        # and every measurement (times, memory) is there wherever the uninterrupted study has one
        resumed, reference = pd.read_csv(folder / "results" / name), pd.read_csv(smoke_study / "results" / name)
        assert list(resumed.columns) == list(reference.columns), name
        pd.testing.assert_frame_equal(resumed.isna(), reference.isna(), obj=f"{name}: the empty cells")
