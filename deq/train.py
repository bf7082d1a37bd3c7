"""Train and evaluate one row: ``python -m deq.train --config run.yaml --out runs/<name>``.

The Snakemake rules call this entry point; ``torchrun --nproc_per_node N -m deq.train ...`` runs it
data-parallel (DDP; gloo on CPU, NCCL on GPUs). The run folder receives:

- ``config.yaml``: the resolved config; ``metadata.json``: git revision, versions, device, seed, times;
- ``metrics.jsonl``: one line per logged step (fields: ``deq.engine.records.REQUIRED_METRIC_FIELDS``);
- ``traces.jsonl``: forward/backward solver convergence traces at the first, every ``trace_every``-th
  and the last step;
- ``checkpoint.pt``: the latest checkpoint (atomic); a rerun with the same ``--out`` resumes from it (and
  refuses, naming the keys, if the config changed); ``checkpoint-step<N>.pt``: copies kept at ``keep_steps``.
  a damaged ``checkpoint.pt`` (its CRCs, :mod:`deq.engine.checkpoint`) is refused with its path, and the run
  resumes from the newest intact kept copy (the next checkpoint overwrites the damaged file), or stops
  naming both;
- ``.lock``: held while the run trains; a second ``deq.train`` on the same ``--out`` is refused;
- ``result.json``: final validation and test perplexity (or copy-memory test loss) and peak memory;
  ``embedding_state_bytes`` (word-embedding parameters, gradients and Adam moments) is what to
  subtract from a device peak for the paper's embeddings-excluded protocol. Copy memory has no
  validation split: its "valid" loss is on the first ``copy_n_test`` training sequences.

Training: Adam, linear warm-up then cosine decay, gradient clipping, gradient accumulation, the
DEQ pretraining switch (the first ``pretrain_steps`` as the weight-tied stack), bf16 autocast on
CUDA. Each step's global batch of ``batch_size`` streams is split over processes, then over
micro-batches, each with its own segment memory, so the gradient of a step does not depend on how
it is split. Solver non-convergence is only recorded.

A diverged run fails (non-zero exit, no ``result.json``), naming the step, the cause and the last good
checkpoint: a loss that is not finite or whose perplexity overflows a float64 (``DIVERGED_LOSS``), a
non-finite gradient norm (caught before the optimiser step), non-finite weights after it, a non-finite
evaluation, or any error inside a step (an overflowing learning rate). No checkpoint ever holds a
non-finite value, so the last good one resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from deq.engine.checkpoint import (LATEST, CheckpointError, load_checkpoint, rng_state, save_checkpoint,
                                   set_rng_state)
from deq.engine.config import TrainConfig, lm_row, load_config, to_dict
from deq.engine.memory import MEMORY_FIELDS, AllocatorPeak, MemoryMonitor, adam_state_bytes
from deq.engine.records import (MetricsWriter, TraceWriter, finish_metadata, read_jsonl, run_metadata,
                                solver_metrics, write_metadata)
from deq.evaluate import copy_memory_loss, perplexity
from deq.io import atomic_write_text, exclusive_lock
from deq.rows.build import build_copy_model, build_model
from deq.rows.configs import COPY_CONFIGS

DIVERGED_LOSS = math.log(sys.float_info.max)  # ~709.8 nats per token: beyond it exp(loss) overflows a float64


# ---- setup ------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: 'cuda' but this torch ({torch.__version__}) sees no CUDA device; choose "
                         f"'auto' (CUDA where available, else the CPU) or 'cpu'")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def lr_lambda(cfg: TrainConfig):
    """Multiplier of cfg.lr at a step: linear warm-up, then cosine to min_lr at max_steps."""
    def at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return at


# ---- the two tasks behind one interface ---------------------------------------------------------------

class LanguageModelTask:
    """Segments of B contiguous streams; position = token offset into the streams."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        from deq.data import batchify, prepare

        self.row = lm_row(cfg)
        dataset = self.row.dataset
        corpus = prepare(dataset, cfg.data_root, cfg.data_mirror)
        if len(corpus.vocab) != self.row.n_token:
            raise ValueError(f"{dataset} has {len(corpus.vocab)} words but {cfg.model} expects {self.row.n_token}")
        self.corpus, self.cfg, self.device = corpus, cfg, device
        streams = batchify(corpus.train, cfg.batch_size)  # (B, N)
        per_rank = _split(cfg.batch_size, world, cfg.grad_accum)
        rows = streams[rank * per_rank:(rank + 1) * per_rank]  # this process's streams
        self.micro = [m.to(device) for m in rows.chunk(cfg.grad_accum)]  # one group per micro-batch
        self.length = streams.size(1) - 1
        self.pretrain_steps = self.row.pretrain_steps if cfg.pretrain_steps is None else cfg.pretrain_steps

    def build(self) -> nn.Module:
        return build_model(self.row)

    def set_step(self, model: nn.Module, step: int) -> None:
        if self.row.driver == "deq":
            model.set_pretraining(self.row.n_layer if step < self.pretrain_steps else None)

    def batch(self, state: dict, micro: int):
        """(inputs, targets) of one micro-batch at the state's position; advances nothing."""
        pos = state["position"]
        T = min(self.cfg.tgt_len, self.length - pos)
        streams = self.micro[micro]
        return streams[:, pos:pos + T], streams[:, pos + 1:pos + 1 + T]

    def advance(self, state: dict) -> None:
        state["position"] += self.cfg.tgt_len
        if state["position"] >= self.length:  # a new epoch starts from the beginning, without memory
            state["position"], state["epoch"] = 0, state["epoch"] + 1
            state["memory"] = [None] * self.cfg.grad_accum

    def loss(self, model: nn.Module, inputs, targets, memory):
        out = model(inputs, targets, memory)
        loss = out.loss if out.aux_loss is None else out.loss + self.row.aux_weight * out.aux_loss
        return loss, out.loss, out.memory, out.info, inputs.numel()

    def evaluate(self, model: nn.Module, split: str) -> dict:
        tokens = getattr(self.corpus, split)
        cap = self.cfg.eval_max_tokens if split == "valid" else self.cfg.test_max_tokens
        ppl = perplexity(model, tokens, self.cfg.eval_batch_size, self.cfg.eval_tgt_len, self.cfg.eval_mem_len, cap,
                         self.device)
        return {f"{split}_ppl": ppl, f"{split}_tokens": min(len(tokens) - 1, cap or len(tokens))}

    def embedding_pointers(self, model: nn.Module) -> set[int]:
        return {p.data_ptr() for p in model.embedding.parameters()}


