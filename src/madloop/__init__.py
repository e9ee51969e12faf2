"""madloop: simulate, measure and explain self-consuming training loops of generative models.

The top-level names load lazily (PEP 562): ``import madloop`` costs almost nothing, and
importing one part (``madloop.report``, ``madloop.theory``) does not pull in the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ConfigError": "madloop.experiment",
    "ExperimentConfig": "madloop.experiment",
    "FitFailed": "madloop.models.base",
    "load": "madloop.experiment",
    "load_config": "madloop.config",
    "Model": "madloop.models.contract",
    "register_family": "madloop.models.contract",
    "RunResult": "madloop.experiment",
    "run": "madloop.experiment",
    "SweepResult": "madloop.sweeps",
    "sweep": "madloop.sweeps",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads them
    from madloop.config import load_config as load_config
    from madloop.experiment import ConfigError as ConfigError
    from madloop.experiment import ExperimentConfig as ExperimentConfig
    from madloop.experiment import RunResult as RunResult
    from madloop.experiment import load as load
    from madloop.experiment import run as run
    from madloop.models.base import FitFailed as FitFailed
    from madloop.models.contract import Model as Model
    from madloop.models.contract import register_family as register_family
    from madloop.sweeps import SweepResult as SweepResult
    from madloop.sweeps import sweep as sweep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'madloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
