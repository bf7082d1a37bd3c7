"""Training memory of every row of Tables 2-3 at the paper's protocol: ``python -m deq.bench memory``.

Every row of :data:`deq.rows.configs.CONFIGS` and :data:`VARIANTS` (each DEQ's lean mode and its floor,
the cell as a one-layer weight-tied stack) trains two steps on Zipf (1/rank) random tokens, the shape of a
frequency-sorted vocabulary (uniform ids would crowd the adaptive softmax's tail clusters); the second is
measured with the word embedding excluded (PAPER.md, "Memory columns"). The warm-up step makes the segment
memory and Adam's state (a DEQ's runs its cell as a one-layer stack: the same tensors in far less time).
DEQ solves run to their caps: the official Broyden preallocates its whole history, so the cap is the real
case. The scale is the preset's (:class:`deq.presets.MemoryScale`, sequence 150, batch 15): ``cpu`` the
study's widths at the paper's depths, ``paper`` the paper's widths; ``smoke`` checks the plumbing.

Where the scale names ``fit_batches`` (``paper``), every row is measured there too and each byte column is
fitted with a line in the batch (a: the parameter state; b: activations, buffers and temporaries per
sample). A row whose two steps at batch 15 would take more than :data:`DIRECT_BUDGET_S` (the largest fit
batch's seconds, scaled) or, on the line, half the free memory (or that runs out of GPU memory) is reported
from the line (``extrapolated``); the others are measured at 15, the line's error there beside them
(``fit_error``, printed: the method's check). So ``--preset paper`` works on a CPU
(``results/reference/cpu/memory_paper.csv``, ``make paper-memory``) and a GPU alike.

Columns (:class:`MemoryRow`, :class:`StepMemory`): ``memory_bytes``, the allocator's peak over forward +
backward (:func:`deq.bench.common.measure_step`; ``method`` names the counter) plus what was alive before
the step apart from the embedding (weights, Adam moments). The embedding is left out of the measured
backward (with a softmax weight tied to it): the dense gradient of a 267K-word embedding and its
temporaries would be most of a small row's peak. The optimiser's update is left out too (Adam's foreach
kernels copy every parameter). ``total_bytes`` accounts for the parts: saved activations + the larger of
the two solvers' buffers computed from their code (:func:`deq.solvers.solver_buffer_bytes`) + the
parameter state; it misses the temporaries. Checkpointing hides its saves from the hooks, so a checkpointed
row adds what it keeps, every layer's input and one layer recomputed (``activation_method``).

Memory against effective depth is :mod:`deq.bench.depth`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from deq.bench.common import clock, columns, measure_step, scales, write_rows, zipf_tokens
from deq.engine.memory import MemoryMonitor, SavedActivations, adam_state_bytes, device_name
from deq.presets import MemoryScale
from deq.report.benchmarks import floor_ratio, render_memory
from deq.rows.build import build_model
from deq.rows.configs import CONFIGS, LMConfig, get_config
from deq.settings import SolverSettings
from deq.solvers import solver_buffer_bytes

__all__ = ["PAIRS", "VARIANTS", "MemoryRow", "StepMemory", "deq_buffer_bytes", "fit_line", "run_memory_benchmark"]

PROTOCOL_SEQ, PROTOCOL_BATCH = 150, 15  # the paper's memory protocol
# DEQ row -> its explicit counterparts in the paper's tables.
PAIRS = {
    "ptb-deq-trellisnet": ("ptb-trellisnet-60-aux",),
    "wt103-deq-trellisnet": ("wt103-trellisnet-70-aux", "wt103-trellisnet-70-aux-checkpoint"),
    "wt103-deq-transformer-medium": ("wt103-transformer-xl-medium-16",),
    "wt103-deq-transformer-medium-adaptive": ("wt103-transformer-xl-medium-18-adaptive",),
    "wt103-deq-transformer-small": ("wt103-transformer-xl-small-4", "wt103-transformer-xl-small-tied-16"),
}
# Rows beside the paper's, <row>@<kind>: kind -> (the change, what it settles). V1 solves in subsequences of 50
# (TrellisNet) or 75 (transformer); over the whole 150-token segment, 45 Broyden pairs over the PTB DEQ-TrellisNet's
# 2 x 1400 x 150 x 15 float32 numbers are 2.3 GB. The floor is the least any DEQ of the cell can hold.
CHANGES = {
    "whole-segment": (lambda c: replace(c, solver=replace(c.solver, subseq_len=0)),
                      "v1 settings solved over the whole 150-token segment, no subsequences"),
    "lean": (lambda c: replace(c, solver=c.solver.lean()), "lean memory mode (deq.settings.LEAN)"),
    "floor": (lambda c: replace(c, driver="weight_tied", n_layer=1, solver=None, pretrain_steps=0),
              "floor: the cell as a one-layer weight-tied stack"),
}
VARIANTS = {f"{deq}@{kind}": (deq, *CHANGES[kind]) for kind in CHANGES for deq in PAIRS
            if kind != "whole-segment" or deq in ("ptb-deq-trellisnet", "wt103-deq-transformer-medium")}
UNREACHABLE_TOL = 1e-30  # DEQ solves run to their caps
DIRECT_BUDGET_S = 120.0  # seconds of a row's two steps at the target batch (on the fit) under which it is measured
FIT_TOLERANCE = 0.02  # the largest error of the fit at the target batch the check accepts


# ---- what the solvers hold ------------------------------------------------------------------------

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


# ---- the rows -----------------------------------------------------------------------------------------

def config_at(name: str, scale: MemoryScale) -> LMConfig:
    """Row (or variant) ``name`` at ``scale``: the preset's config, with the paper's depth if the scale keeps
    it, a DEQ's solves running to their caps."""
    base, change, _ = VARIANTS.get(name, (name, lambda c: c, ""))
    cfg = change(get_config(base, scale.preset, paper_depth=scale.paper_depth))
    if cfg.driver == "deq":
        cfg = replace(cfg, solver=replace(cfg.solver, tol=UNREACHABLE_TOL, backward_tol=UNREACHABLE_TOL))
    return cfg


