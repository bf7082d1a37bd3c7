"""Project-level properties: the two install routes agree, CI runs what the README says, and the
workflow runs end to end and rejects a bad config before doing any work."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# The `snakemake` helper and the session-wide `smoke_study` fixture live in tests/conftest.py.
from conftest import REPO, SNAKEMAKE, snakemake

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


def test_smoke_study_writes_every_table_with_the_documented_columns(smoke_study):
    # Every table the paper has, with every documented column, one row per model, and a measured
    # number (not a blank) wherever the study measures one.
    import pandas as pd

    from deq.report.tables import MODEL_COLUMNS, RUNTIME_COLUMNS
    from deq.rows.configs import COPY_CONFIGS, CONFIGS

    results = smoke_study / "results"
    expected_rows = {1: list(COPY_CONFIGS), 2: [n for n, r in CONFIGS.items() if r.paper_table == 2],
                     3: [n for n, r in CONFIGS.items() if r.paper_table == 3]}
    for number, names in expected_rows.items():
        table = pd.read_csv(results / f"table{number}.csv")
        assert tuple(table.columns) == MODEL_COLUMNS, number
        assert list(table["model"]) == names
        for column in ("params", "nonembedding_params", "value", "peak_memory_mb", "paper_params", "paper_value"):
            assert table[column].notna().all() and (table[column] > 0).all(), (number, column)
        assert (table["preset"] == "smoke").all() and table["device"].notna().all()
        assert table["memory_method"].notna().all()
    for number in (2, 3):
        table = pd.read_csv(results / f"table{number}.csv")
        explicit = table[table["deq_counterpart"].notna()]
        assert len(explicit) >= 1 and explicit["memory_reduction"].notna().all()
        # the committed paper-width measurement, beside the paper's, on every row and pair
        assert (table["paper_width_memory_gb"] > 0).all() and table["paper_width_memory_how"].notna().all()
        assert explicit["paper_width_memory_reduction"].notna().all()
    runtime = pd.read_csv(results / "table4.csv")
    assert tuple(runtime.columns) == RUNTIME_COLUMNS
    # two random-init pairs, the trained one, and the committed paper-width CPU measurement
    assert sorted(runtime["phase"]) == ["infer"] * 4 + ["train"] * 4
    paper_widths = runtime[runtime["weights"].str.startswith("random init, paper widths, batch 2 on a CPU")]
    assert list(paper_widths["deq_model"]) == ["wt103-deq-transformer-medium-adaptive"] * 2
    assert (paper_widths["ratio"] > 1).all()
    assert (runtime["ratio"] > 0).all() and runtime["paper_ratio"].notna().all()
    trained = runtime[runtime["weights"].str.startswith("trained")]
    assert list(trained["deq_model"]) == ["wt103-deq-transformer-small"] * 2
    assert trained["weights"].str.match(r"trained \(3 steps\), DEQ tol [0-9.e-]+: valid ppl").all()
    sweep = pd.read_csv(results / "size_sweep.csv")
    assert len(sweep) == 8 and (sweep.groupby(["family", "size"]).driver.apply(lambda d: "deq" in set(d))).all()
    assert sweep["test_ppl"].gt(0).all() and sweep["train_step_peak_mb"].gt(0).all()
    deq = sweep[sweep["driver"] == "deq"]
    assert deq["ppl_ratio"].notna().all() and deq["memory_reduction"].notna().all()
    markdown = (results / "tables.md").read_text()
    assert all(f"Table {n}" in markdown for n in (1, 2, 3, 4)) and "Paper widths on a CPU: On a CPU time" in markdown
    assert "## Size sweep" in markdown


def test_smoke_study_writes_every_figure_and_the_report(smoke_study):
    from deq.report.figures import FIGURES

    for stem in FIGURES:
        png, pdf = (smoke_study / "results" / "figures" / f"{stem}.{ext}" for ext in ("png", "pdf"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert pdf.read_bytes()[:4] == b"%PDF", stem
    report = (smoke_study / "results" / "report.html").read_text(errors="replace")
    assert len(report) > 100_000 and "fig3_sweep" in report


def test_smoke_study_rerun_does_nothing(smoke_study):
    # Every output is up to date after a complete run: nothing retrains, nothing re-measures.
    result = snakemake(smoke_study, "--cores", "2", "all", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_larger_presets_plan_the_whole_study_offline(tmp_path, preset):
    # A dry run needs no data and no network; it must list every run of the study.
    from deq.study import study

    result = snakemake(tmp_path, "--cores", "8", "all", "--dry-run", preset=preset, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert int(counts["train"]) == len(study(preset)) and int(counts["benchmark"]) == 4, result.stdout[-2000:]


def test_one_table_needs_only_its_own_runs(tmp_path):
    # `snakemake results/table1.csv` is the README's way to build one table: it must not train the
    # language models or run the benchmarks that Tables 2-4 need. At cpu Table 1 trains nothing (its rows
    # are marked not trained) and Table 3 needs the width-128 pair and the memory benchmark only.
    from deq.study import study

    result = snakemake(tmp_path, "--cores", "2", "results/table1.csv", "--dry-run", preset="smoke", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    copy_runs = [name for name, run in study("smoke").items() if run.table == 1]
    assert counts == {"train": str(len(copy_runs)), "table": "1", "total": str(len(copy_runs) + 1)}, counts
    result = snakemake(tmp_path, "--cores", "2", "results/table1.csv", "results/table3.csv", "--dry-run",
                       preset="cpu", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert counts == {"benchmark": "1", "prepare_data": "1", "table": "2", "train": "2", "total": "6"}, counts


def planned_resources(dry_run: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job in a dry run's plan."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run):
        rule, listed = re.match(r"(?:local)?rule (\w+):", block), re.search(r"^\s*resources: (.*)$", block, re.M)
        if rule and listed:
            jobs.append((rule.group(1), dict(item.split("=", 1) for item in listed.group(1).split(", "))))
    return jobs


@pytest.mark.parametrize("use_gpus", ["always", "never"])
def test_slurm_profile_asks_for_the_studys_gpus_or_none(tmp_path, use_gpus):
    # The paper study planned through profiles/slurm with 2 GPUs per run: on a GPU cluster every training
    # job asks SLURM for 2 GPUs (not capped by profiles/default's one-machine count) and every evaluation
    # and benchmark job for 1, all in the gpu partition; on a cluster without GPUs none asks for one (a GPU
    # request there would wait forever). Everything else runs in the cpu partition without GPUs.
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = snakemake(tmp_path, "--workflow-profile", str(REPO / "profiles" / "slurm"), "all", "--dry-run",
                       preset="paper", config=(f"use_gpus={use_gpus}", "gpus_per_run=2"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_resources(result.stdout)
    gpu_rules = {"train": 2, "convergence": 1, "sweep": 1, "runtime_trained": 1, "benchmark": 1}
    assert {rule for rule, _ in jobs} >= set(gpu_rules) | {"prepare_data", "table"}, sorted({r for r, _ in jobs})
    assert sum(rule == "train" for rule, _ in jobs) == 16
    for rule, resources in jobs:
        wanted = gpu_rules.get(rule, 0) if use_gpus == "always" else 0
        assert int(resources.get("gpu", 0)) == wanted, (rule, resources)
        assert resources["slurm_partition"] == ("gpu" if rule in gpu_rules else "cpu"), (rule, resources)
        assert resources["slurm_account"] == "your-account" and "gpu_model" not in resources, (rule, resources)


def test_lint_is_clean(tmp_path):
    result = snakemake(REPO, "--lint", timeout=300)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.parametrize("override, bad", [
    ("preset=bogus", "'bogus'"),
    ("gpus_per_run=0", "0"),
    ("colour=blue", "colour"),
])
def test_bad_config_fails_before_any_job(tmp_path, override, bad):
    # A typo in the config must stop the run at once (well under the two seconds the issue allows on a
    # quiet machine; the bound here is loose for loaded CI runners), naming the bad value, not after
    # hours of work or by silently falling back to a default.
    import time

    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    command = [str(SNAKEMAKE), "--directory", str(tmp_path), "-s", str(REPO / "Snakefile"), "--cores", "1", "all",
               "--config", override]
    start = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, text=True,
                            timeout=120)
    elapsed = time.perf_counter() - start
    message = result.stdout + result.stderr
    assert result.returncode != 0 and bad in message, message[-2000:]
    assert not (tmp_path / "results").exists()
    assert elapsed < 20, f"rejecting a bad config took {elapsed:.1f} s"
    if override.startswith("preset"):
        with open(REPO / "workflow" / "schemas" / "config.schema.yaml") as file:
            allowed = yaml.safe_load(file)["properties"]["preset"]["enum"]
        assert all(repr(name) in message for name in allowed), message
