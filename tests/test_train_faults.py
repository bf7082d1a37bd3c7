"""Faults injected into a training run (README, "Faults"): each is refused with a message naming the
path, key or step, nothing good is lost, and the run resumes.

Damaged checkpoints, divergence, a full disk while checkpointing, bad run.yaml values, and two runs
on one folder. (Data preparation's faults: tests/test_data_faults.py; a crash of the whole study:
tests/test_recovery.py.)
"""

import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import deq.train as train_module
from deq.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from deq.engine.config import config_from_dict
from deq.engine.records import read_jsonl
from deq.io import LockedError, exclusive_lock

from test_data_faults import tiny_tmpfs  # noqa: F401 (a fixture)
from test_train import COPY, REPO, run

FAST = {**COPY, "copy_n_train": 64, "copy_T": 20}


def trained(tmp_path: Path, **changes) -> tuple[dict, Path]:
    """A finished 4-step copy-memory run with checkpoint.pt at step 4 and a kept copy at step 2."""
    cfg = config_from_dict({**FAST, "max_steps": 4, "checkpoint_every": 1, "keep_steps": [2],
                            "data_root": str(tmp_path / "data"), **changes})
    out = tmp_path / "run"
    return train_module.train(cfg, out), out


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << random.Random(offset).randrange(8)
    path.write_bytes(bytes(data))


