"""What a solve reports, and the bookkeeping every solver shares.

Each solver evaluates ``f`` at a sequence of iterates z_0, z_1, ... . For every evaluated
iterate the :class:`Trace` records, per sample, the absolute residual ||f(z) - z|| and the
relative residual ||f(z) - z|| / ||f(z)||, keeps the lowest-residual iterate seen so far (in
the metric named by ``stop_mode``), and says when every sample has met the tolerance.
At the end it becomes a :class:`SolverStats`, a plain record the caller decides what to do
with (log it, plot it, ignore it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

STOP_MODES = ("abs", "rel")

# Added to ||f(z)|| before dividing, so that a zero fixed point gives a finite relative residual.
_REL_EPS = 1e-12


@dataclass
class SolverStats:
    """Record of one batched fixed-point solve (all tensors on the CPU, detached).

    Row ``k`` of a trace belongs to the k-th iterate that ``f`` was evaluated at
    (row 0 is the starting point), column ``b`` to sample ``b`` of the batch.
    """

    solver: str  # registry name of the solver that ran
    stop_mode: str  # 'abs' or 'rel': which residual was compared with `tol`
    tol: float  # tolerance every sample had to reach
    abs_trace: torch.Tensor  # (n_iter, B) ||f(z_k) - z_k|| per sample
    rel_trace: torch.Tensor  # (n_iter, B) ||f(z_k) - z_k|| / ||f(z_k)|| per sample
    abs_residual: torch.Tensor  # (B,) absolute residual of the returned iterate
    rel_residual: torch.Tensor  # (B,) relative residual of the returned iterate
    converged: torch.Tensor  # (B,) bool: the returned iterate meets `tol` in `stop_mode`
    n_iter: int  # iterates evaluated (rows of the traces); at most `max_iter`
    nfe: int  # calls to f (larger than n_iter only with a line search)

    @property
    def residual(self) -> torch.Tensor:
        """(B,) final residual in the metric named by ``stop_mode``."""
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    @property
    def trace(self) -> torch.Tensor:
        """(n_iter, B) residual trace in the metric named by ``stop_mode``."""
        return self.rel_trace if self.stop_mode == "rel" else self.abs_trace

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
        res = rel_res if self.stop_mode == "rel" else abs_res
        best = self.best_rel if self.stop_mode == "rel" else self.best_abs
        improved = res < best  # NaN never improves, so a diverging sample keeps its best point
        torch.where(improved[:, None], z, self.best_z, out=self.best_z)  # in place: no new (B, d) buffer
        self.best_abs = torch.where(improved, abs_res, self.best_abs)
        self.best_rel = torch.where(improved, rel_res, self.best_rel)
        return g

    def done(self) -> bool:
        """True once every sample's best iterate meets the tolerance (one device sync)."""
        best = self.best_rel if self.stop_mode == "rel" else self.best_abs
        return bool((best <= self.tol).all())

    def finish(self) -> tuple[torch.Tensor, SolverStats]:
        best = self.best_rel if self.stop_mode == "rel" else self.best_abs
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
        )
        return self.best_z, stats