class CopyMemoryTask:
    """Shuffled fixed-length sequences; position = sample offset into this epoch's permutation."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        from deq.data import copy_memory_splits

        splits = copy_memory_splits(cfg.copy_T, cfg.seed, cfg.copy_n_train, cfg.copy_n_test)
        (self.x, self.y), (self.x_test, self.y_test) = splits["train"], splits["test"]
        self.cfg, self.rank, self.device = cfg, rank, device
        self.per_rank = _split(cfg.batch_size, world, cfg.grad_accum)
        self.row, self.pretrain_steps = COPY_CONFIGS[cfg.model], 0

    def build(self) -> nn.Module:
        return build_copy_model(self.cfg.model)

    def set_step(self, model: nn.Module, step: int) -> None:
        pass

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def batch(self, state: dict, micro: int):
        order = self._order(state["epoch"])
        size = self.per_rank // self.cfg.grad_accum
        start = state["position"] + self.rank * self.per_rank + micro * size
        idx = order[start:start + size]
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def advance(self, state: dict) -> None:
        state["position"] += self.cfg.batch_size
        if state["position"] + self.cfg.batch_size > len(self.x):
            state["position"], state["epoch"] = 0, state["epoch"] + 1

    def loss(self, model: nn.Module, inputs, targets, memory):
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return loss, loss, None, getattr(_unwrap(model), "info", None), inputs.numel()

    def evaluate(self, model: nn.Module, split: str) -> dict:
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x[:self.cfg.copy_n_test],
                                                                    self.y[:self.cfg.copy_n_test])
        return {f"{split}_loss": copy_memory_loss(model, x, y, self.cfg.eval_batch_size, self.device)}

    def embedding_pointers(self, model: nn.Module) -> set[int]:
        embedding = getattr(model, "embedding", None)
        return {p.data_ptr() for p in embedding.parameters()} if embedding is not None else set()


def _split(batch_size: int, world: int, grad_accum: int) -> int:
    if batch_size % (world * grad_accum):
        raise ValueError(f"batch_size={batch_size} must divide by world size x grad_accum = {world * grad_accum}")
    return batch_size // world


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---- the loop ---------------------------------------------------------------------------------------

class TrainingFailed(RuntimeError):
    """A run that diverged or whose step raised; the message names the step, the cause and the last good
    checkpoint."""


def train(cfg: TrainConfig, out: Path) -> dict:
    """Train ``cfg`` in the run folder ``out`` (resuming its checkpoint) and return the result (rank 0)."""
    rank, world = distributed()
    device = pick_device(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / ".lock", wait=False, what=f"the run folder {out}") if rank == 0 else nullcontext():
        return _train(cfg, out, rank, world, device)


def resume_point(out: Path) -> tuple[Path, dict] | None:
    """The newest intact checkpoint of the run folder ``out`` as (path, state), or None for a fresh run.

    ``checkpoint.pt`` first; if it is damaged, the newest intact ``checkpoint-step<N>.pt``; if none is,
    :class:`CheckpointError` naming the damaged file and what was tried.
    """
    latest = out / LATEST
    if not latest.exists():
        return None
    try:
        return latest, load_checkpoint(latest)
    except CheckpointError as damaged:
        kept = sorted(out.glob("checkpoint-step*.pt"), key=lambda p: int(p.stem.removeprefix("checkpoint-step")),
                      reverse=True)
        refused = []
        for path in kept:
            try:
                saved = load_checkpoint(path)
            except CheckpointError as error:
                refused.append(str(error))
                continue
            print(f"{damaged}; resuming from the kept checkpoint {path} (step {saved['state']['step']}) instead",
                  file=sys.stderr)
            return path, saved
        tried = "; ".join(refused) if refused else "none is kept (the config's keep_steps)"
        raise CheckpointError(f"{damaged}, and no intact kept checkpoint-step<N>.pt to fall back to: {tried}. "
                              f"Remove {out} to start the run over") from None


def _train(cfg: TrainConfig, out: Path, rank: int, world: int, device: torch.device) -> dict:
    seed_everything(cfg.seed)
    task = (CopyMemoryTask if cfg.is_copy_memory else LanguageModelTask)(cfg, rank, world, device)
    model = task.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state = {"step": 0, "epoch": 0, "position": 0, "memory": [None] * cfg.grad_accum}

    checkpoint_path = out / LATEST
    last_good = "none yet (a rerun starts the run over)"
    resumed = resume_point(out)
    if resumed is not None:
        resumed_path, saved = resumed
        changed = sorted(k for k, v in to_dict(cfg).items() if saved["config"].get(k) != v)
        if changed:
            raise ValueError(f"{resumed_path} was written with a different config (keys {changed} differ); "
                             f"restore that config to resume, or remove {out} to start over")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if len(saved["rng"]) != world:
            raise ValueError(f"{resumed_path} was written by {len(saved['rng'])} processes; resume it with "
                             f"as many, not {world}")
        state = {**saved["state"], "memory": _to_device(saved["state"]["memory"][rank], device)}
        set_rng_state(saved["rng"][rank])
        last_good = f"{resumed_path} (step {state['step']})"
    ddp = world > 1
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    lead = rank == 0
    metrics = MetricsWriter(out / "metrics.jsonl") if lead else None
    traces = TraceWriter(out / "traces.jsonl") if lead else None
    if lead:
        metrics.truncate_after(state["step"])
        traces.truncate_after(state["step"])
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        meta = run_metadata(to_dict(cfg), cfg.seed)
        write_metadata(out / "metadata.json", meta)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda"
                else nullcontext())
    embedding = task.embedding_pointers(model)
    # Word embeddings' parameters, gradients and both Adam moments: subtract from a device peak to
    # get the paper's "embeddings excluded" memory (activations have their own excluded count).
    embedding_state_bytes = adam_state_bytes(p for p in model.parameters() if p.data_ptr() in embedding)

    with MemoryMonitor() as monitor:
        bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not lead, desc=cfg.model)
        while state["step"] < cfg.max_steps:
            step = state["step"] + 1
            task.set_step(model, state["step"])
            net.train()
            start = time.perf_counter()
            traced = step == 1 or step % cfg.trace_every == 0 or step == cfg.max_steps
            total_loss, tokens, info = 0.0, 0, None
            # The last step's allocator peak (forward and backward; weights and Adam moments excluded):
            # the run's training memory, measured in the run (figure size_sweep).
            measured = step == cfg.max_steps
            lr = scheduler.get_last_lr()[0]
            try:
                with AllocatorPeak(device) if measured else nullcontext() as peak:
                    for micro in range(cfg.grad_accum):
                        inputs, targets = task.batch(state, micro)
                        sync = ddp and micro < cfg.grad_accum - 1
                        with (net.no_sync() if sync else nullcontext()), \
                                (monitor.saved_activations(exclude=embedding) if traced else nullcontext()), autocast:
                            loss, lm_loss, memory, info, n = task.loss(net, inputs, targets, state["memory"][micro])
                            (loss / cfg.grad_accum).backward()
                        state["memory"][micro] = memory
                        total_loss += lm_loss.item() / cfg.grad_accum
                        tokens += n
                if not total_loss <= DIVERGED_LOSS:  # NaN fails this too
                    raise TrainingFailed(f"the loss diverged to {total_loss:g} (limit {DIVERGED_LOSS:.1f}); last "
                                         f"solver residuals: {solver_metrics(info)}")
                # Clips where cfg.clip > 0; the norm is computed either way, to refuse a non-finite gradient
                # before it reaches the weights.
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip or math.inf))
                if not math.isfinite(grad_norm):
                    raise TrainingFailed(f"the gradient norm is {grad_norm} (loss {total_loss:g})")
                optimizer.step()
                bad = nonfinite_parameters(model)
                if bad:
                    raise TrainingFailed(f"the optimiser step made {len(bad)} parameter tensors non-finite "
                                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at lr {lr:g}, "
                                         f"gradient norm {grad_norm:g}")
            except TrainingFailed as error:
                raise TrainingFailed(f"step {step}: {error}; the last good checkpoint is {last_good}") from None
            except Exception as error:
                raise TrainingFailed(f"step {step} failed at lr {lr:g}: {type(error).__name__}: {error}; the last "
                                     f"good checkpoint is {last_good}") from error
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            task.advance(state)
            state["step"] = step
            elapsed = time.perf_counter() - start

            evaluation = task.evaluate(model, "valid") if lead and cfg.eval_every and step % cfg.eval_every == 0 else {}
            check_evaluation(evaluation, step, last_good)
            if lead and (step % cfg.log_every == 0 or step == cfg.max_steps or evaluation):
                memory_record = {**monitor.record(), "embedding_state_bytes": embedding_state_bytes}
                line = {"step": step, "loss": total_loss, "ppl": math.exp(min(total_loss, 50.0)), "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": tokens * world / elapsed, "step_time_s": elapsed,
                        **solver_metrics(info), **memory_record, **evaluation,
                        "train_step_peak_bytes": peak.bytes if measured else None}
                metrics.write(line)
                bar.set_postfix(loss=f"{total_loss:.3f}", ppl=f"{line['ppl']:.1f}", it=line["fwd_iters"],
                                tok_s=f"{line['tokens_per_s']:.0f}")
            if lead and traced and info is not None:
                traces.add(step, "forward", info.forward)
                if info.backward is not None:
                    traces.add(step, "backward", info.backward)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or step in cfg.keep_steps:
                _checkpoint(checkpoint_path, model, optimizer, scheduler, state, cfg, world, lead)
                last_good = f"{checkpoint_path} (step {step})"
                if lead and step in cfg.keep_steps:
                    keep_copy(checkpoint_path, out / f"checkpoint-step{step}.pt")
            bar.update(1)
        bar.close()
        result = {}
        if lead:
            n_params = sum(p.numel() for p in model.parameters())
            n_embedding = sum(p.numel() for p in model.parameters() if p.data_ptr() in embedding)
            peaks = peak_memory_over_run(out / "metrics.jsonl", monitor.record())
            result = {**task.evaluate(model, "valid"), **task.evaluate(model, "test"), **peaks,
                      "embedding_state_bytes": embedding_state_bytes, "params": n_params,
                      "train_step_peak_bytes": _last_logged(out / "metrics.jsonl", "train_step_peak_bytes"),
                      "params_nonembedding": n_params - n_embedding, "steps": state["step"]}
            check_evaluation(result, state["step"], last_good)  # a failure, not a result: no result.json
            atomic_write_text(out / "result.json", json.dumps(result, indent=2))
            write_metadata(out / "metadata.json", finish_metadata(meta))
    if ddp:
        dist.barrier()
    return result


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (one device sync when there are none)."""
    if bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        return []
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def check_evaluation(metrics: dict, step: int, last_good: str) -> None:
    """Raise :class:`TrainingFailed` if a perplexity or loss in ``metrics`` is not finite."""
    diverged = {k: v for k, v in metrics.items() if k.endswith(("_ppl", "_loss")) and not math.isfinite(v)}
    if diverged:
        raise TrainingFailed(f"step {step}: the evaluation diverged ({diverged}); the last good checkpoint is "
                             f"{last_good}")