# ---- the measured step of one row -----------------------------------------------------------------

@dataclass
class StepMemory:
    """The measured (last) training step of one row; bytes exclude the word embedding unless said."""

    n_params_nonembedding: int  # parameters outside the word embedding (and a softmax weight tied to it)
    fwd_iters: int | None  # the DEQ's forward iterations in the step (None: explicit)
    bwd_iters: int | None  # ... and its backward's
    fwd_buffer_bytes: int  # forward solver's history, computed (deq_buffer_bytes)
    bwd_buffer_bytes: int  # backward solver's history, computed
    param_state_bytes: int  # parameters, gradients and Adam moments as the optimizer holds them
    driver_param_state_bytes: int  # ... of the driver alone
    embedding_state_bytes: int  # the word embedding's (excluded from everything else)
    activation_bytes: int  # saved for backward (saved-tensor hooks)
    driver_activation_bytes: int  # ... of them, saved inside the driver
    activation_method: str  # how activation_bytes was counted (checkpointing hides its saves)
    total_bytes: int  # accounted: activations + the larger solver buffer + parameter state
    driver_bytes: int  # the driver's part of total_bytes (no embedding-side softmax)
    cuda_step_peak_bytes: int | None  # CUDA: allocator's peak over the whole step, embedding and update in
    nvml: bool  # NVML sampled (CUDA only)
    nvml_reason: str | None  # why not
    nvml_process_peak_bytes: int | None  # NVML's process peak: CUDA context and cache included
    rss_peak_bytes: int | None  # resident set sampled over the step: interpreter and embedding included
    method: str  # how memory_bytes was measured: 'cuda-max-allocated' or 'cpu-allocator-peak'
    memory_bytes: int  # the protocol's number: allocator peak over forward + backward + held before
    step_s: float  # the measured forward + backward (under the profiler on a CPU)
    warmup_s: float  # the steps before it


def _state_bytes(params, optimizer: torch.optim.Optimizer) -> int:
    """Parameters, gradients and optimizer state tensors of ``params``, as they are held now."""
    total = 0
    for p in params:
        tensors = [p, p.grad, *(v for v in optimizer.state.get(p, {}).values()
                                if isinstance(v, torch.Tensor) and v.dim() > 0)]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


