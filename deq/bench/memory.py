"""Training-memory benchmark: the paper's protocol for every row of Tables 2-3.

``run_memory_benchmark(preset)``: every row of :data:`deq.rows.configs.CONFIGS` (each DEQ and each
explicit counterpart) trains ``steps`` steps (forward + backward + Adam; the first ones warm up and
create the segment memory) on random tokens at sequence 150, batch 15, and the last step is measured
with word embeddings excluded, as the paper's tables (PAPER.md, "Memory columns"):

- ``memory_bytes``: the allocator's peak over forward + backward with the word embedding frozen
  (:class:`~deq.engine.memory.AllocatorPeak`: ``torch.cuda.max_memory_allocated`` on CUDA, ``method``
  'cuda-max-allocated'; on CPU, which has no such counter, the largest running total of the
  allocations the profiler recorded, ``method`` 'cpu-allocator-peak'), plus what was alive before the
  step apart from the embedding (weights and Adam moments). It holds activations, solver buffers,
  gradients and the backward's temporaries. Excluding the embedding by subtracting its state is not
  enough: the dense gradient of a 267K-word embedding and its backward's temporaries make most of a
  small row's peak, so the measured step leaves the embedding (and a softmax weight tied to it) out of
  the backward. The optimiser's update is left out too: Adam's foreach kernels allocate a temporary
  copy of every parameter. On CUDA the allocator's peak over that whole step, embedding and update
  included, is kept beside it (``cuda_step_peak_bytes``), with NVML's process peak
  (:class:`~deq.engine.memory.MemoryMonitor`; it includes the CUDA context and the allocator's cache, so it
  is not embedding-free). The profiler slows the measured CPU step (``step_s``);
- everywhere, an account of the bytes that make the peak: the bytes autograd saved for backward,
  embedding excluded (``activation_bytes``; of them, those saved inside the driver:
  ``driver_activation_bytes``); the solvers' buffers, *computed* from the solver's code, its history
  m and the state size B x T x d_state (see :func:`solver_buffer_bytes`; the forward and backward
  solves do not overlap, so the larger one counts); the non-embedding parameters, gradients and Adam
  moments as the optimizer holds them; ``total_bytes`` is their sum. It names the parts and misses
  the temporaries. Peak RSS (sampled over the measured step) is given too; it includes the
  embedding, the Python interpreter and whatever the allocator keeps, so it is context, not the
  protocol's number.

Tokens are drawn from a Zipf (1/rank) law, the shape of a frequency-sorted vocabulary: uniform ids
would put most targets in the adaptive softmax's tail clusters and inflate its activations. A DEQ
row is measured as a DEQ (after pretraining). Rows too large for the machine (a per-row time budget
and half the free memory, estimated from FLOP and parameter counts before anything runs) run at the
largest scale of a ladder that fits: paper widths at batch 15, 8, 4, 2, 1, then the ``cpu`` preset's
widths at the paper's depth, then the ``cpu`` preset itself (depth / 4), each at batch 15 ... 1; the
``scale`` column says which ran and ``scale_reason`` why. Activation checkpointing hides its saves from
the hooks, so a checkpointed row adds what it keeps: every layer's input z and one layer recomputed in
the backward (``activation_method`` says so). A DEQ and its explicit
counterparts always run at one scale, so each explicit row's ``reduction`` (1 - DEQ / this row) is
like for like; ``driver_reduction`` compares only the driver's accounted part (its activations, solver buffers
and parameter state), without the embedding-side softmax that both rows share.

Memory against effective depth (DEQ vs weight-tied stack) is :mod:`deq.bench.depth`.

>>> solver_buffer_bytes("broyden", max_iter=30, options={"m": 8}, batch=2, d=100)  # U, V + best iterate
13600
"""

from __future__ import annotations

