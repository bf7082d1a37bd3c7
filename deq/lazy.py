"""A package's public names, imported from their modules on first use (PEP 562).

A package whose ``__init__`` imported its modules would load torch for anyone who reads one torch-free
module of it (the workflow reading ``deq.settings`` or ``deq.data.download``); with these, importing the
package costs nothing and ``package.name`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, homes: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``homes`` maps each public name to its module."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        namespace[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *homes})

    return __getattr__, __dir__
