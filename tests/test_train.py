"""The training entry point: resume after SIGKILL, DDP, config validation and what a run writes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deq.engine.config import config_from_dict
from deq.engine.records import REQUIRED_METRIC_FIELDS, TRACE_FIELDS, read_jsonl

from conftest import MIRROR, require_mirror

REPO = Path(__file__).resolve().parents[1]

COPY = dict(model="copy-deq-transformer", preset="smoke", seed=3, batch_size=8, lr=0.01, clip=1.0, copy_T=60,
            copy_n_train=256, copy_n_test=16, eval_batch_size=16)
PTB = dict(model="ptb-deq-trellisnet", preset="smoke", seed=3, batch_size=4, tgt_len=32, lr=1e-3,
           eval_batch_size=4, eval_tgt_len=64, eval_max_tokens=500, data_mirror=str(MIRROR))


def run(config: dict, out: Path, launcher: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    """Start ``python -m deq.train`` (optionally under a launcher such as torchrun) on a config dict."""
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({"data_root": str(out.parent / "data"), **config}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, "-m", "deq.train", "--config", str(path), "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def losses(out: Path) -> list[tuple[int, float]]:
    return [(line["step"], line["loss"]) for line in read_jsonl(out / "metrics.jsonl")]


@pytest.mark.parametrize("task", ["copy", "ptb"])
def test_sigkill_and_resume_continue_the_same_loss_trajectory(tmp_path, task):
    # A preempted job must pick up exactly where its last checkpoint left it: model, optimiser,
    # schedule, every RNG, the data position and the segment memory. Anything missing shows up as
    # a loss that differs from the uninterrupted run's in some later step (compared bit for bit).
    if task == "ptb":
        require_mirror("ptb")
    config = {**(COPY if task == "copy" else PTB), "max_steps": 24, "checkpoint_every": 5, "warmup_steps": 3}
    finish(run(config, tmp_path / "whole"))
    killed = run(config, tmp_path / "killed")
    metrics, deadline = tmp_path / "killed" / "metrics.jsonl", time.time() + 300
    while time.time() < deadline:  # kill once past the second checkpoint, mid-run
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert len(losses(tmp_path / "killed")) < 24, "the run finished before it could be killed"
    finish(run(config, tmp_path / "killed"))
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")


def first_gradient(out: Path) -> dict[str, torch.Tensor]:
    """The first step's gradient per parameter, recovered from Adam's first moment (0.1 g after step 1)."""
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    names = list(saved["model"])
    return {names[i]: s["exp_avg"] / 0.1 for i, s in saved["optimizer"]["state"].items()}


@pytest.mark.parametrize("model", ["copy-lstm", "copy-deq-transformer"])
def test_two_process_ddp_gives_the_one_process_gradient(tmp_path, model):
    # DDP splits the global batch over processes and averages their gradients; with the same data
    # and no dropout that must be the one-process gradient on the whole batch, and so must two
    # accumulated micro-batches in one process. Exact (to float rounding) for the explicit LSTM.
    # For the DEQ, a solve stops when every sample of *its* batch meets the tolerance, so halves of
    # the batch stop at other iterations than the whole: equal only to the solver's tolerance.
    config = {**COPY, "model": model, "max_steps": 1, "clip": 0.0}
    finish(run(config, tmp_path / "one"))
    finish(run({**config, "grad_accum": 2}, tmp_path / "accumulated"))
    finish(run(config, tmp_path / "ddp", launcher=("-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", "2")))
    reference = first_gradient(tmp_path / "one")
    for other in ("accumulated", "ddp"):
        grads = first_gradient(tmp_path / other)
        assert grads.keys() == reference.keys()
        if model == "copy-lstm":
            for name, grad in grads.items():
                assert torch.allclose(grad, reference[name], rtol=1e-5, atol=1e-8), (other, name)
        else:  # the whole gradient vector, relative to its norm
            flat, flat_reference = (torch.cat([g.flatten() for g in d.values()]) for d in (grads, reference))
            assert (flat - flat_reference).norm() <= 1e-2 * flat_reference.norm(), other


def test_run_folder_holds_every_documented_field_with_this_runs_values(tmp_path):
    # Figures and tables are drawn from these files later: every documented field must be there, and
    # hold what this run did on this machine.
    config = {**COPY, "max_steps": 4, "trace_every": 2, "eval_every": 2}
    finish(run(config, tmp_path / "run"))
    out = tmp_path / "run"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(set(REQUIRED_METRIC_FIELDS) <= set(m) for m in metrics)
    assert "valid_loss" in metrics[1] and "valid_loss" not in metrics[0]
    # Throughput counts tokens: 8 sequences of T + 20 = 80 symbols per step (the copy task's length).
    for m in metrics:
        assert m["tokens_per_s"] * m["step_time_s"] == pytest.approx(8 * (60 + 20), rel=1e-9), m["step"]
    # The memory columns say what measured them: a CPU run has no GPU number and says why NVML is unused;
    # a GPU run has the allocator's peak.
    first = metrics[0]
    if torch.cuda.is_available():
        assert first["cuda_max_allocated_bytes"] > 0 and (first["nvml"] or first["nvml_reason"])
    else:
        assert first["nvml"] is False and first["nvml_reason"] == "CUDA not available"
        assert all(first[key] is None for key in ("gpu_process_peak_bytes", "gpu_device_peak_bytes",
                                                  "cuda_max_allocated_bytes", "cuda_max_reserved_bytes"))
    assert first["saved_activation_bytes"] > 0 and first["rss_peak_bytes"] > 0
    traces = read_jsonl(out / "traces.jsonl")
    assert {(t["step"], t["phase"]) for t in traces} == {(s, p) for s in (1, 2, 4) for p in ("forward", "backward")}
    assert all(set(TRACE_FIELDS) <= set(t) for t in traces)
    # Both files describe the same solves: a step's iteration counts agree between them.
    by_step = {m["step"]: m for m in metrics}
    for t in traces:
        assert t["n_iter"] == by_step[t["step"]]["fwd_iters" if t["phase"] == "forward" else "bwd_iters"], t
    result = json.loads((out / "result.json").read_text())
    assert {"valid_loss", "test_loss", "rss_peak_bytes", "saved_activation_bytes"} <= set(result)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["model"] == "copy-deq-transformer" and "end_time" in meta
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 4


def test_unknown_and_bad_settings_fail_naming_them():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]; allowed keys are \['model'"):
        config_from_dict({"model": "copy-tcn", "learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"unknown model 'deq-transfomer'; choose from \["):
        config_from_dict({"model": "deq-transfomer"})
    with pytest.raises(ValueError, match=r"unknown dataset 'wikitext-3'; choose from \['ptb', 'wikitext-2'"):
        config_from_dict({"model": "ptb-deq-trellisnet", "dataset": "wikitext-3"})
    with pytest.raises(ValueError, match=r"max_steps must be a number >= 1, got max_steps=0"):
        config_from_dict({"model": "copy-tcn", "max_steps": 0})
    with pytest.raises(ValueError, match=r"width is set only for a language model at preset 'cpu'.*width=64, "
                                         r"preset='paper'"):
        config_from_dict({"model": "ptb-deq-trellisnet", "preset": "paper", "width": 64})
    with pytest.raises(ValueError, match=r"mem_len must be a number >= 0, got mem_len=-1"):
        config_from_dict({"model": "ptb-deq-trellisnet", "mem_len": -1})


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    # A NaN must stop training at once (continuing would corrupt every later checkpoint), with the
    # step and the solver's last residuals in the message so the cause can be found.
    import deq.train as train_module

    original = train_module.CopyMemoryTask.loss

    def poisoned(self, model, inputs, targets, memory):
        loss, lm_loss, *rest = original(self, model, inputs, targets, memory)
        return loss * float("nan"), lm_loss * float("nan"), *rest

    monkeypatch.setattr(train_module.CopyMemoryTask, "loss", poisoned)
    cfg = config_from_dict({**COPY, "max_steps": 3, "data_root": str(tmp_path / "data")})
    with pytest.raises(RuntimeError, match=r"step 1: the loss diverged to nan \(limit 709.8\); last solver "
                                           r"residuals: \{'fwd_iters'.*last good checkpoint is none yet"):
        train_module.train(cfg, tmp_path / "run")


def test_kept_checkpoints_and_a_changed_config_is_refused(tmp_path):
    # Figure 2 needs an early checkpoint; a resume under different settings would silently mix two
    # runs, so it must stop and say which keys changed.
    import deq.train as train_module

    out = tmp_path / "run"
    cfg = config_from_dict({**COPY, "max_steps": 3, "keep_steps": [2], "data_root": str(tmp_path / "data")})
    result = train_module.train(cfg, out)
    assert (out / "checkpoint-step2.pt").exists() and result["steps"] == 3 and result["params"] > 0
    # the last step's allocator peak is the run's training memory (figure size_sweep), logged at that step only
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["train_step_peak_bytes"] is not None for m in metrics] == [False, False, True]
    assert result["train_step_peak_bytes"] == metrics[-1]["train_step_peak_bytes"] > 0
    # a rerun resumes at the end and trains nothing; its result keeps the peaks the run measured
    again = train_module.train(cfg, out)
    assert again["saved_activation_bytes"] == result["saved_activation_bytes"] > 0
    assert again["train_step_peak_bytes"] == result["train_step_peak_bytes"]
    early = torch.load(out / "checkpoint-step2.pt", weights_only=True)
    assert early["state"]["step"] == 2
    changed = config_from_dict({**COPY, "max_steps": 3, "lr": 0.02, "keep_steps": [2],
                                "data_root": str(tmp_path / "data")})
    with pytest.raises(ValueError, match=r"different config \(keys \['lr'\] differ\)"):
        train_module.train(changed, out)
    with pytest.raises(ValueError, match=r"keep_steps must be a list of steps in \[1, max_steps=3\]"):
        config_from_dict({**COPY, "max_steps": 3, "keep_steps": [5]})


def test_test_tokens_are_capped_and_reported(tmp_path):
    require_mirror("ptb")
    cfg = config_from_dict({**PTB, "max_steps": 1, "test_max_tokens": 300, "data_root": str(tmp_path / "data")})
    import deq.train as train_module

    result = train_module.train(cfg, tmp_path / "run")
    assert result["test_tokens"] == 300 and result["valid_tokens"] == 500
    assert result["params_nonembedding"] < result["params"]


def test_a_diverged_final_evaluation_fails_the_run_and_writes_no_result(tmp_path, monkeypatch):
    # An infinite test metric is not a result: the run stops naming the step and its last checkpoint,
    # and no result.json exists for a table to read (a rerun resumes and evaluates again).
    import deq.train as train_module

    monkeypatch.setattr(train_module.CopyMemoryTask, "evaluate", lambda self, model, split: {f"{split}_loss": math.inf})
    cfg = config_from_dict({**COPY, "max_steps": 2, "data_root": str(tmp_path / "data")})
    with pytest.raises(RuntimeError, match=r"step 2: the evaluation diverged \(\{'valid_loss': inf, 'test_loss': inf\}\)"
                                           r"; the last good checkpoint is .*checkpoint.pt \(step 2\)"):
        train_module.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists() and (tmp_path / "run" / "checkpoint.pt").exists()
