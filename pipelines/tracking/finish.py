"""What a finished training run leaves in MLflow: the best checkpoint (which :func:`attnunet.load_model`
rebuilds a registered model from), an overlay of a validation case, and the logged and registered model.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from attnunet.checkpoints import model_from_checkpoint
from attnunet.pipelines.engines.config import TrainConfig, TrainResult
from attnunet.pipelines.evaluation.overlays import save_overlay
from attnunet.pipelines.tracking.mlflow_runs import RunTracker

__all__ = ["finish_run"]


def finish_run(result: TrainResult, tracker: RunTracker, sample: dict[str, Any], config: TrainConfig) -> None:
    """Log the best checkpoint, an overlay of the first validation case and the model; end the run."""
    resolved = result.config
    model, _ = model_from_checkpoint(result.best_checkpoint)
    overlay = result.output / "overlays" / "validation.png"
    inferer = SlidingWindowInferer(
        roi_size=config.roi_size, sw_batch_size=config.sw_batch_size, overlap=config.overlap, mode="gaussian"
    )
    with torch.no_grad():
        logits = inferer(sample["image"].unsqueeze(0).as_tensor().float(), model)[0]
    prediction = (logits > 0).long() if logits.shape[0] == 1 else logits.argmax(dim=0)
    save_overlay(
        overlay,
        sample["image"][0],
        sample["label"][0],
        prediction,
        class_names=resolved["labels"],
        title=f"validation case, best epoch {result.best_epoch} (mean Dice {result.best_metric:.3f})",
    )
    tracker.log_artifact(result.best_checkpoint, artifact_path="checkpoints")
    tracker.log_artifact(overlay, artifact_path="overlays")
    example = tuple(min(s, 32) for s in config.roi_size)
    result.model_uri = tracker.log_model(
        model,
        in_channels=resolved["in_channels"],
        out_channels=resolved["out_channels"],
        spatial_dims=resolved["spatial_dims"],
        example_size=example,
        register=config.register,
        alias=config.alias,
    )
    result.run_id, result.tracking_uri = tracker.run_id, tracker.tracking_uri
    tracker.end("FINISHED")
