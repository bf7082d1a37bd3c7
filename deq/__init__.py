"""deq-harness core: fixed-point solvers and the implicit-differentiation equilibrium layer.

The library takes a function ``f`` and a starting point; it knows nothing about models.

- :func:`solve`: batched fixed-point solve, no graph, returns ``(z_star, SolverStats)``.
- :func:`equilibrium`: forward solve plus the chosen backward (implicit, phantom, jfb, unrolled).
"""

from .equilibrium import BACKWARDS, EquilibriumInfo, equilibrium
from .solvers import SOLVERS, STOP_MODES, SolverStats, solve

__all__ = ["BACKWARDS", "SOLVERS", "STOP_MODES", "EquilibriumInfo", "SolverStats", "equilibrium", "solve"]
__version__ = "0.1.0"
