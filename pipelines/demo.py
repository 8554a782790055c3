"""``attnunet demo``: the whole pipeline on the embedded synthetic CT data, in a few minutes on a CPU.

1. writes the demo dataset (:func:`attnunet.pipelines.demo_data.write_demo_dataset`), unless
   ``--data`` names another MSD-layout dataset;
2. trains the small 3D Attention U-Net (:func:`attnunet.pipelines.training.train`), tracked in
   MLflow and registered as ``attnunet-demo@champion``;
3. segments the held-out cases (``imagesTs``) from the registered model with sliding-window
   inference (:func:`attnunet.pipelines.inference.infer`) and writes NIfTI predictions;
4. scores them against ``labelsTs`` (:func:`attnunet.pipelines.evaluation.evaluate`), writes an
   overlay PNG, and prints the Dice per class and where everything is.

Without ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` the demo keeps its MLflow store inside the
output folder (``OUTPUT/mlflow.db``, artifacts in ``OUTPUT/mlartifacts``), so one folder holds the
whole demo and ``mlflow ui --backend-store-uri sqlite:///OUTPUT/mlflow.db`` shows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage

from attnunet.pipelines.demo_data import DEMO_LABELS, write_demo_dataset
from attnunet.pipelines.evaluation import evaluate
from attnunet.pipelines.inference import infer
from attnunet.pipelines.overlays import save_overlay
from attnunet.pipelines.training import TrainConfig, TrainResult, train

__all__ = ["DEMO_SETTINGS", "DemoResult", "run_demo", "add_arguments", "run"]

logger = logging.getLogger(__name__)

# Chosen for the demo data (64 x 64 x 32 voxels at 1.5 x 1.5 x 3 mm) and a 2-core CPU: its own spacing,
# 48 x 48 x 32 patches, instance norm, three levels with the non-local attention on the two coarsest
# (at 1/2 resolution it costs more than the rest of the network on a CPU), enough epochs for a mean
# Dice >= 0.85 on the held-out cases in < 5 min. 16 features (the preset's): with 8, the full-resolution
# stage that feeds the 1x1 head was too narrow and from some seeds training settled on predicting no
# lesion (issue 10 found the same on real MR); with 16, seeds 0-2 ended at validation Dice 0.89-0.93.
DEMO_SETTINGS: dict[str, Any] = {
    "preset": "ct",
    "network": "attention_unet_3d_small",
    "network_kwargs": {"init_features": 16, "norm": "instance", "depth": 3, "attention_levels": [2, 3]},
    "roi_size": (48, 48, 32),
    "pixdim": (1.5, 1.5, 3.0),
    "epochs": 30,
    "val_every": 5,
    "batch_size": 2,
    "num_samples": 4,
    "lr": 2e-3,
    "val_fraction": 0.2,
}
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
    """

    output: Path
    data: Path
    train: TrainResult
    predictions: list[Path]
    overlay: Path
    summary: dict[str, Any] | None


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
    **overrides: Any,
) -> DemoResult:
    """Run the demo: data, training with MLflow and registry, held-out segmentation and Dice.

    Args:
        output: the demo folder; an existing non-empty one needs ``overwrite``.
        data: an MSD-layout dataset with ``imagesTs`` (and ``labelsTs`` to score); None writes the
            embedded demo data to ``output/data``.
        epochs: training epochs (default: ``DEMO_SETTINGS["epochs"]``).
        tracking_uri: MLflow store; None means ``MLFLOW_TRACKING_URI``, else ``output/mlflow.db``.
        device: training and inference device (default: CUDA when available).
        overwrite: replace the demo's own files in ``output`` (other files there are kept).
        progress: progress bars.
        overrides: other :class:`~attnunet.pipelines.training.TrainConfig` options
            (e.g. ``roi_size``, ``network_kwargs``).

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
    if data is None:
        data = write_demo_dataset(output / "data")
    data = Path(data).resolve()
    images, labels = _held_out(data)

    settings = {**DEMO_SETTINGS, **overrides}
    if epochs is not None:
        settings["epochs"] = epochs
        settings["val_every"] = min(settings["val_every"], epochs)
    config = TrainConfig(
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
        **settings,
    )
    result = train(config)

    predictions = infer(
        images,
        output / "predictions",
        model_uri=result.model_uri,
        tracking_uri=result.tracking_uri,
        device=device,
        sw_device=device or "auto",
        overwrite=True,
        progress=progress,
    )
    class_names = result.config.get("labels", DEMO_LABELS)
    summary = None
    if labels is not None:
        summary = evaluate(
            output / "predictions",
            labels,
            output_dir=output / "evaluation",
            class_names=class_names,
            overwrite=True,
        )
    overlay = _overlay(
        output / "overlay.png", images / predictions[0].name, predictions[0], labels, result.config
    )
    return DemoResult(output, data, result, predictions, overlay, summary)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet demo`` (all optional)."""
    parser.add_argument("--output", default="attnunet-demo", help="demo folder (default: ./%(default)s)")
    parser.add_argument(
        "--data", help="an MSD-layout dataset with imagesTs/labelsTs (default: the embedded demo data)"
    )
    parser.add_argument("--epochs", type=int, help=f"training epochs (default: {DEMO_SETTINGS['epochs']})")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT/mlflow.db)"
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier demo in --output"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """``attnunet demo``: run it and print the Dice per class and where everything is."""
    result = run_demo(
        args.output,
        data=args.data,
        epochs=args.epochs,
        tracking_uri=args.tracking_uri,
        device=args.device,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    trained = result.train
    lines = ["", "attnunet demo finished"]
    if result.summary is not None:
        for name, metrics in result.summary["classes"].items():
            lines.append(f"  Dice {name:<12} {metrics['dice']['mean']:.4f}")
        lines.append(f"  Dice {'mean':<12} {result.summary['mean']['dice']:.4f}  (held-out cases)")
    lines += [
        f"  data:         {result.data}",
        f"  checkpoints:  {trained.best_checkpoint.parent}",
        f"  predictions:  {result.predictions[0].parent} ({len(result.predictions)} NIfTI files)",
        f"  overlay:      {result.overlay}",
    ]
    if result.summary is not None:
        lines.append(f"  evaluation:   {result.summary['files']['summary_csv']}")
    lines += [
        f"  MLflow run:   {trained.run_id} in {trained.tracking_uri}",
        f"  model:        {trained.model_uri}",
    ]
    if trained.tracking_uri and trained.tracking_uri.startswith("sqlite:///"):
        lines.append(f"  browse with:  mlflow ui --backend-store-uri {trained.tracking_uri}")
    print("\n".join(lines))
    return 0
