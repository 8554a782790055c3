"""What a finished training run leaves in MLflow: an overlay of a validation case, and the model
(:func:`~attnunet.pipelines.inference.mlflow_model.log_segmentation_model`: the best checkpoint as the run's
``checkpoints/best.pt``, which :func:`attnunet.load_model` rebuilds a registered model from, and the
logged, optionally registered model whose pyfunc segments scans and whose pytorch flavor is the network).
``result.model_uri`` stays None when the store was away until the end: ``attnunet sync`` sends the rest.
"""

from __future__ import annotations

from typing import Any

from attnunet.checkpoints import model_from_checkpoint
from attnunet.pipelines.engines.config import TrainConfig, TrainResult
from attnunet.pipelines.evaluation.overlays import save_overlay
from attnunet.pipelines.inference.apply import Windows, to_labels, window_probabilities
from attnunet.pipelines.inference.mlflow_model import log_segmentation_model
from attnunet.pipelines.tracking.mlflow_runs import RunTracker

__all__ = ["finish_run"]


def finish_run(result: TrainResult, tracker: RunTracker, sample: dict[str, Any], config: TrainConfig) -> None:
    """Log an overlay of the first validation case and the best model (registered under
    ``config.register`` with ``config.alias``); set ``result.model_uri``; end the run."""
    model, spec = model_from_checkpoint(result.best_checkpoint)
    overlay = result.output / "overlays" / "validation.png"
    # The registered model's own windows and flips on the preprocessed case, so the overlay shows what a
    # user of models:/NAME@ALIAS gets (on the validation grid, where the reference label is).
    probabilities = window_probabilities(model, spec, sample["image"], Windows.for_model(spec))
    prediction = to_labels(probabilities.cpu(), spec)[0]
    save_overlay(
        overlay,
        sample["image"][0],
        sample["label"][0],
        prediction,
        class_names=result.config["labels"],
        title=f"validation case, best epoch {result.best_epoch} (mean Dice {result.best_metric:.3f})",
    )
    tracker.log_artifact(overlay, artifact_path="overlays")
    # Under the tracker's rules: what a store that is away misses is sent when it is back (ending the run
    # waits a while for it); the alias moves only to a better run (or forced).
    tracker.log_model(
        result.best_checkpoint, log_with=log_segmentation_model, register=config.register, alias=config.alias
    )
    tracker.end("FINISHED")
    result.model_uri, result.run_id, result.tracking_uri = (
        tracker.model_uri,
        tracker.run_id,
        tracker.tracking_uri,
    )
