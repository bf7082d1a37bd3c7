"""Shared by the tests that run the workflow: the `snakemake` helper; the smoke study, run once per
session (tests/test_project.py checks its outputs; tests/test_recovery.py and tests/test_slurm_live.py
compare a crashed and resumed study against it); `make run` in a fresh copy of the checkout, killed at
a chosen moment; and the comparison of two studies' numbers."""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# The offline copy of PTB and WikiText-2 the tests read (they never download): the environment's
# DEQ_DATA_MIRROR, as for a study, else the shared/data folder beside the checkout.
MIRROR = Path(os.environ.get("DEQ_DATA_MIRROR") or REPO.parent / "shared" / "data")


def require_mirror(*datasets: str) -> Path:
    """The mirror, holding ``datasets`` (default: both corpora); else the test is skipped, saying where it
    looked, or under CI (CI=true) fails: a CI without the corpora would pass while testing nothing."""
    missing = [name for name in datasets or ("ptb", "wikitext-2") if not (MIRROR / name).is_dir()]
    if missing:
        message = (f"local corpus mirror {MIRROR} lacks {', '.join(missing)} (set DEQ_DATA_MIRROR to a folder "
                   f"laid out as <mirror>/<dataset>/<files>)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return MIRROR


@pytest.fixture
def mirror() -> Path:
    return require_mirror()


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """No test reaches beyond this machine: resolving a name other than localhost, or connecting to an
    address off the loopback, fails at once naming it (a download a test forgot to stub fails, not waits)."""
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def local(host) -> bool:
        if host in (None, "localhost", ""):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def refuse(what):
        return OSError(f"tests may not use the network: {what} (serve test files on 127.0.0.1)")

    def getaddrinfo(host, *args, **kwargs):
        if not local(host if not isinstance(host, bytes) else host.decode()):
            raise refuse(f"looking up {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded(real):
        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                raise refuse(f"connecting to {address!r}")
            return real(self, address)
        return connect

    with pytest.MonkeyPatch.context() as patch:
        for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            patch.delenv(proxy, raising=False)  # a proxy on 127.0.0.1 would carry a request out
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", guarded(real_connect))
        patch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
        yield


def snakemake(directory: Path, *args: str, preset: str = "smoke", config: tuple[str, ...] = (),
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Snakemake on the checkout's Snakefile in ``directory`` (``config``: more KEY=VALUE settings)."""
    # PYTHONPATH makes the checkout importable by the rule scripts whether or not it is pip-installed.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    command = [str(SNAKEMAKE), "--directory", str(directory), "-s", str(REPO / "Snakefile"), *args,
               "--config", f"preset={preset}", f"data_mirror={MIRROR}", *config]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The README's main command at the smoke scale, then the report, in a fresh folder."""
    require_mirror("ptb")
    folder = tmp_path_factory.mktemp("study")
    # The committed paper-width memory measurement, where a clone has it: Tables 2-3 and memory_bars read it.
    reference = folder / "results" / "reference" / "cpu"
    reference.mkdir(parents=True)
    shutil.copy(REPO / "results" / "reference" / "cpu" / "memory_paper.csv", reference)
    shutil.copy(REPO / "results" / "reference" / "cpu" / "runtime_paper.csv", reference)  # Table 4 reads it too
    result = snakemake(folder, "--cores", "2", "all", timeout=1800)
    logs = sorted((folder / "results" / "logs").rglob("*.log")) if result.returncode else []
    assert result.returncode == 0, result.stderr[-4000:] + "".join(log.read_text()[-1500:] for log in logs)
    report = snakemake(folder, "--report", "results/report.html", timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    return folder


MAKE = shutil.which("make")
VENV = Path(sys.executable).parent.parent  # the environment running the tests: make must not reinstall it
RUN_LOCK = Path(".snakemake") / "make-run.lock"  # the Makefile's RUN_LOCK
TABLES = ("table1.csv", "table2.csv", "table3.csv", "table4.csv", "size_sweep.csv")


def make_run(folder: Path, *variables: str) -> list[str]:
    """The README's `make run` at the smoke preset in ``folder``, on the test's environment and corpora
    (``variables``: more of the Makefile's, such as PROFILE=slurm)."""
    # -o: the environment's install stamp counts as up to date (it is the running one; nothing to install).
    return [MAKE, "-C", str(folder), "-f", str(folder / "Makefile"), "run", "PRESET=smoke", "CORES=2",
            f"VENV={VENV}", f"MIRROR={MIRROR}", *variables, "-o", f"{VENV}/.installed"]


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


def start(folder: Path, log: Path, *variables: str) -> subprocess.Popen:
    # Its own process group (and session), so one killpg reaches make, Snakemake and every local job.
    with open(log, "ab") as out:
        return subprocess.Popen(make_run(folder, *variables), env=make_env(), stdout=out, stderr=subprocess.STDOUT,
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
              timeout: float = 900, freeze_others: Callable[[], Callable[[], object]] = lambda: lambda: None):
    """SIGKILL the whole run at the first moment ``state()`` is true; return its value at that moment.

    The run is frozen (SIGSTOP) while the state is checked a second time, so what it returns is what the
    run was killed in; if the state went by in between, the run continues and the wait goes on. Processes
    of the run outside its process group (SLURM's jobs) are frozen by ``freeze_others``, which returns how
    to thaw them; they stay frozen after the kill. It returns once the killed processes have let go of
    ``folder``'s run lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the study ended (exit {process.returncode}) before {what}:\n"
                        + log.read_text(errors="replace")[-3000:])
        if state():
            os.killpg(process.pid, signal.SIGSTOP)
            thaw_others = freeze_others()
            time.sleep(0.2)  # every process of the group has stopped
            found = state()
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                wait_until_released(folder, process.pid)
                return found
            thaw_others()
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

def assert_same_numbers(folder: Path, reference: Path):
    """The tables of the study in ``folder`` equal those of ``reference`` in every number that does not
    depend on the machine's load, and have a measurement (time, memory) wherever ``reference`` has one."""
    import pandas as pd

    # Parameter counts, losses and perplexities, steps, token counts, model and run names (not times,
    # memory peaks or the ratios made of them).
    exact = {"table": ["model", "dataset", "params", "nonembedding_params", "metric", "value", "test_tokens", "steps",
                       "deq_counterpart", "solver_code", "preset"],
             "table4": ["weights", "deq_model", "explicit_model", "phase", "paper_ratio", "preset", "tokens"],
             "size_sweep": ["family", "size", "driver", "model", "run", "dataset", "params", "nonembedding_params",
                            "steps", "valid_ppl", "test_ppl", "test_tokens", "ppl_ratio", "preset"]}
    for name in TABLES:
        columns = exact.get(name.removesuffix(".csv"), exact["table"])
        ours = pd.read_csv(folder / "results" / name)[columns]
        theirs = pd.read_csv(reference / "results" / name)[columns]
        pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-9, obj=name)
        ours, theirs = pd.read_csv(folder / "results" / name), pd.read_csv(reference / "results" / name)
        assert list(ours.columns) == list(theirs.columns), name
        pd.testing.assert_frame_equal(ours.isna(), theirs.isna(), obj=f"{name}: the empty cells")