import gc
import inspect
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from baselines.drivers import WeightTiedDriver
from deq.engine.memory import AllocatorPeak, MemoryMonitor, SavedActivations, adam_state_bytes, device_name
from deq.io import atomic_write_text
from deq.models.drivers import DEQDriver
from deq.rows.build import build_cell, build_model
from deq.rows.configs import CONFIGS, LMConfig, get_config
from deq.settings import SolverSettings
from deq.solvers import SOLVERS

__all__ = ["PAIRS", "PRESETS", "Scale", "run_memory_benchmark", "solver_buffer_bytes"]

PRESETS = ("smoke", "cpu", "paper")
PROTOCOL_SEQ, PROTOCOL_BATCH = 150, 15  # the paper's memory protocol
# DEQ row -> its explicit counterparts in the paper's tables.
PAIRS = {
    "ptb-deq-trellisnet": ("ptb-trellisnet-60-aux",),
    "wt103-deq-trellisnet": ("wt103-trellisnet-70-aux", "wt103-trellisnet-70-aux-checkpoint"),
    "wt103-deq-transformer-medium": ("wt103-transformer-xl-medium-16",),
    "wt103-deq-transformer-medium-adaptive": ("wt103-transformer-xl-medium-18-adaptive",),
    "wt103-deq-transformer-small": ("wt103-transformer-xl-small-4", "wt103-transformer-xl-small-tied-16"),
}
MB = 1e6


# ---- what the solvers hold ------------------------------------------------------------------------

def solver_buffer_bytes(solver: str, max_iter: int, options: dict, batch: int, d: int, itemsize: int = 4) -> int:
    """Bytes a solve allocates for its history, computed from the solver's code (deq/solvers/).

    ``d`` is one sample's flattened state, T x d_state. Anderson: dG and dS (B, m, d) each, the probe
    (B, 2, d) and the float64 Gram matrix (B, m, m); Broyden: U and V (B, m, d) each, m = max_iter
    unless given (and never above it); Picard: nothing. Every solver's trace also keeps its best
    iterate (B, d). The working vectors (B, d) of the current step are not counted: measured with a cheap
    f (its output included), Anderson 6, Broyden 14, Picard 5, whatever the cap
    (``tests/test_bench_memory.py``). Broyden holds
    ``max_iter - 1`` slots at most (the official ``threshold``; see :mod:`deq.solvers.broyden`).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(SOLVERS)}")
    m = options.get("m", inspect.signature(SOLVERS[solver]).parameters.get("m", None))
    m = getattr(m, "default", m)
    if solver == "broyden":
        m = max(1, max_iter - 1 if m is None else min(m, max_iter - 1))
    vectors = {"anderson": lambda: 2 * m + 2, "broyden": lambda: 2 * m, "picard": lambda: 0}[solver]() + 1
    gram = batch * m * m * 8 if solver == "anderson" else 0
    return vectors * batch * d * itemsize + gram


def deq_buffer_bytes(settings: SolverSettings, batch: int, seq_len: int, d_state: int) -> tuple[int, int]:
    """(forward, backward) solver buffers of a DEQ training step, each with its own solver options; a
    segment solved in subsequences (``settings.subseq_len``) holds one subsequence's at a time."""
    d = min(settings.subseq_len or seq_len, seq_len) * d_state
    forward = solver_buffer_bytes(settings.solver, settings.max_iter, settings.solver_options, batch, d)
    backward = (solver_buffer_bytes(settings.backward_solver, settings.backward_max_iter,
                                    settings.backward_options, batch, d)
                if settings.backward == "implicit" else 0)
    return forward, backward


class _SplitCounter(SavedActivations):
    """Saved-tensor bytes (``exclude`` left out), with the part saved while ``inside`` is set apart."""

    def __init__(self, exclude=()):
        super().__init__(exclude)
        self.inside, self.inside_bytes = False, 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        before = self.bytes_excluding
        out = super()._pack(tensor)
        if self.inside:
            self.inside_bytes += self.bytes_excluding - before
        return out


