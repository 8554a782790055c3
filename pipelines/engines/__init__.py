"""Training on MONAI's engines: the run's config, component factories, ignite handlers, the loop.

``from attnunet.pipelines.engines import TrainConfig, train`` is the Python entry point. The names are
imported on first use (PEP 562), so importing one of its modules (``engines.checks``) does not pull in
the training loop and MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["TrainConfig", "TrainResult", "config_from_plan", "planned_config", "train"]

# public name -> module that defines it
_EXPORTS = {
    "TrainConfig": "attnunet.pipelines.engines.config",
    "TrainResult": "attnunet.pipelines.engines.config",
    "config_from_plan": "attnunet.pipelines.engines.config",
    "planned_config": "attnunet.pipelines.engines.config",
    "train": "attnunet.pipelines.engines.training",
}

if TYPE_CHECKING:
    from attnunet.pipelines.engines.config import TrainConfig, TrainResult, config_from_plan, planned_config
    from attnunet.pipelines.engines.training import train


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'attnunet.pipelines.engines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