def record_offset(path: Path, suffix: str) -> int:
    """A byte in the middle of the first archive record whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    return info.header_offset + 100 + info.file_size // 2


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


# ---- 1, 7: damaged checkpoints ----------------------------------------------------------------------

def test_a_flipped_bit_anywhere_is_refused_or_harmless(tmp_path):
    # torch.load reads a damaged record without complaint; the load must check every record's CRC.
    # Any single flipped bit either is refused naming the file, or (in zip padding and unused header
    # fields) leaves every loaded value equal to the original.
    state = {"w": torch.randn(300, 7), "step": 5, "nested": {"m": torch.arange(40.0)}}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    size, refused = path.stat().st_size, 0
    for offset in random.Random(0).sample(range(size), 60):
        damaged = tmp_path / "damaged.pt"
        damaged.write_bytes(path.read_bytes())
        flip_bit(damaged, offset)
        try:
            loaded = load_checkpoint(damaged)
        except CheckpointError as error:
            assert str(damaged) in str(error)
            refused += 1
        else:
            assert same(loaded, state), f"bit flip at byte {offset} loaded different values silently"
    assert refused >= 40  # almost every byte is a tensor, the pickle, or a checked header field


def test_empty_and_truncated_checkpoints_are_refused_naming_the_path(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.randn(1000)})
    whole = path.read_bytes()
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is empty \(0 bytes\)"):
        load_checkpoint(path)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is not a complete archive"):
        load_checkpoint(path)


def test_a_damaged_checkpoint_falls_back_to_the_kept_one_and_finishes_identically(tmp_path, capsys):
    # The flipped bit lands in a weight tensor of the step-4 checkpoint: the run must refuse it, resume
    # from checkpoint-step2.pt, redo steps 3-4 and reach the uninterrupted run's losses bit for bit.
    result, out = trained(tmp_path)
    losses = [(m["step"], m["loss"]) for m in read_jsonl(out / "metrics.jsonl")]
    latest = out / "checkpoint.pt"
    flip_bit(latest, record_offset(latest, "data/0"))
    with pytest.raises(CheckpointError, match=r"does not match its CRC-32"):
        verify_checkpoint(latest)
    (out / "result.json").unlink()  # as if the run had been killed before its evaluation
    again = train_module.train(config_from_dict({**FAST, "max_steps": 4, "checkpoint_every": 1, "keep_steps": [2],
                                                 "data_root": str(tmp_path / "data")}), out)
    err = capsys.readouterr().err
    assert f"checkpoint {latest} is damaged" in err and "resuming from the kept checkpoint" in err
    assert "checkpoint-step2.pt (step 2)" in err
    assert [(m["step"], m["loss"]) for m in read_jsonl(out / "metrics.jsonl")] == losses
    assert again["test_loss"] == result["test_loss"]
    verify_checkpoint(latest)  # overwritten by an intact one


def test_with_every_checkpoint_damaged_the_run_stops_naming_them(tmp_path):
    _, out = trained(tmp_path)
    for name in ("checkpoint.pt", "checkpoint-step2.pt"):
        (out / name).write_bytes((out / name).read_bytes()[:100])
    cfg = config_from_dict({**FAST, "max_steps": 4, "checkpoint_every": 1, "keep_steps": [2],
                            "data_root": str(tmp_path / "data")})
    with pytest.raises(CheckpointError, match=rf"{out / 'checkpoint.pt'} is not a complete archive.*no intact kept "
                                              rf"checkpoint.*{out / 'checkpoint-step2.pt'} is not a complete archive"
                                              rf".*Remove {out} to start the run over"):
        train_module.train(cfg, out)


# ---- 2: divergence ----------------------------------------------------------------------------------

def test_a_huge_learning_rate_fails_at_the_step_it_diverges_naming_the_last_checkpoint(tmp_path):
    # lr 1e30 gives weights of ~1e30 after step 1 (finite) and a loss of ~1e31 or NaN at step 2: a
    # result of "success" with Infinity in it before this check existed.
    with pytest.raises(train_module.TrainingFailed, match=r"step 2: the loss diverged to (nan|inf|\S+e\+\d+) "
                                                          r"\(limit 709.8\).*"
                                                          r"last good checkpoint is .*checkpoint.pt \(step 1\)"):
        trained(tmp_path, lr=1e30)
    out = tmp_path / "run"
    assert not (out / "result.json").exists()
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] == 1


def test_a_finite_loss_beyond_float64_perplexity_is_a_divergence(tmp_path, monkeypatch):
    # The lr 1e30 on PTB gave a finite loss of 1.6e31 and "success"; a loss whose perplexity
    # overflows a float64 (> 709.8 nats) is a divergence even though the number is finite.
    original = train_module.CopyMemoryTask.loss

    def exploding(self, model, inputs, targets, memory):
        loss, lm_loss, *rest = original(self, model, inputs, targets, memory)
        return loss * 1e6, lm_loss * 1e6, *rest

    monkeypatch.setattr(train_module.CopyMemoryTask, "loss", exploding)
    with pytest.raises(train_module.TrainingFailed, match=r"step 1: the loss diverged to \d\.\d+e\+06 \(limit 709.8\)"):
        trained(tmp_path)


def test_a_learning_rate_that_overflows_the_optimiser_names_the_step(tmp_path):
    with pytest.raises(train_module.TrainingFailed, match=r"step 1 failed at lr 1e\+38: RuntimeError: .*overflow.*"
                                                          r"last good checkpoint is none yet"):
        trained(tmp_path, lr=1e38)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    # An optimiser step that leaves an infinity in the weights stops the run at that step; the
    # checkpoint on disk is the previous step's, and finite.
    step = torch.optim.Adam.step

    def poisoning(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        if self.state[self.param_groups[0]["params"][0]]["step"] == 3:
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning)
    with pytest.raises(train_module.TrainingFailed, match=r"step 3: the optimiser step made 1 parameter tensors "
                                                          r"non-finite \(\w.*\) at lr .*checkpoint.pt \(step 2\)"):
        trained(tmp_path)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["state"]["step"] == 2
    with pytest.raises(ValueError, match=r"refusing to write checkpoint .*: non-finite values in model.w"):
        save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.tensor([1.0, float("nan")])}})
    assert not (tmp_path / "x.pt").exists()


def test_a_non_finite_gradient_is_refused_before_it_reaches_the_weights(tmp_path, monkeypatch):
    build = train_module.CopyMemoryTask.build

    def with_infinite_gradient(self):
        model = build(self)
        next(model.parameters()).register_hook(lambda grad: grad * float("inf"))
        return model

    monkeypatch.setattr(train_module.CopyMemoryTask, "build", with_infinite_gradient)
    with pytest.raises(train_module.TrainingFailed, match=r"step 1: the gradient norm is (nan|inf) \(loss \d"):
        trained(tmp_path)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---- 3: a full disk while checkpointing -------------------------------------------------------------

def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("shutil.disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9, free=0))
    with pytest.raises(OSError, match=rf"could not write checkpoint {path}: the disk is full \(about 4,000 bytes to "
                                      rf"write, 0 bytes free.*previous checkpoint there is kept"):
        save_checkpoint(path, {"w": torch.zeros(1000)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_write_the_kernel_refuses_names_the_checkpoint(tmp_path):
    # A real failing write (the file-size limit stands in for a full disk: the kernel refuses the
    # write with EFBIG where a full disk gives ENOSPC); the old file survives, no temporary remains.
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})
    before = path.read_bytes()
    code = ("import resource, signal, torch\n"
            "from deq.engine.checkpoint import save_checkpoint\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            f"save_checkpoint({str(path)!r}, {{'w': torch.zeros(1_000_000)}})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"could not write checkpoint {path}: RuntimeError: " in done.stderr  # torch's own words follow
    assert "(about 4,000,000 bytes to write, " in done.stderr
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_full_file_system_is_named_as_such(tmp_path, tiny_tmpfs):
    # A real full disk (a 1 MiB tmpfs; root only): torch says only "unexpected pos"; the harness says
    # the disk is full, and the previous checkpoint survives.
    path = tiny_tmpfs / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.zeros(10)})
    before = path.read_bytes()
    with pytest.raises(OSError, match=rf"could not write checkpoint {path}: the disk is full \(about 4,000,000 "
                                      rf"bytes to write, \d[\d,]* bytes free"):
        save_checkpoint(path, {"w": torch.zeros(1_000_000)})
    assert path.read_bytes() == before and [p.name for p in tiny_tmpfs.iterdir()] == ["checkpoint.pt"]


# ---- 6: run.yaml values of the wrong type -----------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("lr", "1e-3", r"lr must be a number \(YAML 1.1 reads .* write 0.001\), got lr='1e-3' \(str\)"),
    ("lr", "1.0e30", r"lr must be a number \(YAML 1.1 reads .* write 1.0e\+30\), got lr='1.0e30' \(str\)"),
    ("max_steps", "1e3", r"max_steps must be an integer \(YAML 1.1 .* write 1000\), got max_steps='1e3' \(str\)"),
    ("clip", None, r"clip must be a number, got clip=None \(NoneType\)"),
    ("data_root", 5, r"data_root must be a string, got data_root=5 \(int\)"),
    ("bf16", "banana", r"bf16 must be true or false, got bf16='banana' \(str\)"),
    ("max_steps", 2.5, r"max_steps must be an integer, got max_steps=2.5 \(float\)"),
    ("seed", 2**32, r"seed must be < 2\*\*32 = 4294967296 \(numpy's seed range\), got seed=4294967296"),
    ("lr", float("inf"), r"lr must be finite, got lr=inf"),
    ("min_lr", float("nan"), r"min_lr must be finite, got min_lr=nan"),
    ("eval_max_tokens", "all", r"eval_max_tokens must be an integer or null, got eval_max_tokens='all'"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=rf"^run.yaml: {message}"):
        config_from_dict({"model": "copy-tcn", key: value}, source="run.yaml")


def test_an_integer_where_a_float_is_due_is_accepted_as_a_float():
    cfg = config_from_dict({"model": "copy-tcn", "lr": 1, "clip": 0})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and isinstance(cfg.clip, float)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused_before_any_work(tmp_path):
    cfg = config_from_dict({**FAST, "device": "cuda", "data_root": str(tmp_path / "data")})
    with pytest.raises(ValueError, match=r"device: 'cuda' but this torch .* sees no CUDA device; choose 'auto'"):
        train_module.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- 8: permissions and one run per folder -----------------------------------------------------------

def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        _, out = trained(tmp_path)
    finally:
        os.umask(mask)
    for name in ("checkpoint.pt", "checkpoint-step2.pt", "result.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = run({**FAST, "max_steps": 100_000, "log_every": 1}, out)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run({**FAST, "max_steps": 100_000}, out)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 1
        assert f"another process (pid {first.pid}) is using the run folder {out}" in output
        assert first.poll() is None  # the first run is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with exclusive_lock(out / ".lock", wait=False):  # the kernel released the killed run's lock
        pass
    with exclusive_lock(out / ".lock"):  # and an in-process holder is refused the same way
        with pytest.raises(LockedError, match=r"is using the run folder"):
            train_module.train(config_from_dict({**FAST, "data_root": str(tmp_path / "data")}), out)