# ---- estimates: what fits ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    preset: str  # widths (and everything else) of get_config's preset: 'paper', 'cpu' or 'smoke'
    paper_depth: bool  # keep the paper row's n_layer (and aux readouts) instead of the preset's
    seq_len: int  # tokens per sample (the protocol: 150)
    batch: int  # samples per step (the protocol: 15)

    @property
    def label(self) -> str:
        if self.preset == "paper" or self.paper_depth:
            what = f"{self.preset} widths" + ("" if self.preset == "paper" else ", paper depth")
        else:
            what = f"{self.preset} preset"
        return f"{what}, {self.seq_len} x {self.batch}"


def config_at(name: str, scale: Scale) -> LMConfig:
    """Row ``name`` at ``scale``: the preset's config, with the paper's depth if the scale keeps it."""
    cfg = get_config(name, scale.preset)
    if scale.paper_depth and scale.preset != "paper":
        paper = get_config(name)
        cfg = replace(cfg, n_layer=paper.n_layer, aux_every=paper.aux_every)
    return cfg


# Paper widths first, then CPU widths at the paper's depths (the depth ratio drives the reduction), then
# the cpu preset (depth / 4); each with batch 15 down to 1.
LADDER = tuple(Scale(p, deep, PROTOCOL_SEQ, b) for p, deep in (("paper", True), ("cpu", True), ("cpu", False))
               for b in (15, 8, 4, 2, 1))
ROW_BUDGET_S = {"cpu": 30.0, "paper": 900.0}  # seconds for all steps of one row, estimated


def _zipf_mass(n_token: int, lo: int, hi: int) -> float:
    def harmonic(n: int) -> float:
        return math.log(n) + 0.5772 + 1 / (2 * n) if n else 0.0
    return (harmonic(hi) - harmonic(lo)) / harmonic(n_token)


def state_width(cfg: LMConfig) -> int:
    """Channels of the row's state z: d_model for the transformer cell, [h; c] for the TrellisNet's."""
    return cfg.d_model if cfg.family == "transformer" else 2 * cfg.cell.d_hidden


def _costs(cfg: LMConfig, scale: Scale) -> tuple[float, float, float]:
    """(forward FLOPs of one f, bytes one f saves, FLOPs of the injection), per token; rough, for planning."""
    cell, T = cfg.cell, scale.seq_len
    if cfg.family == "transformer":
        d, hd, keys = cell.d_model, cell.n_head * cell.d_head, T + min(cfg.mem_len, T)
        flops = 2 * (keys / T * d * 3 * hd + hd * d + 2 * d * cell.d_inner) + 6 * keys * hd
        return flops, 4 * (4 * cell.n_head * keys + 16 * d + 6 * hd + 3 * cell.d_inner), 2 * d * 3 * hd
    dh = cell.d_hidden
    return 2 * 2 * dh * 4 * dh, 4 * 14 * dh, 2 * 2 * cell.d_embed * 4 * dh


