"""``attnunet demo``: the whole pipeline on the embedded synthetic CT data, in a few minutes on a CPU.

1. writes the demo dataset (:func:`attnunet.pipelines.demo.data.write_demo_dataset`), unless
   ``--data`` names another MSD-layout dataset;
2. trains as ``attnunet train --data DATA`` does (:func:`attnunet.pipelines.engines.config.planned_config`:
   the plan of the data, then :func:`attnunet.pipelines.engines.training.train`), tracked in MLflow and
   registered as ``attnunet-demo@champion``;
3. segments the held-out cases (``imagesTs``) from the registered model with sliding-window
   inference (:func:`attnunet.pipelines.inference.predict.infer`) and writes NIfTI predictions;
4. scores them against ``labelsTs`` (:func:`attnunet.pipelines.evaluation.metrics.evaluate`), writes the
   results page ``evaluation/report.html`` (``attnunet view OUTPUT/evaluation`` serves it) and an
   overlay PNG, and prints the Dice per class and where everything is. The evaluation folder, page
   included, is then uploaded to the training run's artifacts (``evaluation/``).

Without ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` the demo keeps its MLflow store inside the
output folder (``OUTPUT/mlflow.db``, artifacts in ``OUTPUT/mlartifacts``), so one folder holds the
whole demo and ``mlflow ui --backend-store-uri sqlite:///OUTPUT/mlflow.db`` shows it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage

from attnunet.pipelines.demo.data import DEMO_LABELS, write_demo_dataset
from attnunet.pipelines.engines.config import planned_config
from attnunet.pipelines.engines.training import TrainConfig, TrainResult, train
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.evaluation.overlays import save_overlay
from attnunet.pipelines.inference.predict import infer
from attnunet.pipelines.tracking.mlflow_runs import log_folder_to_run

__all__ = ["DemoResult", "format_settings", "run_demo"]

DEMO_MODEL_NAME = "attnunet-demo"
DEMO_ALIAS = "champion"
# The folders and files the demo writes under its output (the only things --overwrite replaces).
_DEMO_ENTRIES = ("data", "train", "predictions", "evaluation", "overlay.png")


@dataclass
class DemoResult:
    """Where the demo put everything, and how well it did.

    Attributes:
        output: the demo folder.
        data: the dataset trained on.
        train: the training result (checkpoints, MLflow run, model URI).
        predictions: the NIfTI label maps of the held-out cases.
        overlay: the overlay PNG of the first held-out case.
        summary: the evaluation summary (None when the held-out cases have no labels).
        report: the results page (None without labels).
    """

    output: Path
    data: Path
    train: TrainResult
    predictions: list[Path]
    overlay: Path
    summary: dict[str, Any] | None
    report: Path | None = None


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} is a file; choose a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--output {output} exists and is not empty; pass --overwrite to replace the demo's "
                "files in it, or choose another folder"
            )
        for name in _DEMO_ENTRIES:
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)


def _held_out(data: Path) -> tuple[Path, Path | None]:
    images, labels = data / "imagesTs", data / "labelsTs"
    if not images.is_dir():
        raise FileNotFoundError(f"--data {data} has no imagesTs folder with held-out cases to segment")
    return images, labels if labels.is_dir() else None


def run_demo(
    output: str | os.PathLike = "attnunet-demo",
    *,
    data: str | os.PathLike | None = None,
    epochs: int | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    announce: Callable[[TrainConfig], None] | None = None,
    **overrides: Any,
) -> DemoResult:
    """Run the demo: data, training with MLflow and registry, held-out segmentation and Dice.

    Args:
        output: the demo folder; an existing non-empty one needs ``overwrite``.
        data: an MSD-layout dataset with ``imagesTs`` (and ``labelsTs`` to score); None writes the
            embedded demo data to ``output/data``.
        epochs: training epochs (default: ``attnunet train``'s, 50).
        tracking_uri: MLflow store; None means ``MLFLOW_TRACKING_URI``, else ``output/mlflow.db``.
        device: training and inference device (default: CUDA when available).
        overwrite: replace the demo's own files in ``output`` (other files there are kept).
        progress: progress bars.
        announce: called with the planned training config before training starts (the command prints
            it with :func:`format_settings`).
        overrides: other :class:`~attnunet.pipelines.engines.training.TrainConfig` options
            (e.g. ``roi_size``, ``network_kwargs``); the plan fills the rest.

    Returns:
        a :class:`DemoResult`.

    Raises:
        FileExistsError: ``output`` is not empty and ``overwrite`` is False.
        FileNotFoundError: ``data`` has no ``imagesTs``.
        ConnectionError: the MLflow store cannot be reached.

    Example:
        >>> result = run_demo("attnunet-demo")  # doctest: +SKIP
        >>> result.summary["mean"]["dice"]  # doctest: +SKIP
        0.9
    """
    output = Path(output).resolve()
    if data is not None:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"--data {data} is not a folder")
        _held_out(Path(data))
    _prepare_output(output, overwrite)
    artifact_location = None
    if tracking_uri is None and "MLFLOW_TRACKING_URI" not in os.environ:
        tracking_uri = f"sqlite:///{output / 'mlflow.db'}"
        artifact_location = (output / "mlartifacts").as_uri()
    data = Path(write_demo_dataset(output / "data") if data is None else data).resolve()
    images, labels = _held_out(data)
    if epochs is not None:
        overrides["epochs"] = epochs
    config = planned_config(
        "auto",
        data=str(data),
        output=str(output / "train"),
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        experiment=DEMO_MODEL_NAME,
        run_name="demo",
        register=DEMO_MODEL_NAME,
        alias=DEMO_ALIAS,
        device=device,
        progress=progress,
        **overrides,
    )
    if announce is not None:
        announce(config)
    result = train(config)
    predictions, overlay, summary = _segment_held_out(images, labels, output, result, device, progress)
    report = Path(summary["files"]["report"]) if summary is not None else None
    if report is not None and result.run_id is not None:
        log_folder_to_run(result.tracking_uri, result.run_id, report.parent, "evaluation")
    return DemoResult(output, data, result, predictions, overlay, summary, report)


# The options a demo user would want to see; the rest are attnunet train's defaults.
_SHOWN = ("network", "network_kwargs", "preset", "pixdim", "roi_size", "batch_size", "num_samples", "epochs",
          "val_every", "lr", "scheduler", "loss")  # fmt: skip


def format_settings(config: TrainConfig) -> str:
    """The lines the demo prints before it trains: ``config``'s main options, as the plan set them."""
    rows = {name: getattr(config, name) for name in _SHOWN}
    rows["device"] = config.device or "cuda when available, else cpu"
    width = max(len(name) for name in rows)
    lines = ["attnunet demo trains as `attnunet train --data DATA` does, with the plan of its data:"]
    for name, value in rows.items():
        if isinstance(value, dict):
            value = ", ".join(f"{key}={item}" for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            value = " x ".join(str(item) for item in value)
        lines.append(f"  {name:<{width}}  {value}")
    return "\n".join(lines)


def _segment_held_out(
    images: Path, labels: Path | None, output: Path, result: TrainResult, device: str | None, progress: bool
) -> tuple[list[Path], Path, dict[str, Any] | None]:
    """Segment ``images`` with the registered model: the predictions, an overlay, and the evaluation
    summary against ``labels`` (None without them)."""
    predictions = infer(
        images,
        output / "predictions",
        model=result.model_uri,
        tracking_uri=result.tracking_uri,
        device=device or "auto",
        sw_device=device or "auto",
        overwrite=True,
        progress=progress,
    )
    summary = None
    if labels is not None:
        summary = evaluate(
            output / "predictions",
            labels,
            output_dir=output / "evaluation",
            class_names=result.config.get("labels", DEMO_LABELS),
            images=images,
            overwrite=True,
        )
    overlay = _overlay(
        output / "overlay.png", images / predictions[0].name, predictions[0], labels, result.config
    )
    return predictions, overlay, summary


def _overlay(path: Path, image: Path, prediction: Path, labels: Path | None, config: dict[str, Any]) -> Path:
    """Overlay of a held-out case in its own geometry: CT window, label (if any), prediction."""
    loader = LoadImage(image_only=True)
    window = config.get("preset_kwargs") or {}
    image = torch.clamp(loader(image), window.get("a_min", -175.0), window.get("a_max", 250.0))
    label_path = labels / prediction.name if labels is not None else None
    label = loader(label_path) if label_path is not None and label_path.exists() else None
    return save_overlay(
        path,
        image,
        label,
        np.asarray(loader(prediction)),
        class_names=config["labels"],
        title=f"held-out case {prediction.name}",
    )
