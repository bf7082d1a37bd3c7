"""What a solve reports, and the bookkeeping every solver shares.

Each solver evaluates ``f`` at a sequence of iterates z_0, z_1, ... . For every evaluated
iterate the :class:`Trace` records, per sample, the absolute residual ||f(z) - z|| and the
relative residual ||f(z) - z|| / ||f(z)||, keeps the lowest-residual iterate seen so far (in
the metric named by ``stop_mode``), and says when every sample has met the tolerance.
At the end it becomes a :class:`SolverStats`, a plain record the caller decides what to do
with (log it, plot it, ignore it).

Stop modes:

- ``'abs'`` and ``'rel'``: per sample; each sample keeps its own lowest-residual iterate and the solve
  stops once every sample meets ``tol``.
- ``'batch_rms'``: the rule of the DEQ paper's code (locuslab/deq v1, ``DEQModel/modules/broyden.py``
  with the tolerances of ``DEQModel/modules/deq.py``). One number for the whole batch, the root mean
  square of g = f(z) - z over all its elements, ||g||_F / sqrt(numel); the official
  ``eps = c * sqrt(bsz * d * L)`` on ||g||_F is exactly ``tol = c`` here. The whole batch moves to the
  iterate with the lowest batch residual, and the solve also stops where the official one does when it
  stagnates: after more than 30 steps, with the current residual below 3 tol and the last 30 residuals
  within a factor 1.3 of each other. (The official protective break, a residual 1e5 * L times the first
  one, is not modelled: the returned lowest iterate is the same; see docs/fidelity.md.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deq.settings import STOP_MODES

# The official stagnation exit (batch_rms): more than 30 steps, residual < 3 tol, last 30 within x1.3.
_STAGNATION_STEPS, _STAGNATION_BAND, _STAGNATION_SPREAD = 30, 3.0, 1.3

# Added to ||f(z)|| before dividing, so that a zero fixed point gives a finite relative residual.
_REL_EPS = 1e-12


@dataclass
class SolverStats:
    """Record of one batched fixed-point solve (all tensors on the CPU, detached).

    Row ``k`` of a trace belongs to the k-th iterate that ``f`` was evaluated at
    (row 0 is the starting point), column ``b`` to sample ``b`` of the batch.
    """

    solver: str  # registry name of the solver that ran
    stop_mode: str  # 'abs', 'rel' or 'batch_rms': which residual was compared with `tol`
    tol: float  # tolerance every sample had to reach
    abs_trace: torch.Tensor  # (n_iter, B) ||f(z_k) - z_k|| per sample
    rel_trace: torch.Tensor  # (n_iter, B) ||f(z_k) - z_k|| / ||f(z_k)|| per sample
    abs_residual: torch.Tensor  # (B,) absolute residual of the returned iterate
    rel_residual: torch.Tensor  # (B,) relative residual of the returned iterate
    converged: torch.Tensor  # (B,) bool: the returned iterate meets `tol` in `stop_mode`
    n_iter: int  # iterates evaluated (rows of the traces); at most `max_iter`
    nfe: int  # calls to f (larger than n_iter only with a line search)
    batch_trace: torch.Tensor | None = None  # batch_rms only: (n_iter, B) the batch's RMS residual, per sample
    batch_residual: torch.Tensor | None = None  # batch_rms only: (B,) that of the returned iterate

    @property
    def residual(self) -> torch.Tensor:
        """(B,) final residual in the metric named by ``stop_mode`` (batch_rms: the batch's, per sample)."""
        if self.stop_mode == "batch_rms":
            return self.batch_residual
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    @property
    def trace(self) -> torch.Tensor:
        """(n_iter, B) residual trace in the metric named by ``stop_mode``."""
        if self.stop_mode == "batch_rms":
            return self.batch_trace
        return self.rel_trace if self.stop_mode == "rel" else self.abs_trace

    @classmethod
    def side_by_side(cls, parts: list[SolverStats]) -> SolverStats:
        """One record for solves of separate parts of a problem (e.g. the chunks of a sequence), each
        part's samples as more columns. A shorter solve's traces are padded with its last row (it had
        stopped); ``n_iter`` and ``nfe`` are the largest part's, so that they compare with a cap and
        with the depth of an explicit network run over the whole problem (each call covers one part)."""
        if len(parts) == 1:
            return parts[0]
        n = max(p.n_iter for p in parts)

        def columns(name: str) -> torch.Tensor | None:
            if getattr(parts[0], name) is None:
                return None
            tensors = [getattr(p, name) for p in parts]
            if tensors[0].dim() == 2:
                tensors = [torch.cat([t, t[-1:].expand(n - len(t), -1)]) for t in tensors]
            return torch.cat(tensors, dim=-1)

        first = parts[0]
        return cls(solver=first.solver, stop_mode=first.stop_mode, tol=first.tol,
                   abs_trace=columns("abs_trace"), rel_trace=columns("rel_trace"),
                   abs_residual=columns("abs_residual"), rel_residual=columns("rel_residual"),
                   converged=columns("converged"), n_iter=n, nfe=max(p.nfe for p in parts),
                   batch_trace=columns("batch_trace"), batch_residual=columns("batch_residual"))

    @property
    def fraction_converged(self) -> float:
        return self.converged.float().mean().item()

    def summary(self) -> dict[str, float | int | str]:
        """Scalars for a log line: iterations, nfe, worst final residuals, fraction converged."""
        return {
            "solver": self.solver,
            "n_iter": self.n_iter,
            "nfe": self.nfe,
            "abs_residual_max": self.abs_residual.max().item(),
            "rel_residual_max": self.rel_residual.max().item(),
            "fraction_converged": self.fraction_converged,
        }


Function = Callable[[torch.Tensor], torch.Tensor]


class Trace:
    """Evaluates ``f`` for a solver, logging residuals, the best iterate per sample and nfe."""

    def __init__(self, solver: str, f: Function, z0: torch.Tensor, tol: float, stop_mode: str) -> None:
        self.solver, self.f, self.tol, self.stop_mode = solver, f, tol, stop_mode
        self.abs_rows: list[torch.Tensor] = []
        self.rel_rows: list[torch.Tensor] = []
        self.best_z = z0.clone()  # (B, d)
        self.best_abs = torch.full(z0.shape[:1], float("inf"), dtype=z0.dtype, device=z0.device)
        self.best_rel = self.best_abs.clone()
        self.size = z0[0].numel()  # elements per sample
        self.batch_rows: list[torch.Tensor] = []  # batch_rms only: the batch residual per iterate
        self.best_batch = self.best_abs[:1].clone()  # batch_rms only: the lowest batch residual (1,)
        self.nfe = 0

    def call(self, z: torch.Tensor) -> torch.Tensor:
        """f(z), counted in nfe but not logged (a line-search trial)."""
        self.nfe += 1
        return self.f(z)

    def evaluate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z) for the next iterate ``z``, logged; returns (f(z), g = f(z) - z), both (B, d)."""
        fz = self.call(z)
        return fz, self.record(z, fz)

    def observe(self, z: torch.Tensor, fz: torch.Tensor) -> None:
        """Log f(z) = fz evaluated by the caller (an explicit layer, graph kept): counted and recorded."""
        self.nfe += 1
        self.record(z.detach().flatten(1), fz.detach().flatten(1))

    def record(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Log iterate ``z`` with ``fz = f(z)``; return its residual vector g = f(z) - z (B, d)."""
        g = fz - z
        abs_res = g.norm(dim=1)
        rel_res = abs_res / (fz.norm(dim=1) + _REL_EPS)
        self.abs_rows.append(abs_res)
        self.rel_rows.append(rel_res)
        if self.stop_mode == "batch_rms":  # one residual, one best iterate, for the whole batch
            batch = (abs_res.square().mean() / self.size).sqrt()[None]  # (1,): ||g||_F / sqrt(numel)
            self.batch_rows.append(batch)
            improved = (batch < self.best_batch).expand_as(abs_res)  # NaN never improves
            self.best_batch = torch.where(improved[:1], batch, self.best_batch)
        else:
            res = rel_res if self.stop_mode == "rel" else abs_res
            best = self.best_rel if self.stop_mode == "rel" else self.best_abs
            improved = res < best  # NaN never improves, so a diverging sample keeps its best point
        torch.where(improved[:, None], z, self.best_z, out=self.best_z)  # in place: no new (B, d) buffer
        self.best_abs = torch.where(improved, abs_res, self.best_abs)
        self.best_rel = torch.where(improved, rel_res, self.best_rel)
        return g

    def done(self) -> bool:
        """True once every sample's best iterate meets the tolerance (one device sync).

        batch_rms: once the current batch residual is below ``tol`` (the official ``new_objective < eps``),
        or the solve has stagnated (module docstring).
        """
        if self.stop_mode == "batch_rms":
            history = torch.cat(self.batch_rows[-_STAGNATION_STEPS:]).tolist()
            current = history[-1]
            if current < self.tol:
                return True
            steps = len(self.batch_rows) - 1
            return (steps > _STAGNATION_STEPS and current < _STAGNATION_BAND * self.tol
                    and max(history) / min(history) < _STAGNATION_SPREAD)
        best = self.best_rel if self.stop_mode == "rel" else self.best_abs
        return bool((best <= self.tol).all())

    def finish(self) -> tuple[torch.Tensor, SolverStats]:
        batch = self.stop_mode == "batch_rms"
        best = self.best_rel if self.stop_mode == "rel" else self.best_abs
        if batch:
            best = self.best_batch.expand_as(self.best_abs)
        stats = SolverStats(
            solver=self.solver,
            stop_mode=self.stop_mode,
            tol=self.tol,
            abs_trace=torch.stack(self.abs_rows).cpu(),
            rel_trace=torch.stack(self.rel_rows).cpu(),
            abs_residual=self.best_abs.cpu(),
            rel_residual=self.best_rel.cpu(),
            converged=(best <= self.tol).cpu(),
            n_iter=len(self.abs_rows),
            nfe=self.nfe,
            batch_trace=torch.cat(self.batch_rows)[:, None].expand(-1, len(best)).cpu() if batch else None,
            batch_residual=best.cpu() if batch else None,
        )
        return self.best_z, stats