def _softmax_costs(cfg: LMConfig) -> tuple[float, float]:
    """(forward FLOPs, saved bytes) per token of the tied adaptive softmax under Zipf targets."""
    bounds = (0, *cfg.cutoffs, cfg.n_token)
    widths = [cfg.d_embed // cfg.div_val ** i for i in range(len(bounds) - 1)]
    head = bounds[1] + len(bounds) - 2
    flops, saved = 2 * head * widths[0], 12 * head
    for i in range(1, len(widths)):
        p = _zipf_mass(cfg.n_token, bounds[i], bounds[i + 1])
        flops += p * 2 * (bounds[i + 1] - bounds[i] + cfg.d_model) * widths[i]
        saved += p * 12 * (bounds[i + 1] - bounds[i])
    return flops, saved


@lru_cache(maxsize=None)
def _parameter_counts(name: str, preset: str, paper_depth: bool) -> tuple[int, int]:
    """(all parameters, embedding parameters) of a row, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(config_at(name, Scale(preset, paper_depth, 1, 1)))
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.embedding.parameters())


def _throughput(device: str) -> float:
    """FLOP/s assumed for these models: fixed, so that the same machine always plans the same scales.

    A CPU core sustains about 25 GFLOP/s on them (measured here: 40-130 GFLOP/s on 2 cores, lower for
    TrellisNet's convolutions and small batches); a GPU is taken at 20 TFLOP/s (float32, H100 class).
    """
    return 20e12 if device == "cuda" else 25e9 * torch.get_num_threads()


def estimate(cfg: LMConfig, scale: Scale, steps: int, device: str) -> tuple[float, float]:
    """(seconds for ``steps`` training steps, peak bytes) of a row at ``scale``: FLOP and byte counts."""
    tokens = scale.seq_len * scale.batch
    n_params, _ = _parameter_counts(cfg.name, scale.preset, scale.paper_depth)
    f_flops, f_bytes, inject = _costs(cfg, scale)
    sm_flops, sm_bytes = _softmax_costs(cfg)
    readouts = 1 + cfg.n_aux_readouts
    d_state = state_width(cfg)
    buffers = 0
    if cfg.driver == "deq":  # the forward solve to its cap, the tracked f(z*) and the backward VJPs (~2 f each)
        s = cfg.solver
        evals, injects, applied = s.max_iter + 3 + 2 * s.backward_max_iter, 3, 1
        buffers = max(deq_buffer_bytes(s, scale.batch, scale.seq_len, d_state))
    else:
        evals = (4 if cfg.checkpoint else 3) * cfg.n_layer
        injects = 3 * (cfg.n_layer if cfg.driver == "untied" else 1)
        applied = 1 + cfg.n_layer * 4 * d_state / f_bytes if cfg.checkpoint else cfg.n_layer
    flops = tokens * (evals * f_flops + injects * inject + 3 * readouts * sm_flops) + 20 * n_params
    peak = 16 * n_params + tokens * (applied * f_bytes + readouts * sm_bytes) + buffers
    return steps * flops / _throughput(device), peak


def _memory_budget(device: str) -> float:
    """Half the free memory of the device (CPU: MemAvailable), in bytes."""
    if device == "cuda":
        return 0.8 * torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return 0.5 * int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8e9


def plan(names: tuple[str, ...], ladder: tuple[Scale, ...], budget_s: float, steps: int,
         device: str) -> tuple[Scale, str]:
    """The first scale of ``ladder`` at which every row of ``names`` fits; the last one otherwise."""
    memory, first_miss = _memory_budget(device), None
    for scale in ladder:
        worst = max((estimate(config_at(n, scale), scale, steps, device) for n in names),
                    key=lambda e: (e[0] / budget_s, e[1] / memory))
        seconds, peak = worst
        if seconds <= budget_s and peak <= memory:
            head = f"{first_miss}; " if first_miss else ""
            return scale, f"{head}fits: ~{seconds:.0f} s, ~{peak / 1e9:.1f} GB est."
        if first_miss is None:
            first_miss = (f"{scale.label} est. ~{seconds:.0f} s (budget {budget_s:.0f} s/row), "
                          f"~{peak / 1e9:.1f} GB (budget {memory / 1e9:.0f} GB)")
    return ladder[-1], f"{first_miss}; nothing smaller on the ladder"


# ---- protocol benchmark: one row ------------------------------------------------------------------

def zipf_tokens(n_token: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random ids with P(id) proportional to 1 / (id + 1): a frequency-sorted vocabulary's shape."""
    weights = 1.0 / torch.arange(1, n_token + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, math.prod(shape), replacement=True,
                            generator=torch.Generator().manual_seed(seed))
    return ids.view(shape)


def _state_bytes(params, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, gradients and optimizer state tensors of ``params``, as they are held now."""
    total = 0
    for p in params:
        tensors = [p, p.grad, *(v for v in optimizer.state.get(p, {}).values()
                                if isinstance(v, torch.Tensor) and v.dim() > 0)]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


@contextmanager
def _frozen(params) -> Iterator[None]:
    """``params`` need no gradient inside the block (then they do again)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def measure_row(cfg: LMConfig, scale: Scale, steps: int, device: str, cheap_warmup: bool = False) -> dict:
    """Train ``steps`` steps of row ``cfg`` at ``scale``; measure the last one (see the module docstring).

    ``cheap_warmup``: a DEQ row's warm-up steps run its cell as a one-layer stack (the pretraining
    switch): they make the same segment memory and optimiser state at a fraction of a solve's time.
    """
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    embedding = {p.data_ptr() for p in model.embedding.parameters()}
    embedding_state = adam_state_bytes(model.embedding.parameters())
    # Drawn at the protocol's batch (or more) and cut: a smaller batch measures the first samples of the
    # larger one, so that measurements at several batches differ by their size, not by their tokens.
    draw = (steps, max(scale.batch, PROTOCOL_BATCH), scale.seq_len + 1)
    tokens = zipf_tokens(cfg.n_token, draw)[:, : scale.batch].to(device)
    counter = _SplitCounter(exclude=embedding)
    hooks = [model.driver.register_forward_pre_hook(lambda *_: setattr(counter, "inside", True)),
             model.driver.register_forward_hook(lambda *_: setattr(counter, "inside", False))]
    layer_inputs: list = []  # a checkpointed layer's (z, injection, memory), to recount one layer

    def keep_inputs(_module, args, _output) -> None:
        if not layer_inputs:
            layer_inputs.append(args)
    if cfg.checkpoint:
        hooks.append(model.driver.cell.register_forward_hook(keep_inputs))
    memory, walls = None, []
    for step in range(steps):
        measured = step == steps - 1
        if cheap_warmup and cfg.driver == "deq":
            model.set_pretraining(None if measured else 1)
        start = time.perf_counter()
        if measured:  # alive before the step, embedding excluded: weights and Adam moments (no gradients)
            held_before = _state_bytes([p for p in model.parameters() if p.data_ptr() not in embedding], optimizer)
        with MemoryMonitor() if measured else nullcontext() as monitor, counter if measured else nullcontext(), \
                _frozen(model.embedding.parameters()) if measured else nullcontext():
            # The peak of forward + backward; the update's own temporaries (Adam's foreach kernels allocate
            # a copy of every parameter) are the optimiser's, not the model's.
            with AllocatorPeak(device) if measured else nullcontext() as peak:
                out = model(tokens[step, :, :-1], tokens[step, :, 1:], memory)
                loss = out.loss if out.aux_loss is None else out.loss + cfg.aux_weight * out.aux_loss
                loss.backward()
            optimizer.step()
            if measured:
                param_state = _state_bytes([p for p in model.parameters() if p.data_ptr() not in embedding], optimizer)
                driver_state = _state_bytes(list(model.driver.parameters()), optimizer)
            optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        memory = out.memory
    for hook in hooks:
        hook.remove()
    record = monitor.record()
    activations, driver_activations = counter.bytes_excluding, counter.inside_bytes
    activation_method = "saved-tensor hooks"
    if cfg.checkpoint and layer_inputs:  # checkpointing hides its saves: inputs kept + one layer recomputed
        z, *rest = layer_inputs[0]
        with SavedActivations(embedding) as one_layer:
            model.driver.cell(z.detach().requires_grad_(), *rest)
        extra = cfg.n_layer * z.numel() * z.element_size() + one_layer.bytes_excluding
        activations, driver_activations = activations + extra, driver_activations + extra
        activation_method += " + checkpoint inputs (n_layer x z) + one layer recomputed"
    row = {"fwd_iters": None, "bwd_iters": None, "fwd_buffer_bytes": 0, "bwd_buffer_bytes": 0}
    if cfg.driver == "deq":
        info = out.info
        fwd, bwd = deq_buffer_bytes(cfg.solver, scale.batch, scale.seq_len, model.driver.cell.d_state)
        row.update(fwd_iters=info.forward.n_iter, bwd_iters=info.backward and info.backward.n_iter,
                   fwd_buffer_bytes=fwd, bwd_buffer_bytes=bwd)
    buffers = max(row["fwd_buffer_bytes"], row["bwd_buffer_bytes"])
    total = activations + buffers + param_state
    row.update(
        param_state_bytes=param_state, driver_param_state_bytes=driver_state, embedding_state_bytes=embedding_state,
        activation_bytes=activations, driver_activation_bytes=driver_activations, activation_method=activation_method,
        total_bytes=total, driver_bytes=driver_activations + buffers + driver_state,
        cuda_step_peak_bytes=record["cuda_max_allocated_bytes"], nvml=record["nvml"], nvml_reason=record["nvml_reason"],
        nvml_process_peak_bytes=record["gpu_process_peak_bytes"], rss_peak_bytes=record["rss_sampled_peak_bytes"],
        method="cuda-max-allocated" if device == "cuda" else "cpu-allocator-peak",
        memory_bytes=held_before + peak.bytes,
        step_s=walls[-1], warmup_s=sum(walls[:-1]),
    )
    del model, optimizer, out, loss, memory
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


# ---- protocol benchmark: every row ------------------------------------------------------------------

def _groups() -> list[tuple[str, ...]]:
    """Each DEQ row with its counterparts, in the registry's order of the DEQ rows."""
    return [(deq_name, *counterparts) for deq_name, counterparts in PAIRS.items()]


def run_memory_benchmark(preset: str = "cpu", csv_path: str | Path | None = None, md_path: str | Path | None = None,
                         *, steps: int = 2, budget_s: float | None = None) -> list[dict]:
    """One row per CONFIGS row (in its order) at the paper's protocol or the largest scale that fits.

    ``smoke`` runs smoke-width models (at the paper's depths) on 24 x 3 tokens; ``cpu`` and ``paper`` give
    each row a time budget (``budget_s``, default 30 s and 900 s for all ``steps``) and pick the scale by
    estimate.
    Prints the Markdown; writes CSV / Markdown when paths are given.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps=}")
    grouped = {n for group in _groups() for n in group}
    if grouped != set(CONFIGS):
        raise ValueError(f"PAIRS must cover CONFIGS exactly; differs by {sorted(grouped ^ set(CONFIGS))}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured: dict[str, dict] = {}
    for group in _groups():
        if preset == "smoke":
            scale, reason = Scale("smoke", True, 24, 3), "smoke preset: exercises the code only"
        else:
            scale, reason = plan(group, LADDER, budget_s or ROW_BUDGET_S[preset], steps, device)
        for name in group:
            cfg = config_at(name, scale)
            est_s, est_peak = estimate(cfg, scale, steps, device)
            measured[name] = {
                "name": name, "paper_table": cfg.paper_table, "driver": cfg.driver, "scale": scale.label,
                "scale_reason": reason, "model_preset": scale.preset, "n_layer": cfg.n_layer,
                "seq_len": scale.seq_len, "batch": scale.batch, "steps": steps, "device": device_name(),
                "n_params_nonembedding": _nonembedding(name, scale), "est_s": est_s,
                "est_peak_bytes": est_peak, **measure_row(cfg, scale, steps, device),
                "paper_memory_gb": cfg.paper_memory_gb, "counterparts": " / ".join(PAIRS.get(name, ())),
                "deq": "", "reduction": None, "accounted_reduction": None, "driver_reduction": None,
                "paper_reduction": None,
            }
    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            ours, theirs = measured[deq_name], measured[name]
            theirs.update(deq=deq_name, reduction=1 - ours["memory_bytes"] / theirs["memory_bytes"],
                          accounted_reduction=1 - ours["total_bytes"] / theirs["total_bytes"],
                          driver_reduction=1 - ours["driver_bytes"] / theirs["driver_bytes"],
                          paper_reduction=1 - ours["paper_memory_gb"] / theirs["paper_memory_gb"])
    rows = [measured[name] for name in CONFIGS]
    _write(render_memory_markdown(preset, rows), rows, csv_path, md_path)
    return rows


def _nonembedding(name: str, scale: Scale) -> int:
    total, embedding = _parameter_counts(name, scale.preset, scale.paper_depth)
    return total - embedding


def _write(markdown: str, rows: list[dict], csv_path, md_path) -> None:
    import pandas as pd

    print(markdown, flush=True)
    if csv_path is not None:
        atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    if md_path is not None:
        atomic_write_text(md_path, markdown)


def _mb(value) -> str:
    return "" if value is None else f"{value / MB:.1f}"


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def render_memory_markdown(preset: str, rows: list[dict]) -> str:
    lines = [f"# Training memory at the paper's protocol ({preset} preset)", "",
             f"Protocol: sequence {PROTOCOL_SEQ}, batch {PROTOCOL_BATCH}, word embeddings excluded; each row runs "
             f"at the scale named (widths, depth, sequence x batch). On {rows[0]['device']} "
             f"(torch {torch.__version__}); the last of {rows[0]['steps']} training steps (Adam) is measured, on "
             "Zipf-distributed random tokens. MB = 10^6 bytes. `memory` is the allocator's peak over forward + "
             "backward with the word embedding frozen (activations, solver buffers, gradients, temporaries) + "
             "the other weights and their Adam moments, the optimiser's update left out; measured "
             "by `method` (cpu-allocator-peak: the profiler's record of the CPU allocator; cuda-max-allocated: "
             "torch's counter). `accounted` = saved activations + the larger of the forward/backward solver "
             "buffers (computed from the solver, m and B x T x d_state) + non-embedding parameters, gradients "
             "and Adam moments (no temporaries). RSS includes the embedding and the interpreter; NVML the CUDA "
             "context and cache. `step s` is under the profiler on a CPU.", "",
             "| row | scale | method | params state MB | activations MB (driver) | solver buffers fwd / bwd MB | "
             "memory MB | accounted MB | RSS peak MB | NVML MB | fwd / bwd iters | step s | paper GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        iters = "" if r["fwd_iters"] is None else f"{r['fwd_iters']} / {r['bwd_iters']}"
        lines.append(
            f"| {r['name']} | {r['scale']} | {r['method']} | {_mb(r['param_state_bytes'])} | "
            f"{_mb(r['activation_bytes'])} ({_mb(r['driver_activation_bytes'])}) | "
            f"{_mb(r['fwd_buffer_bytes'])} / {_mb(r['bwd_buffer_bytes'])} | {_mb(r['memory_bytes'])} | "
            f"{_mb(r['total_bytes'])} | "
            f"{_mb(r['rss_peak_bytes'])} | {_mb(r['nvml_process_peak_bytes'])} | {iters} | {r['step_s']:.1f} | "
            f"{r['paper_memory_gb']} |")
    lines += ["", "Why each scale: " + "; ".join(dict.fromkeys(f"{r['name']}: {r['scale_reason']}" for r in rows
                                                          if r["name"] in PAIRS)), "",
              "| DEQ | vs explicit | memory reduction | accounted | driver-only, accounted | paper's reduction |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        if r["deq"]:
            lines.append(f"| {r['deq']} | {r['name']} | {_pct(r['reduction'])} | {_pct(r['accounted_reduction'])} | "
                         f"{_pct(r['driver_reduction'])} | "
                         f"{_pct(r['paper_reduction'])} |")
    return "\n".join(lines) + "\n"
