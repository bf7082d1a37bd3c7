"""deq-harness core: fixed-point solvers and the implicit-differentiation equilibrium layer.

The library takes a function ``f`` and a starting point; it knows nothing about models.

- :func:`solve`: batched fixed-point solve, no graph, returns ``(z_star, SolverStats)``.
- :func:`equilibrium`: forward solve plus the chosen backward (implicit, phantom, jfb, unrolled).
- :class:`SolverSettings` (:mod:`deq.settings`): every setting of a DEQ's solves, in one record.

The names are loaded on first use (PEP 562), so that importing a torch-free part of the project
(``deq.settings``, the row registry ``deq.rows``, the study ``deq.study``) does not import torch:
the workflow plans the study that way.
"""

from __future__ import annotations

from deq.lazy import exports

__all__ = ["BACKWARDS", "SOLVERS", "STOP_MODES", "EquilibriumInfo", "SolverSettings", "SolverStats", "equilibrium",
           "solve"]
__version__ = "0.1.0"

__getattr__, __dir__ = exports(__name__, {
    "BACKWARDS": "deq.settings", "STOP_MODES": "deq.settings", "SolverSettings": "deq.settings",
    "SOLVERS": "deq.solvers", "SolverStats": "deq.solvers", "solve": "deq.solvers",
    "EquilibriumInfo": "deq.layer", "equilibrium": "deq.layer",
})
