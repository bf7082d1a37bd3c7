"""Project-level properties: the two install routes agree, CI runs what the README says, and the
workflow runs end to end and rejects a bad config before doing any work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CONDA_TO_PIP = {"pytorch": "torch"}  # every other package has the same name on both


def requirement(spec: str) -> tuple[str, str]:
    """Split ``'name >= 1, < 2'`` into ``('name', '>=1,<2')``, with the pip name and no whitespace."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", spec)
    assert match, f"cannot parse requirement {spec!r}"
    name = match.group(1).lower().replace("_", "-")
    return CONDA_TO_PIP.get(name, name), re.sub(r"\s+", "", match.group(2))


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def conda_dependencies() -> tuple[dict[str, str], dict[str, str]]:
    """The conda packages and the pip sub-list of environment.yml, each as {pip name: specifier}."""
    with open(REPO / "environment.yml") as file:
        entries = yaml.safe_load(file)["dependencies"]
    conda = dict(requirement(e) for e in entries if isinstance(e, str))
    pip = next(e["pip"] for e in entries if isinstance(e, dict))
    for tool in ("python", "pip"):  # the interpreter and installer, not project dependencies
        conda.pop(tool)
    return conda, dict(requirement(e) for e in pip if e != "-e .")


def test_conda_environment_lists_the_runtime_and_test_dependencies():
    # Conda users and pip users must get the same libraries at the same versions, or results and
    # test outcomes depend on the install route. Entries with an environment marker (tomli on
    # Python 3.10) have no conda equivalent and are left out.
    project = pyproject()
    extras = project["optional-dependencies"]
    pip = project["dependencies"] + extras["test"] + extras["slurm"]
    expected = dict(requirement(spec) for spec in pip if ";" not in spec)
    assert conda_dependencies()[0] == expected


def test_conda_pip_section_lists_the_bench_extra():
    # torchdeq is not on conda-forge, so environment.yml installs it with pip; it must be the exact
    # version the benchmark's reference numbers were taken with.
    expected = dict(requirement(spec) for spec in pyproject()["optional-dependencies"]["bench"])
    assert conda_dependencies()[1] == expected


def test_ci_runs_the_readme_test_command():
    # CI must test exactly what a user runs from the README, so a green CI means the README works.
    readme = (REPO / "README.md").read_text()
    quickstart = re.search(r"^#+ *Quickstart\b.*?(?=^#+ |\Z)", readme, re.M | re.S)
    assert quickstart, "README.md has no Quickstart section"
    assert "make test" in [line.strip() for line in quickstart.group(0).splitlines()]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test"
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def run_workflow(directory: Path, preset: str, timeout: float) -> subprocess.CompletedProcess:
    # PYTHONPATH makes the checkout importable by the rule scripts whether or not it is pip-installed.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    command = [str(SNAKEMAKE), "--cores", "2", "--directory", str(directory), "-s", str(REPO / "Snakefile"),
               "all", "--config", f"preset={preset}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_end_to_end_smoke_preset_writes_solver_table(tmp_path):
    # The README's main command at the smoke scale: the whole DAG must run on a CPU and produce
    # one benchmark row per registered solver and phase, so a new solver cannot be left out of the study.
    import pandas as pd

    import deq

    result = run_workflow(tmp_path, "smoke", timeout=1800)
    log = tmp_path / "results" / "logs" / "bench_solvers.log"
    assert result.returncode == 0, result.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    table = pd.read_csv(tmp_path / "results" / "benchmarks" / "solvers.csv")
    ours = table[table["source"] == "deq-harness"]
    for phase in ("forward", "forward_fixed_nfe", "train_step"):
        assert sorted(ours[ours["phase"] == phase]["solver"]) == sorted(deq.SOLVERS), phase
    assert (tmp_path / "results" / "benchmarks" / "solvers.md").stat().st_size > 0


def test_unknown_preset_fails_before_any_job(tmp_path):
    # A typo in the preset must stop the run at once with a message naming the bad value and the
    # allowed ones, not after hours of work or by silently falling back to a default.
    with open(REPO / "workflow" / "schemas" / "config.schema.yaml") as file:
        allowed = yaml.safe_load(file)["properties"]["preset"]["enum"]
    result = run_workflow(tmp_path, "bogus", timeout=120)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'bogus'" in message
    assert all(repr(name) in message for name in allowed), message
    assert not (tmp_path / "results").exists()
