"""The Table 4 runtime benchmark (deq.bench.runtime) and the one-shot GPU script (deq.bench.gpu).

Both run at smoke scale on the CPU here; the numbers mean nothing, the tests check the plumbing and
the invariants every preset must keep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch

from deq.bench.common import columns, scales
from deq.bench.gpu import PARTS
from deq.bench.runtime import ENTRIES, PAIRS, PHASES, RuntimeRow, preset_config, ratios, run_runtime_benchmark

REPO = Path(__file__).resolve().parents[1]
# Installed here but absent from the GPU machine's minimal environment (torch, numpy, pandas,
# matplotlib, nvidia-ml-py, tqdm, pyyaml): importing any of them there would crash the script.
NOT_ON_GPU_MACHINE = ("snakemake", "jsonschema", "torchdeq", "pytest", "psutil", "requests", "pydantic")
BLOCKER = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_ON_GPU_MACHINE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run shared by the tests below: (rows, csv path, markdown path)."""
    out = tmp_path_factory.mktemp("runtime")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two busy OpenMP threads per process thrash a shared 2-core box
    try:
        rows = [columns(r) for r in run_runtime_benchmark("smoke", out / "runtime.csv", out / "runtime.md")]
    finally:
        torch.set_num_threads(threads)
    return rows, out / "runtime.csv", out / "runtime.md"  # the CSV's records


def by_key(rows):
    return {(r["pair"], r["entry"], r["phase"]): r for r in rows}


