"""Shared by the tests that run the workflow: the `snakemake` helper and the smoke study, run once per
session (tests/test_project.py checks its outputs; tests/test_recovery.py compares a crashed and
resumed study against it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
MIRROR = REPO.parent / "shared" / "data"  # the offline copy of PTB and WikiText-2 (tests never download)


def snakemake(directory: Path, *args: str, preset: str = "smoke", timeout: float = 600) -> subprocess.CompletedProcess:
    # PYTHONPATH makes the checkout importable by the rule scripts whether or not it is pip-installed.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    command = [str(SNAKEMAKE), "--directory", str(directory), "-s", str(REPO / "Snakefile"), *args,
               "--config", f"preset={preset}", f"data_mirror={MIRROR}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The README's main command at the smoke scale, then the report, in a fresh folder."""
    if not (MIRROR / "ptb").is_dir():
        pytest.skip(f"local corpus mirror {MIRROR} (PTB) not present")
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
