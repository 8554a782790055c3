"""Training on MONAI's engines: the run's config, component factories, ignite handlers, the loop.

``from attnunet.pipelines.engines import TrainConfig, train`` is the Python entry point.
"""

from attnunet.pipelines.engines.config import TrainConfig, TrainResult, config_from_plan, planned_config
from attnunet.pipelines.engines.training import train

__all__ = ["TrainConfig", "TrainResult", "config_from_plan", "planned_config", "train"]