def measure_row(cfg: LMConfig, scale: MemoryScale, device: str, steps: int = 2) -> StepMemory:
    """Train ``steps`` steps of row ``cfg`` at ``scale``; measure the last one (see the module docstring)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    embedding = {p.data_ptr() for p in model.embedding.parameters()}
    others = [p for p in model.parameters() if p.data_ptr() not in embedding]
    # Drawn at the protocol's batch (or more) and cut: a smaller batch measures the first samples of the
    # larger one, so that measurements at several batches differ by their size, not by their tokens.
    draw = (steps, max(scale.batch, PROTOCOL_BATCH), scale.seq_len + 1)
    tokens = zipf_tokens(cfg.n_token, draw, torch.Generator().manual_seed(0))[:, : scale.batch].to(device)
    memory = None

    def forward_backward(step: int):
        out = model(tokens[step, :, :-1], tokens[step, :, 1:], memory)
        (out.loss if out.aux_loss is None else out.loss + cfg.aux_weight * out.aux_loss).backward()
        return out

    start = clock(device)
    for step in range(steps - 1):  # warm-up: the segment memory and Adam's state
        if cfg.driver == "deq":
            model.set_pretraining(1)
        memory = forward_backward(step).memory
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    warmup_s = clock(device) - start
    if cfg.driver == "deq":
        model.set_pretraining(None)
    counter = _SplitCounter(exclude=embedding)
    hooks = [model.driver.register_forward_pre_hook(lambda *_: setattr(counter, "inside", True)),
             model.driver.register_forward_hook(lambda *_: setattr(counter, "inside", False))]
    layer_inputs: list = []  # a checkpointed layer's (z, injection, memory), to recount one layer
    if cfg.checkpoint:
        hooks.append(model.driver.cell.register_forward_hook(
            lambda _module, args, _out: None if layer_inputs else layer_inputs.append(args)))
    held_before = _state_bytes(others, optimizer)  # weights and Adam moments (no gradients yet)
    model.embedding.requires_grad_(False)  # (and a softmax weight tied to it) for the measured step only
    with MemoryMonitor() as monitor:
        out, peak, step_s = measure_step(lambda: forward_backward(steps - 1), device, counter)
        optimizer.step()  # its temporaries are the optimiser's, not the model's: outside the peak
    model.embedding.requires_grad_(True)
    param_state, driver_state = _state_bytes(others, optimizer), _state_bytes(model.driver.parameters(), optimizer)
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
    fwd_iters, bwd_iters, fwd, bwd = None, None, 0, 0
    if cfg.driver == "deq":
        fwd_iters, bwd_iters = out.info.forward.n_iter, out.info.backward and out.info.backward.n_iter
        fwd, bwd = deq_buffer_bytes(cfg.solver, scale.batch, scale.seq_len, model.driver.cell.d_state)
    row = StepMemory(
        sum(p.numel() for p in others), fwd_iters, bwd_iters, fwd, bwd, param_state, driver_state,
        adam_state_bytes(model.embedding.parameters()), activations, driver_activations, activation_method, activations + max(fwd, bwd) + param_state,
        driver_activations + max(fwd, bwd) + driver_state, record["cuda_max_allocated_bytes"], record["nvml"],
        record["nvml_reason"], record["gpu_process_peak_bytes"], record["rss_sampled_peak_bytes"],
        "cuda-max-allocated" if device == "cuda" else "cpu-allocator-peak", held_before + peak, step_s, warmup_s)
    del model, optimizer, out, memory
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
    return row


# ---- the fit ------------------------------------------------------------------------------------------

def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (a, b) of value = a + b * batch over ``points`` {batch: value} (two or more)."""
    if len(points) < 2:
        raise ValueError(f"a line needs two or more batches, got {sorted(points)}")
    b, a = np.polyfit(list(points), list(points.values()), 1)
    return float(a), float(b)


def extrapolate(points: dict[int, StepMemory], batch: int) -> StepMemory:
    """The step at ``batch`` on the lines through ``points`` {batch: step}: every byte count fitted
    (:func:`fit_line`), the seconds of the largest batch measured scaled in proportion (small steps' times
    are too noisy for a line), the rest (iterations, methods, flags) from the largest batch."""
    most = max(points)
    fitted = {"step_s": points[most].step_s * batch / most, "warmup_s": points[most].warmup_s * batch / most}
    for field in fields(StepMemory):
        values = {b: getattr(step, field.name) for b, step in points.items()}
        if field.name.endswith("_bytes") and None not in values.values():
            a, b = fit_line(values)
            fitted[field.name] = round(a + b * batch)
    return replace(points[most], **fitted)


