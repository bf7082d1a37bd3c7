"""How a fixed point is solved and differentiated: the names the library accepts, and one record of them.

Torch-free on purpose: the rows of the paper's tables carry a :class:`SolverSettings`, and the
workflow plans the study from those rows without importing torch (a dry run stays fast).

- :data:`SOLVER_OPTIONS`: each solver's own options (the keyword arguments of ``deq.solvers.SOLVERS[name]``
  beyond ``tol``, ``max_iter`` and ``stop_mode``; a test keeps the two equal).
- :data:`STOP_MODES`, :data:`BACKWARDS`: the residual a solve stops on, and the gradients
  :func:`deq.equilibrium` can attach.
- :class:`SolverSettings`: every setting of a DEQ's solves, with the one set of defaults that
  :func:`deq.solve` and :func:`deq.equilibrium` share (:data:`DEFAULTS`), and the one translation of
  the settings into their arguments (:meth:`SolverSettings.forward_args`, ``backward_args``,
  ``equilibrium_args``), used by the DEQ driver, the benchmarks and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["BACKWARDS", "DEFAULTS", "LEAN", "SOLVER_OPTIONS", "STOP_MODES", "SolverSettings", "check_solver_args",
           "solver_name"]

SOLVER_OPTIONS = {
    "anderson": ("m", "lam", "beta"),
    "broyden": ("m", "line_search", "ls_max_steps"),
    "gmres": ("m",),
    "picard": ("beta",),
}
STOP_MODES = ("abs", "rel", "batch_rms")
BACKWARDS = ("implicit", "phantom", "jfb", "unrolled")


def check_solver_args(solver: str, tol: float, max_iter: int, stop_mode: str, options: dict) -> None:
    """Raise ``ValueError`` naming the bad value (and the allowed ones) before any work is done."""
    if solver not in SOLVER_OPTIONS:
        raise ValueError(f"unknown solver {solver!r}; choose from {sorted(SOLVER_OPTIONS)}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"unknown stop_mode {stop_mode!r}; choose from {list(STOP_MODES)}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol=}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter=}")
    unknown = sorted(set(options) - set(SOLVER_OPTIONS[solver]))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {solver!r}; it takes {list(SOLVER_OPTIONS[solver])}")


# The lean memory mode (:meth:`SolverSettings.lean`): solvers whose buffers are a constant number of state
# vectors whatever the cap, for any DEQ row, its tolerances and caps kept. Forward (training and evaluation):
# Anderson with 3 past iterates, 8 vectors (the v2 code's m = 6 keeps 14; the v1 Broyden 2 per iteration).
# Backward: restarted GMRES(2) on the linear system y (I - J) = dl/dz*, 9 vectors (m + 7, deq.solvers.gmres).
# Chosen by measurement (the depth benchmark's `lean` rows against its one-layer `floor`): Picard in the
# backward keeps 2 vectors fewer, but does not converge where J is not a contraction (the depth benchmark's
# random transformer cell: relative residual 0.03 after 41 iterations, GMRES(2) 1e-4); m = 6 forward puts
# the TrellisNet cell's forward solve above its backward.
LEAN = dict(solver="anderson", eval_solver="anderson", solver_options={"m": 3}, backward_solver="gmres",
            backward_options={"m": 2})


def solver_name(solver: str, options: dict) -> str:
    """A solver and its options as the benchmarks' CSVs name them.

    >>> solver_name("anderson", {"m": 3})
    'anderson m=3'
    """
    return solver + "".join(f" {key}={value}" for key, value in sorted(options.items()))


@dataclass(frozen=True)
class SolverSettings:
    """How the DEQ driver solves and differentiates (names follow ``deq.equilibrium``)."""

    solver: str = "anderson"  # forward solver in training (the DEQ v2 code: Anderson)
    tol: float = 1e-3  # forward tolerance in training
    max_iter: int = 30  # forward cap in training: evaluations of f (v1 modules/broyden.py's threshold + 1)
    stop_mode: str = "rel"  # 'rel', 'abs' (per sample) or 'batch_rms' (the v1 code's), forward and backward
    backward: str = "implicit"  # 'implicit', 'phantom', 'jfb' or 'unrolled' (see BACKWARDS)
    backward_solver: str = "broyden"  # solver of the implicit backward
    backward_tol: float = 1e-6  # backward tolerance
    backward_max_iter: int = 35  # backward cap (the v2 script's b_thres 35; the rows set their own)
    eval_solver: str = "anderson"  # forward solver at evaluation
    eval_tol: float = 1e-3  # forward tolerance at evaluation (may differ from training)
    eval_max_iter: int = 30  # forward cap at evaluation
    solver_options: dict = field(default_factory=dict)  # extra options of the forward solvers (m, lam, ...)
    backward_options: dict = field(default_factory=dict)  # options of the backward solver (e.g. m, its history)
    # Solve the segment in consecutive chunks of this many positions (0: whole), each chunk's memory the
    # previous chunk's equilibrium, as the official code's subseq_len (v1 DEQModel/models/*/
    # *_forward_backward.py); the weight-tied pretraining stack runs the whole segment, as there.
    subseq_len: int = 0
    code: str = ""  # the official code these settings follow ('v1', 'v2'); '' for the project's own

    def __post_init__(self) -> None:
        if isinstance(self.subseq_len, bool) or not isinstance(self.subseq_len, int) or self.subseq_len < 0:
            raise ValueError(f"subseq_len must be an integer >= 0 (0: the whole segment), got {self.subseq_len!r}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"unknown backward {self.backward!r}; choose from {list(BACKWARDS)}")
        check_solver_args(self.solver, self.tol, self.max_iter, self.stop_mode, self.solver_options)
        check_solver_args(self.eval_solver, self.eval_tol, self.eval_max_iter, self.stop_mode, self.solver_options)
        check_solver_args(self.backward_solver, self.backward_tol, self.backward_max_iter, self.stop_mode,
                          self.backward_options)

    # The one translation of these settings into solve arguments: the driver, the benchmarks that time a
    # solve on its own, and evaluation all call these, so none can drop an option (the backward's
    # history bound, a forward ridge) that the others pass.
    def forward_args(self, training: bool) -> dict:
        """``deq.solve`` arguments of the forward solve, in training or at evaluation.

        >>> SolverSettings(solver="broyden", max_iter=20, solver_options={"m": 5}).forward_args(training=True)
        {'solver': 'broyden', 'tol': 0.001, 'max_iter': 20, 'stop_mode': 'rel', 'm': 5}
        """
        solve = (dict(solver=self.solver, tol=self.tol, max_iter=self.max_iter) if training else
                 dict(solver=self.eval_solver, tol=self.eval_tol, max_iter=self.eval_max_iter))
        return {**solve, "stop_mode": self.stop_mode, **self.solver_options}

    def backward_args(self) -> dict:
        """``deq.solve`` arguments of the implicit backward's solve.

        >>> SolverSettings(backward_max_iter=40, backward_options={"m": 8}).backward_args()
        {'solver': 'broyden', 'tol': 1e-06, 'max_iter': 40, 'stop_mode': 'rel', 'm': 8}
        """
        return dict(solver=self.backward_solver, tol=self.backward_tol, max_iter=self.backward_max_iter,
                    stop_mode=self.stop_mode, **self.backward_options)

    def lean(self) -> SolverSettings:
        """These settings in the lean memory mode (:data:`LEAN`): same tolerances and caps, lean solvers.

        >>> s = SolverSettings(solver="broyden", max_iter=30, backward_max_iter=35).lean()
        >>> s.solver, s.solver_options, s.backward_solver, s.backward_options, s.max_iter, s.backward_max_iter
        ('anderson', {'m': 3}, 'gmres', {'m': 2}, 30, 35)
        """
        return replace(self, **LEAN)

    def equilibrium_args(self, training: bool) -> dict:
        """``deq.equilibrium`` arguments: the forward solve's, and the backward with its own solver."""
        return {**self.forward_args(training), "backward": self.backward, "backward_solver": self.backward_solver,
                "backward_tol": self.backward_tol, "backward_max_iter": self.backward_max_iter,
                "backward_options": dict(self.backward_options)}


DEFAULTS = SolverSettings()  # the defaults of deq.solve and deq.equilibrium, too