def run_gpu_script(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m deq.bench.gpu`` as a plain subprocess from the repository root, with the packages the
    GPU machine lacks made unimportable."""
    site = out.parent / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "deq.bench.gpu", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_every_pair_has_every_entry_and_phase(smoke):
    # Table 4 has two pairs, each timed in training and inference; the goals need the DEQ and the
    # explicit model side by side, and the matched entry is the fairness check.
    rows, _, _ = smoke
    assert set(by_key(rows)) == {(p, e, ph) for p in PAIRS for e in ENTRIES for ph in PHASES}


def test_step_times_are_positive_and_quartiles_ordered(smoke):
    # A median is a time (> 0) and must lie inside its own interquartile range.
    rows, _, _ = smoke
    for r in rows:
        assert 0 < r["step_ms_q1"] <= r["step_ms"] <= r["step_ms_q3"], r


def test_paired_ratio_divides_each_round_by_the_same_rounds_explicit_step():
    # Hand-made walls (seconds) where the two ratios differ: per round 3/1, 2/2, 12/4 = 3, 1, 3, so the
    # paired ratio is their median 3 (inclusive quartiles of 1, 3, 3: 2 and 3); the ratio of medians is
    # 3 / 2 = 1.5. Pairing a round with another round's or phase's explicit step gives something else.
    train = ratios("deq", "train", [3.0, 2.0, 12.0], [1.0, 2.0, 4.0], PAIRS["transformer"])
    infer = ratios("deq", "infer", [2.4, 2.4, 2.4], [2.0, 2.0, 2.0], PAIRS["transformer"])
    assert (train["ratio"], train["ratio_q1"], train["ratio_q3"]) == pytest.approx((3, 2, 3))
    assert train["ratio_of_medians"] == pytest.approx(1.5) and train["round_ratios"] == "3.0000 1.0000 3.0000"
    assert infer["ratio"] == infer["ratio_of_medians"] == pytest.approx(1.2)
    # goals: training 2.0, inference 1.3, judged on the DEQ entry only; the paper's Table 4 ratios beside them
    assert (train["goal_met"], infer["goal_met"]) == (False, True)
    assert ratios("deq_matched", "infer", [2.4], [2.0], PAIRS["transformer"])["goal_met"] is None
    assert (train["paper_ratio"], infer["paper_ratio"]) == (2.82, 1.76)


def test_ratios_agree_with_the_rounds_they_were_measured_in(smoke):
    # In the benchmark's own rows: each round's ratio is that round's DEQ step over the same round's
    # explicit step of the same phase (walls printed to 1 us, ratios to 4 digits: 0.2% covers the
    # rounding); the paired ratio, a median of these, lies in their IQR and range.
    rows, _, _ = smoke
    rows = by_key(rows)
    for (pair, entry, phase), r in rows.items():
        if entry == "explicit":
            assert "ratio" not in r or pd.isna(r.get("ratio"))
            continue
        mine, base = ([float(v) for v in row["round_walls_ms"].split()] for row in (r, rows[pair, "explicit", phase]))
        per_round = [float(v) for v in r["round_ratios"].split()]
        assert per_round == pytest.approx([a / b for a, b in zip(mine, base)], rel=2e-3)
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
        assert min(per_round) <= r["ratio"] <= max(per_round)


def test_breakdown_accounts_for_the_forward_solve(smoke):
    # Where the DEQ's time goes: overhead is by definition the solve's wall minus its f calls' time,
    # and every part is a measured, positive time no longer than the step it belongs to.
    rows, _, _ = smoke
    for r in rows:
        assert r["f_ms"] > 0
        if r["entry"] == "explicit":
            continue
        assert 1 <= r["fwd_nfe"] <= r["fwd_max_iter"]
        assert r["fwd_solve_ms"] > 0
        # The solve timed alone must be the one the steps ran (same settings, so as many f calls), else
        # its f calls x f time is not the f part of the steps. Here every step ran to its cap: counted.
        assert r["fwd_at_cap_fraction"] == 1.0
        assert r["fwd_solve_nfe"] == r["fwd_nfe"] == r["fwd_max_iter"]
        if r["phase"] == "train":
            assert 1 <= r["bwd_n_iter"] <= r["bwd_max_iter"]
            assert r["vjp_ms"] > 0 and r["bwd_solve_ms"] > 0
    for r in rows:  # each part is inside its step in every round, so its median is at most the step's
        parts = ("forward", "backward", "optimizer") if r["phase"] == "train" else ("forward",)
        assert all(0 < r[f"{part}_ms"] <= r["step_ms"] for part in parts), r


def test_matched_entry_makes_as_many_f_calls_as_the_explicit_model_has_layers(smoke):
    # That is what "at matched iteration counts" means; an early stop would make the comparison unfair.
    rows, _, _ = smoke
    for r in rows:
        if r["entry"] == "deq_matched":
            assert r["fwd_nfe"] == r["explicit_depth"] == r["fwd_max_iter"]
            assert r["fwd_at_cap_fraction"] == 1.0


def test_files_hold_the_rows_and_say_what_each_ratio_means(smoke):
    # The CSV is the data, the Markdown the reading: both must match the returned rows, and the
    # Markdown must say what the ratios mean and whether each goal was met.
    rows, csv, md = smoke
    table = pd.read_csv(csv)
    assert len(table) == len(rows)
    text = md.read_text()
    for phrase in ("DEQ / explicit", "ratio of medians", "matched", "## Goals", "equal perplexity"):
        assert phrase in text
    assert text.count("goal <=") == len(PAIRS) * len(PHASES)


def test_unknown_preset_is_named():
    # Errors name the bad value and the allowed ones.
    with pytest.raises(ValueError, match="'huge'.*smoke"):
        preset_config("huge")


def test_gpu_script_shrunk_runs_every_part_and_writes_its_files(tmp_path):
    # The GPU run is one shot on borrowed time: it must work from a bare checkout with the minimal
    # environment, within its budget, and leave every documented file.
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_gpu_script(out, "--shrink", "--budget-s", "120", timeout=150)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - start < 120
    device = json.loads((out / "device.json").read_text())
    assert device["versions"]["torch"] == torch.__version__ and device["config"] == {"shrink": True, "budget_s": 120.0}
    assert device["start_time"] and device["device"]["cpu"] and "git_revision" in device
    status = pd.read_csv(out / "status.csv")
    assert list(status["part"]) == list(PARTS) and set(status["status"]) == {"done"}
    for name in ("memory.csv", "memory.md", "runtime.csv", "runtime.md", "throughput.csv"):
        assert (out / name).stat().st_size > 0, name
    assert set(pd.read_csv(out / "runtime.csv")["pair"]) == set(PAIRS)
    throughput = pd.read_csv(out / "throughput.csv")
    assert list(throughput.columns) == [f.name for f in fields(RuntimeRow)]
    assert (throughput["batch"] == scales("smoke").gpu.tp_batch).all()
    timed = set(throughput.loc[throughput["entry"] == "deq", "model"])  # both DEQ-Transformer medium rows
    assert timed == {"wt103-deq-transformer-medium", "wt103-deq-transformer-medium-adaptive"}
    assert (throughput["tokens_per_s"] > 0).all()


def test_gpu_script_skips_what_does_not_fit_and_says_so(tmp_path):
    # Out of time is not an error: the parts that cannot fit are skipped, named, and the run exits 0.
    out = tmp_path / "out"
    result = run_gpu_script(out, "--shrink", "--budget-s", "0.5", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    status = pd.read_csv(out / "status.csv")
    assert set(status["status"]) == {"skipped"} and status["reason"].str.contains("budget").all()
    assert result.stdout.count("SKIPPED") == len(PARTS)
    assert (out / "device.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script would run at paper scale")
def test_gpu_script_refuses_paper_scale_without_a_gpu(tmp_path):
    # Paper-scale models on a CPU would run for hours; the script says so instead.
    from deq.bench.gpu import main

    assert main(["--out", str(tmp_path)]) == 2


def test_timed_solves_take_every_setting_the_training_step_uses(monkeypatch):
    # The breakdown times the forward and backward solves on their own; each must run with exactly the
    # arguments the DEQ driver gives them in a training step (SolverSettings.forward_args / backward_args),
    # or Table 4's breakdown times a different solver than its steps: before, the backward's history bound
    # (backward_options) and the forward's solver options were dropped here.
    from dataclasses import replace

    import deq
    from deq.bench.runtime import breakdown
    from deq.rows.build import build_model
    from deq.rows.configs import get_config

    row = get_config("wt103-deq-transformer-small", "smoke")
    settings = replace(row.solver, solver="anderson", solver_options={"m": 3}, backward_solver="broyden",
                       backward_options={"m": 4})
    torch.manual_seed(0)
    model = build_model(replace(row, solver=settings))
    batch = (torch.randint(0, row.n_token, (2, 6)), torch.randint(0, row.n_token, (2, 6)))
    calls, real = [], deq.solve
    monkeypatch.setattr(deq, "solve", lambda f, z0, **kwargs: calls.append(kwargs) or real(f, z0, **kwargs))
    breakdown(model, settings, batch, None, "train", repeats=1, device="cpu")
    forward, backward = settings.forward_args(training=True), settings.backward_args()
    assert forward["m"] == 3 and backward["m"] == 4 and backward["solver"] == "broyden"  # what the row sets
    assert forward in calls and backward in calls  # both solves were timed ...
    assert all(call in (forward, backward) for call in calls), calls  # ... each with nothing dropped