def peak_memory_over_run(metrics_path: Path, record: dict) -> dict:
    """The monitor's record with each memory field raised to its largest logged value: a resumed run's
    monitor has seen only the steps since the resume (none, if it resumed at the end)."""
    logged = read_jsonl(metrics_path) if metrics_path.exists() else []
    peaks = dict(record)
    for field in MEMORY_FIELDS:
        values = [v for v in [record.get(field), *(line.get(field) for line in logged)] if v is not None]
        peaks[field] = max(values) if values else None
    return peaks


def _last_logged(metrics_path: Path, field: str):
    """The newest logged value of ``field`` (None where no line has one)."""
    values = [line[field] for line in read_jsonl(metrics_path) if line.get(field) is not None]
    return values[-1] if values else None


def keep_copy(source: Path, target: Path) -> None:
    """Copy a checkpoint to ``target`` through a temporary file: never a half-written copy."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _to_device(memory, device):
    if isinstance(memory, torch.Tensor):
        return memory.to(device)
    if isinstance(memory, (list, tuple)):
        return type(memory)(_to_device(m, device) for m in memory)
    return memory


def _checkpoint(path: Path, model, optimizer, scheduler, state: dict, cfg: TrainConfig, world: int,
                lead: bool) -> None:
    """Each process's RNG state and segment memory are gathered, so each resumes its own; rank 0 writes."""
    rng, memory = [rng_state()], [_to_device(state["memory"], "cpu")]
    if world > 1:
        rng, memory = [None] * world, [None] * world
        dist.all_gather_object(rng, rng_state())
        dist.all_gather_object(memory, _to_device(state["memory"], "cpu"))
    if lead:
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "rng": rng, "config": to_dict(cfg),
                               "state": {**state, "memory": memory}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the run's YAML (keys: deq.engine.config)")
    parser.add_argument("--out", required=True, type=Path, help="run folder; an existing checkpoint resumes")
    args = parser.parse_args(argv)
    result = train(load_config(args.config), args.out)
    if result:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
