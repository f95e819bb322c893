"""Training objectives behind one registry (:func:`register_objective`).

Each built-in objective is one package here: ``__init__.py`` its spec (its record builder, the
columns its trainer reads, its config check and allowed loss types, its table label; no TRL
import, so the config check stays light) and ``trainer.py`` its weighted trainer (named by the
spec with its TRL config, imported only where training runs). The import list below is the
built-ins' order in the table. The registry is the only list of objectives: the config check, the build
and train stages and the report all read it, so an objective of yours registered in a module
listed in ``imports:`` runs like the built-in ones (README: Add your own objective).
"""

from __future__ import annotations

from east.objectives.base import (
    OBJECTIVES,
    ObjectiveSpec,
    code_modules,
    get_objective,
    objective_names,
    register_objective,
)

# The built-ins register themselves, in the table's row order.
# isort: off
from east.objectives import sft  # noqa: F401
from east.objectives import dpo  # noqa: F401
from east.objectives import kto  # noqa: F401
from east.objectives import orpo  # noqa: F401
from east.objectives import simpo  # noqa: F401
# isort: on

__all__ = [
    "OBJECTIVES",
    "ObjectiveSpec",
    "code_modules",
    "get_objective",
    "objective_names",
    "register_objective",
]