def free_memory(device: str) -> int:
    """Bytes free now: the GPU's, or the machine's MemAvailable (/proc/meminfo; 16 GB where unreadable)."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        return next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 16 * 10**9


# ---- every row -------------------------------------------------------------------------------------------

@dataclass
class MemoryRow:
    """One row of Tables 2-3 (or a variant): a row of ``memory.csv``."""

    name: str  # registry name, or a variant of VARIANTS
    paper_table: int
    driver: str  # 'deq', 'weight_tied' or 'untied'
    scale: str  # MemoryScale.label
    model_preset: str
    n_layer: int
    seq_len: int
    batch: int
    device: str
    solver_code: str  # 'v1', 'v2' or '' (explicit)
    subseq_len: int | None
    variant_of: str  # what a variant settles ('' for a paper row)
    step: StepMemory  # at ``batch``, measured or on the fit (its fields are columns)
    extrapolated: bool  # the step is the fit's, not measured at ``batch``
    fit_batches: str  # the batches measured for the fit, space-separated ('' without one)
    fit_a_bytes: float | None  # memory_bytes = a + b * batch
    fit_b_bytes: float | None
    fit_error: float | None  # fit / measured - 1 at ``batch``, where both exist
    paper_memory_gb: float | None  # the paper's memory column
    counterparts: str  # a DEQ's explicit counterparts, ' / '-separated
    deq: str = ""  # an explicit row's DEQ
    reduction: float | None = None  # 1 - DEQ / this row, memory_bytes
    accounted_reduction: float | None = None  # ... total_bytes
    driver_reduction: float | None = None  # ... driver_bytes
    paper_reduction: float | None = None  # ... the paper's
    lean_reduction: float | None = None  # 1 - the DEQ's lean mode (<deq>@lean) / this row, memory_bytes
    floor_ratio: float | None = None  # a DEQ (or its lean mode): memory_bytes / its floor's (<deq>@floor)


def measure(name: str, scale: MemoryScale, device: str) -> MemoryRow:
    """Row ``name`` at ``scale``: measured at its batch, and where the scale names fit batches, fitted too."""
    cfg = config_at(name, scale)
    step, extrapolated, fit, error = None, False, (None, None), None
    if scale.fit_batches:
        points = {b: measure_row(cfg, replace(scale, batch=b), device) for b in scale.fit_batches}
        fitted = extrapolate(points, scale.batch)
        fit = fit_line({b: p.memory_bytes for b, p in points.items()})
        extrapolated = (fitted.step_s + fitted.warmup_s > DIRECT_BUDGET_S
                        or fitted.memory_bytes > free_memory(device) / 2)
    if not extrapolated:
        try:
            step = measure_row(cfg, scale, device)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            extrapolated = bool(scale.fit_batches)
            if not extrapolated:
                raise
    if scale.fit_batches and step is not None:
        error = fitted.memory_bytes / step.memory_bytes - 1
        verdict = "ok" if abs(error) <= FIT_TOLERANCE else f"ABOVE {FIT_TOLERANCE:.0%}"
        print(f"fit check {name}: {fitted.memory_bytes / 1e9:.3f} GB on the line, {step.memory_bytes / 1e9:.3f} GB "
              f"measured at batch {scale.batch}: {100 * error:+.2f}% ({verdict})", flush=True)
    return MemoryRow(
        name, cfg.paper_table, cfg.driver, scale.label, scale.preset, cfg.n_layer, scale.seq_len, scale.batch,
        device_name(), cfg.solver.code if cfg.solver else "",
        cfg.solver.subseq_len if cfg.solver else None, VARIANTS[name][2] if name in VARIANTS else "",
        fitted if step is None else step, extrapolated, " ".join(map(str, scale.fit_batches)), *fit, error,
        name in CONFIGS and CONFIGS[name].paper_memory_gb or None, " / ".join(PAIRS.get(name, ())))


def run_memory_benchmark(preset: str = "cpu", csv_path: str | Path | None = None, md_path: str | Path | None = None,
                         *, names: tuple[str, ...] | None = None, scale: MemoryScale | None = None) -> list[MemoryRow]:
    """Every row of CONFIGS and VARIANTS (or ``names``), in that order, at the preset's scale (or ``scale``,
    for tests). Prints the Markdown; writes CSV / Markdown when paths are given."""
    scale = scale or scales(preset).memory
    names = (*CONFIGS, *VARIANTS) if names is None else names
    unknown = sorted(set(names) - set(CONFIGS) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown row(s) {unknown}; choose from {[*CONFIGS, *VARIANTS]}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured = {name: measure(name, scale, device) for name in names}
    peak = {name: row.step.memory_bytes for name, row in measured.items()}
    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            if deq_name in measured and name in measured:
                ours, theirs = measured[deq_name], measured[name]
                theirs.deq = deq_name
                theirs.reduction = 1 - peak[deq_name] / peak[name]
                theirs.accounted_reduction = 1 - ours.step.total_bytes / theirs.step.total_bytes
                theirs.driver_reduction = 1 - ours.step.driver_bytes / theirs.step.driver_bytes
                theirs.paper_reduction = 1 - ours.paper_memory_gb / theirs.paper_memory_gb
            if f"{deq_name}@lean" in measured and name in measured:
                measured[name].lean_reduction = 1 - peak[f"{deq_name}@lean"] / peak[name]
        for name in (deq_name, f"{deq_name}@lean"):
            if name in measured and (floor := f"{deq_name}@floor") in measured:
                measured[name].floor_ratio = floor_ratio(measured[name], measured[floor], peak[name], peak[floor])
    rows = list(measured.values())
    markdown = render_memory([columns(r) for r in rows], preset, (PROTOCOL_SEQ, PROTOCOL_BATCH), torch.__version__)
    print(markdown, flush=True)
    write_rows(rows, csv_path, md_path, markdown)
    return rows
