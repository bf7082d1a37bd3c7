"""One-shot GPU measurements within a time budget: ``python -m deq.bench.gpu --out DIR``.

On one GPU, in this order, each part skipped (and said so) when the time left cannot fit it:

(a) ``memory``: the memory column of Tables 2-3 at the paper's protocol (sequence 150, batch 15,
    word embeddings excluded) for every paper-scale row that fits in GPU memory. Uses
    ``deq.bench.memory.run_memory_benchmark`` where it exists, else :func:`measure_memory` below.
    ``paper_memory``: the same rows by :mod:`deq.bench.paper_memory` (``memory_paper.csv``, the
    method of the CPU reference in ``results/reference/cpu/``, so the two compare row by row).
(b) ``runtime``: Table 4's DEQ / explicit ratios at paper scale (:mod:`deq.bench.runtime`).
(c) ``throughput``: tokens per second of the DEQ-Transformer medium rows, training and inference,
    at the official script's batch (56 segments of 150 tokens, memory 150).

Files under DIR, each written atomically as soon as its part (or row) finishes, so a run cut short
keeps what finished: ``device.json`` (first), ``memory.csv``, ``memory_paper.csv``, ``runtime.csv`` + ``runtime.md``,
``throughput.csv``, and ``status.csv`` (one row per part: done / skipped / failed, seconds, why).

``--shrink`` runs every part at smoke scale on the CPU: the check that the script works, in seconds.
Only torch, numpy, pandas, matplotlib, nvidia-ml-py, tqdm and pyyaml are needed (no snakemake).
The exit status is 0 when every part finished or was skipped for time, 1 when a part failed,
2 without a GPU and without ``--shrink``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deq.engine.memory import adam_state_bytes
from deq.io import atomic_write_text

# Tokens per second (c): the non-adaptive and the adaptive (released) DEQ-Transformer medium rows.
THROUGHPUT_ROWS = ("wt103-deq-transformer-medium", "wt103-deq-transformer-medium-adaptive")
DEVICE_FIELDS = ("gpu", "gpu_count", "gpu_memory_bytes", "driver_version", "cuda_driver_version", "cuda_runtime",
                 "cudnn", "torch", "python", "tf32_matmul", "tf32_cudnn", "cpu", "hostname", "date",
                 "git_revision", "git_dirty", "shrink", "budget_s")
MEMORY_FIELDS = ("model", "paper_table", "driver", "status", "seq_len", "batch", "mem_len", "params",
                 "embedding_state_bytes", "peak_allocated_bytes", "peak_excl_embedding_bytes",
                 "peak_excl_embedding_gb", "paper_memory_gb", "saved_activation_bytes",
                 "saved_activation_bytes_excl_embedding", "cuda_max_reserved_bytes", "gpu_process_peak_bytes",
                 "rss_peak_bytes", "device")
THROUGHPUT_FIELDS = ("model", "phase", "status", "batch", "tgt_len", "mem_len", "steps", "step_ms", "step_ms_q1",
                     "step_ms_q3", "tokens_per_s", "fwd_nfe", "bwd_n_iter", "device")


@dataclass(frozen=True)
class Scale:
    preset: str  # model and benchmark preset: 'paper', or 'smoke' with --shrink
    device: str  # 'cuda', or 'cpu' with --shrink
    dataset: str  # vocabulary of the throughput rows
    seq_len: int  # memory protocol: tokens per segment (paper: 150)
    batch: int  # memory protocol: segments (paper: 15)
    tp_batch: int  # throughput: segments per step (official script: 56)
    tp_tgt_len: int  # throughput: tokens per segment (official script: 150)
    tp_steps: int  # throughput: timed steps per phase after one warm-up step
    needs_s: dict  # part -> seconds it needs at least; a part with less time left is skipped


PAPER = Scale("paper", "cuda", "wikitext-103", 150, 15, 56, 150, 5,
              {"memory": 60, "paper_memory": 90, "runtime": 120, "throughput": 45})
SHRUNK = Scale("smoke", "cpu", "wikitext-2", 8, 2, 2, 8, 2,
               {"memory": 2, "paper_memory": 2, "runtime": 3, "throughput": 1})


# ---- device.json ------------------------------------------------------------------------------------

def device_info(shrink: bool, budget_s: float) -> dict:
    """The GPU, its driver and CUDA versions, torch, date and git revision (keys: DEVICE_FIELDS)."""
    from deq.engine.memory import cpu_name
    from deq.engine.records import run_metadata

    meta = run_metadata({"shrink": shrink, "budget_s": budget_s}, seed=0)
    cuda = torch.cuda.is_available()
    driver = cuda_driver = None
    if cuda:
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            version = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040
            cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
            pynvml.nvmlShutdown()
        except Exception as error:  # NVML missing or refused: keep the rest, say why
            driver = f"unknown ({type(error).__name__}: {error})"
    info = {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "driver_version": driver, "cuda_driver_version": cuda_driver, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "torch": torch.__version__,
        "python": meta["versions"]["python"], "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "cpu": cpu_name(), "hostname": meta["hostname"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": meta["git_revision"], "git_dirty": meta["git_dirty"], "shrink": shrink, "budget_s": budget_s,
    }
    assert tuple(info) == DEVICE_FIELDS, "DEVICE_FIELDS must list device_info's keys in order"
    return info


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    import pandas as pd

    atomic_write_text(path, pd.DataFrame(rows, columns=list(fields)).to_csv(index=False))


def free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- (a) memory -------------------------------------------------------------------------------------

def measure_memory(scale: Scale, csv_path: Path, deadline: float) -> list[dict]:
    """Peak training memory per row at seq_len x batch, word embeddings' state subtracted.

    Per row: one training step (so Adam's state exists), then a second one inside a
    :class:`~deq.engine.memory.MemoryMonitor`; peak_excl_embedding = torch's peak allocated bytes
    minus the word embeddings' parameters, gradients and both Adam moments (as ``deq.train`` does).
    A row that runs out of GPU memory is recorded as such; rows not started by ``deadline`` are skipped.
    """
    from deq.bench.runtime import zipf_batch
    from deq.engine.memory import MemoryMonitor
    from deq.rows.build import build_model
    from deq.rows.configs import CONFIGS, get_config, on_dataset

    rows = []
    for name in CONFIGS:
        cfg = get_config(name, scale.preset)
        if cfg.dataset == "wikitext-103":
            cfg = on_dataset(cfg, scale.dataset)  # WikiText-2 stands in at smoke scale, as in training
        row = {"model": name, "paper_table": cfg.paper_table, "driver": cfg.driver, "seq_len": scale.seq_len,
               "batch": scale.batch, "mem_len": cfg.mem_len, "paper_memory_gb": cfg.paper_memory_gb}
        if time.monotonic() > deadline:
            rows.append({**row, "status": "skipped: time budget spent"})
            continue
        try:
            row.update(memory_of_row(cfg, scale, build_model, zipf_batch, MemoryMonitor))
        except torch.cuda.OutOfMemoryError as error:
            row["status"] = f"out of GPU memory: {str(error).splitlines()[0]}"
        free_cuda()
        rows.append(row)
        write_csv(csv_path, rows, MEMORY_FIELDS)
    write_csv(csv_path, rows, MEMORY_FIELDS)
    return rows


def memory_of_row(cfg, scale: Scale, build_model, zipf_batch, MemoryMonitor) -> dict:
    torch.manual_seed(0)
    with torch.device(scale.device):
        model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    embedding = {p.data_ptr() for p in model.embedding.parameters()}
    embedding_state = adam_state_bytes(model.embedding.parameters())
    aux_weight = cfg.aux_weight
    batches = [tuple(t.to(scale.device) for t in zipf_batch(cfg.n_token, scale.batch, scale.seq_len,
                                                              torch.Generator().manual_seed(i))) for i in range(2)]

    def step(batch, memory):
        optimizer.zero_grad(set_to_none=True)
        out = model(*batch, memory)
        loss = out.loss if out.aux_loss is None else out.loss + aux_weight * out.aux_loss
        loss.backward()
        optimizer.step()
        return out.memory

    memory = step(batches[0], None)
    with MemoryMonitor() as monitor:
        with monitor.saved_activations(exclude=embedding):
            step(batches[1], memory)
    record = monitor.record()
    peak = record["cuda_max_allocated_bytes"]
    excl = None if peak is None else peak - embedding_state
    return {"status": "ok", "params": sum(p.numel() for p in model.parameters()),
            "embedding_state_bytes": embedding_state, "peak_allocated_bytes": peak,
            "peak_excl_embedding_bytes": excl, "peak_excl_embedding_gb": None if excl is None else excl / 1e9,
            **{key: record[key] for key in ("saved_activation_bytes", "saved_activation_bytes_excl_embedding",
                                            "cuda_max_reserved_bytes", "gpu_process_peak_bytes", "rss_peak_bytes",
                                            "device")}}


def memory_part(scale: Scale, out: Path, deadline: float) -> list[Path]:
    """Table 2-3 memory: the project's memory benchmark if present, else :func:`measure_memory`."""
    try:
        from deq.bench.memory import run_memory_benchmark
    except ModuleNotFoundError as error:
        if error.name != "deq.bench.memory":
            raise  # the module exists but needs something missing: a real failure, not a fallback
        run_memory_benchmark = None
    except ImportError:  # the module exists without that function (yet)
        run_memory_benchmark = None
    if run_memory_benchmark is None:
        print("memory: deq.bench.memory.run_memory_benchmark not available; using deq.bench.gpu's own "
              "measurement", flush=True)
        measure_memory(scale, out / "memory.csv", deadline)
        return [out / "memory.csv"]
    from deq.rows.configs import CONFIGS

    per_row_s = max(1.0, (deadline - time.monotonic()) / len(CONFIGS))  # its time budget per row (picks scales)
    offered = {"preset": scale.preset, "csv_path": out / "memory.csv", "md_path": out / "memory.md",
               "budget_s": per_row_s, "deadline": deadline, "device": scale.device}
    accepted = inspect.signature(run_memory_benchmark).parameters
    run_memory_benchmark(**{key: value for key, value in offered.items() if key in accepted})
    return [path for key, path in offered.items() if key.endswith("_path") and key in accepted]


def paper_memory_part(scale: Scale, out: Path, deadline: float) -> list[Path]:
    """Tables 2-3 at the paper's exact widths (:mod:`deq.bench.paper_memory`), beside the CPU's reference
    CSV: on a GPU every row fits batch 15, so each is measured there and its batch fit checked."""
    from deq.bench.paper_memory import run_paper_memory

    path = out / "memory_paper.csv"
    if scale.preset == "smoke":
        run_paper_memory(path, preset="smoke", seq_len=scale.seq_len, target_batch=4, fit_batches=(2, 3),
                         names=("ptb-deq-trellisnet", "ptb-trellisnet-60-aux"), variants=())
    else:
        run_paper_memory(path)
    return [path]


# ---- (c) tokens per second --------------------------------------------------------------------------

def measure_throughput(scale: Scale, csv_path: Path, deadline: float) -> list[dict]:
    """Training and inference tokens/s of THROUGHPUT_ROWS: steps interleaved train / infer after a warm-up."""
    from deq.bench.runtime import infer_step, train_step, zipf_batch
    from deq.bench.solvers import quartiles
    from deq.rows.build import build_model
    from deq.rows.configs import get_config, on_dataset

    rows = []
    for name in THROUGHPUT_ROWS:
        cfg = on_dataset(get_config(name, scale.preset), scale.dataset)
        cfg = replace(cfg, mem_len=min(cfg.mem_len, scale.tp_tgt_len))
        base = {"model": name, "batch": scale.tp_batch, "tgt_len": scale.tp_tgt_len, "mem_len": cfg.mem_len}
        if time.monotonic() > deadline:
            rows += [{**base, "phase": phase, "status": "skipped: time budget spent"} for phase in ("train", "infer")]
            continue
        try:
            rows += throughput_of_row(cfg, scale, base, deadline, build_model, zipf_batch, train_step, infer_step,
                                      quartiles)
        except torch.cuda.OutOfMemoryError as error:
            rows += [{**base, "phase": phase, "status": f"out of GPU memory: {str(error).splitlines()[0]}"}
                     for phase in ("train", "infer")]
        free_cuda()
        write_csv(csv_path, rows, THROUGHPUT_FIELDS)
    write_csv(csv_path, rows, THROUGHPUT_FIELDS)
    return rows


def throughput_of_row(cfg, scale: Scale, base: dict, deadline: float, build_model, zipf_batch, train_step,
                      infer_step, quartiles) -> list[dict]:
    from deq.bench.runtime import PAIRS

    torch.manual_seed(0)
    with torch.device(scale.device):
        model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # weights fixed: every step times the same model
    batch = tuple(t.to(scale.device) for t in zipf_batch(cfg.n_token, scale.tp_batch, scale.tp_tgt_len,
                                                         torch.Generator().manual_seed(0)))
    walls, infos, memory = {"train": [], "infer": []}, {"train": [], "infer": []}, {"train": None, "infer": None}
    for step in range(scale.tp_steps + 1):  # step 0 warms up
        for phase in ("train", "infer") if step % 2 == 0 else ("infer", "train"):
            if phase == "train":
                parts, out = train_step(model, optimizer, batch, memory[phase], 0.0, PAIRS["transformer"].clip,
                                        scale.device)
            else:
                parts, out = infer_step(model, batch, memory[phase], scale.device)
            memory[phase] = out.memory
            if step > 0:
                walls[phase].append(parts["step"])
                infos[phase].append(out.info)
        if step >= 1 and time.monotonic() > deadline:
            break
    rows = []
    for phase in ("train", "infer"):
        q1, median, q3 = (1e3 * v for v in quartiles(walls[phase]))
        backward = [info.backward.n_iter for info in infos[phase] if info.backward is not None]
        rows.append({**base, "phase": phase, "status": "ok", "steps": len(walls[phase]), "step_ms": median,
                     "step_ms_q1": q1, "step_ms_q3": q3,
                     "tokens_per_s": scale.tp_batch * scale.tp_tgt_len / (median / 1e3),
                     "fwd_nfe": statistics.median(info.forward.nfe for info in infos[phase]),
                     "bwd_n_iter": statistics.median(backward) if backward else None,
                     "device": torch.cuda.get_device_name() if scale.device == "cuda" else "cpu"})
    return rows


# ---- the run ----------------------------------------------------------------------------------------

def runtime_part(scale: Scale, out: Path, deadline: float) -> list[Path]:
    from deq.bench.runtime import run_runtime_benchmark

    run_runtime_benchmark(scale.preset, out / "runtime.csv", out / "runtime.md", device=scale.device,
                          deadline=deadline)
    return [out / "runtime.csv", out / "runtime.md"]


def throughput_part(scale: Scale, out: Path, deadline: float) -> list[Path]:
    measure_throughput(scale, out / "throughput.csv", deadline)
    return [out / "throughput.csv"]


PARTS: dict[str, Callable[[Scale, Path, float], list[Path]]] = {
    "memory": memory_part, "paper_memory": paper_memory_part, "runtime": runtime_part,
    "throughput": throughput_part}
STATUS_FIELDS = ("part", "status", "seconds", "reason", "files")


def run(out: Path, shrink: bool = False, budget_s: float = 480.0) -> int:
    """Run every part that fits in ``budget_s`` seconds; returns the exit status (see the module docstring)."""
    start = time.monotonic()
    end = start + budget_s
    scale = SHRUNK if shrink else PAPER
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "device.json", json.dumps(device_info(shrink, budget_s), indent=2) + "\n")
    print(f"deq.bench.gpu: {scale.preset} scale on {scale.device}, budget {budget_s:g} s, writing to {out}",
          flush=True)
    names = list(PARTS)
    status, failed = [], False
    for i, name in enumerate(names):
        left = end - time.monotonic()
        need = scale.needs_s[name]
        if left < need:
            reason = f"{left:.0f} s of the budget left, the part needs at least {need} s"
            print(f"{name}: SKIPPED ({reason})", flush=True)
            status.append({"part": name, "status": "skipped", "seconds": 0.0, "reason": reason, "files": ""})
        else:
            t0 = time.monotonic()
            # This part's share of the time left, in proportion to the needs of the parts still to run;
            # no new row or round starts after 85% of it, so the last one started can finish in time.
            share = left * need / sum(scale.needs_s[n] for n in names[i:])
            deadline = t0 + 0.85 * share
            print(f"{name}: running ({left:.0f} s left)", flush=True)
            try:
                files = PARTS[name](scale, out, deadline)
                status.append({"part": name, "status": "done", "seconds": round(time.monotonic() - t0, 1),
                               "reason": "", "files": " ".join(p.name for p in files if p.exists())})
            except Exception as error:  # one part failing must not cost the others
                traceback.print_exc()
                failed = True
                status.append({"part": name, "status": "failed", "seconds": round(time.monotonic() - t0, 1),
                               "reason": f"{type(error).__name__}: {error}".splitlines()[0], "files": ""})
            free_cuda()
            print(f"{name}: {status[-1]['status']} in {status[-1]['seconds']} s", flush=True)
        write_csv(out / "status.csv", status, STATUS_FIELDS)
    print(f"deq.bench.gpu: finished in {time.monotonic() - start:.0f} s of {budget_s:g} s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deq.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs and device.json")
    parser.add_argument("--shrink", action="store_true", help="every part at smoke scale on the CPU (a check)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds (default 480)")
    args = parser.parse_args(argv)
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.shrink and not torch.cuda.is_available():
        print("deq.bench.gpu: no CUDA device; run on a GPU, or pass --shrink for the CPU check", file=sys.stderr)
        return 2
    return run(args.out, args.shrink, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
