"""Dice, 95th-percentile Hausdorff distance and surface Dice of predictions against labels.

``attnunet evaluate --predictions DIR --labels DIR --output DIR`` matches each label file to the
prediction of the same case name (:func:`attnunet.pipelines.files.case_name`, so the
``<case>.nii.gz`` files of ``attnunet infer`` match ``labelsTs/<case>.nii.gz``), computes MONAI's
:class:`~monai.metrics.DiceMetric`, :class:`~monai.metrics.HausdorffDistanceMetric` (95th percentile, mm)
and :class:`~monai.metrics.SurfaceDiceMetric` (tolerance in mm) per foreground class with the label's
voxel spacing, and writes:

- ``metrics.csv``: one row per label file, with a ``status`` column: ``ok``, ``missing prediction``
  or what does not match (shape, affine, values outside the classes);
- ``summary.csv`` and ``summary.json``: mean, std and count per class and metric, the missing and
  mismatched cases by name.

Missing or mismatched predictions are never skipped silently: they get a row, are listed in the
summary, logged as warnings, and make the command exit with status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.networks.utils import one_hot
from tqdm import tqdm

import attnunet.transforms.readers  # noqa: F401  (registers SimpleITKReader: NRRD/MHA labels load too)
from attnunet.atomic import atomic_output, refuse_existing
from attnunet.pipelines.files import (
    IMAGE2D_SUFFIXES,
    IMAGE_SUFFIXES,
    case_name,
    innermost_cause,
    list_images,
    match_by_leading_token,
)
from attnunet.transforms.headers import binary_mask, loader_for

__all__ = ["METRICS", "evaluate", "add_arguments", "run"]

logger = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "nsd")
CASES_FILE, SUMMARY_CSV, SUMMARY_JSON = "metrics.csv", "summary.csv", "summary.json"
# Affines that differ by less than this (mm) are the same geometry (float32 NIfTI headers round).
_AFFINE_TOLERANCE = 1e-3


def _image_files(source: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> dict[str, Path]:
    """Case name -> file, from a folder or a list of files; duplicate case names are an error."""
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            raise FileNotFoundError(f"{what} {source} does not exist")
        suffixes = IMAGE_SUFFIXES + IMAGE2D_SUFFIXES
        files = list_images(source, suffixes) if Path(source).is_dir() else [Path(source)]
    else:
        files = [Path(path) for path in source]
    cases: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist")
        name = case_name(path)
        if name in cases:
            raise ValueError(f"{what}: case {name!r} is given twice ({cases[name]} and {path})")
        cases[name] = path
    return cases


def _class_table(
    class_names: Mapping[Any, str] | Sequence[str] | None, label_files: Mapping[str, Path]
) -> dict[int, str]:
    """Index -> name of every class, background at 0 (from ``class_names``, else the label values)."""
    if class_names is None:
        highest = max(int(_read(path, mask=True).max()) for path in label_files.values())
        return {index: f"class_{index}" if index else "background" for index in range(max(highest, 1) + 1)}
    table = (
        {int(index): str(name) for index, name in class_names.items()}
        if isinstance(class_names, Mapping)
        else dict(enumerate(map(str, class_names)))
    )
    if sorted(table) != list(range(len(table))) or len(table) < 2 or len(set(table.values())) < len(table):
        raise ValueError(
            f"class_names must give distinct names to classes 0..N-1 (background at 0) with at least one "
            f"foreground class, got {class_names!r}"
        )
    return table


def _read(path: Path, *, mask: bool = False) -> MetaTensor:
    """Read a label map (channel first); a failure names the file and its first cause, not MONAI's
    wrapper. A 2D ``mask`` (PNG, GIF, ...) is binarised as the 2D preset does, so 0/255 masks compare
    with 0/1 predictions."""
    try:
        image = loader_for(path, mask=mask, ensure_channel_first=True)(path)
    except Exception as error:  # each reader raises its own type (nibabel ImageFileError, OSError, ...)
        raise ValueError(f"{path} cannot be read: {innermost_cause(error)}") from error
    if mask and str(path).lower().endswith(IMAGE2D_SUFFIXES):
        image = binary_mask(image)
    return image


def _mismatch(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> str | None:
    """Why a prediction cannot be compared with its label, or None."""
    if prediction.shape != label.shape:
        return f"shape {tuple(prediction.shape[1:])} differs from the label's {tuple(label.shape[1:])}"
    geometry = prediction.affine.shape == label.affine.shape  # 2D picture labels carry no geometry
    difference = (
        float(np.abs(np.asarray(prediction.affine) - np.asarray(label.affine)).max()) if geometry else 0.0
    )
    if difference > _AFFINE_TOLERANCE:
        return f"affine differs from the label's (largest difference {difference:.4g})"
    for what, image in (("prediction", prediction), ("label", label)):
        values = torch.unique(image)
        outside = values[(values < 0) | (values >= num_classes) | (values != values.round())]
        if len(outside):
            return f"{what} has values {outside.tolist()[:5]} outside the classes 0..{num_classes - 1}"
    return None


def _statistics(values: list[float]) -> dict[str, float | int | None]:
    """Mean and (population) std over the finite values, and how many there were."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def evaluate(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    output_dir: str | os.PathLike,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    tolerance_mm: float | Sequence[float] = 2.0,
    fov: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score label-map predictions against reference labels, per case and per class.

    Args:
        predictions: a folder of predicted label maps, or a list of files.
        labels: a folder of reference label maps, or a list of files; every label is one case.
        output_dir: where ``metrics.csv``, ``summary.csv`` and ``summary.json`` are written.
        class_names: index -> name, background at 0, like a checkpoint config's ``labels``
            (``{"0": "background", "1": "organ"}``) or a list in index order; default: ``class_K``
            for every value up to the largest label value.
        tolerance_mm: surface Dice tolerance in mm, one for all foreground classes or one per class.
        fov: a folder of field-of-view masks (DRIVE's ``mask/``): every metric is computed inside each
            case's mask only (prediction and label are set to background outside it).
        overwrite: replace existing result files in ``output_dir``.
        progress: show a progress bar over the cases.

    Returns:
        the summary: ``num_cases``, ``num_evaluated``, ``missing`` (case names), ``mismatched``
        (case -> reason), ``unmatched_predictions``, ``classes`` (name -> metric -> mean/std/n),
        ``mean`` (metric -> mean over classes), ``tolerance_mm`` and ``files``. Hausdorff
        distances are in mm; infinite values (an empty prediction or label) count in ``metrics.csv``
        but not in the means.

    Raises:
        FileNotFoundError: ``labels`` or ``predictions`` does not exist, or no label file is found.
        FileExistsError: result files exist in ``output_dir`` and ``overwrite`` is False.
        ValueError: bad ``class_names`` or ``tolerance_mm``, a case name given twice, or an unreadable
            label (an unreadable prediction is reported as mismatched).

    Example:
        >>> summary = evaluate("preds/", "labelsTs/", output_dir="eval/",
        ...                    class_names={"0": "background", "1": "organ"})  # doctest: +SKIP
        >>> summary["classes"]["organ"]["dice"]["mean"]  # doctest: +SKIP
        0.91
    """
    output_dir = Path(output_dir)
    targets = [output_dir / name for name in (CASES_FILE, SUMMARY_CSV, SUMMARY_JSON)]
    refuse_existing(targets, overwrite)
    label_files = _image_files(labels, "labels")
    prediction_files = _image_files(predictions, "predictions")
    fov_files = _image_files(fov, "fov") if fov is not None else {}
    if not label_files:
        raise FileNotFoundError(
            f"no label images ({', '.join(IMAGE_SUFFIXES + IMAGE2D_SUFFIXES)}) in {labels}"
        )
    classes = _class_table(class_names, label_files)
    foreground = {index: name for index, name in classes.items() if index > 0}
    thresholds = [float(t) for t in (tolerance_mm if isinstance(tolerance_mm, Sequence) else [tolerance_mm])]
    thresholds = thresholds * len(foreground) if len(thresholds) == 1 else thresholds
    if len(thresholds) != len(foreground) or any(t <= 0 for t in thresholds):
        raise ValueError(
            f"tolerance_mm must be one positive number or one per foreground class ({len(foreground)}), "
            f"got {tolerance_mm!r}"
        )
    dice = DiceMetric(include_background=False, reduction="none")
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    nsd = SurfaceDiceMetric(class_thresholds=thresholds, include_background=False, reduction="none")

    rows: list[dict[str, Any]] = []
    matched: set[str] = set()
    missing: list[str] = []
    mismatched: dict[str, str] = {}
    per_class = {class_name: {metric: [] for metric in METRICS} for class_name in foreground.values()}
    for name, label_file in tqdm(label_files.items(), desc="evaluate", unit="case", disable=not progress):
        row: dict[str, Any] = {"case": name, "label": str(label_file), "prediction": "", "status": "ok"}
        rows.append(row)
        # DRIVE names a case's label 21_manual1 and its prediction (from 21_training.tif) 21_training
        prediction_file = prediction_files.get(name) or match_by_leading_token(name, prediction_files)
        if prediction_file is None:
            missing.append(name)
            row["status"] = "missing prediction"
            continue
        matched.add(case_name(prediction_file))
        row["prediction"] = str(prediction_file)
        label = _read(label_file, mask=True)
        try:
            prediction = _read(prediction_file)
            while prediction.ndim > label.ndim and prediction.shape[-1] == 1:
                prediction = prediction[..., 0]  # infer writes a 2D map as (X, Y, 1): NIfTI needs 3 dims
            reason = _mismatch(prediction, label, len(classes))
        except ValueError as error:  # an unreadable prediction is reported by name, like a mismatched one
            reason = str(error)
        if reason is None and fov is not None:
            fov_file = fov_files.get(name) or match_by_leading_token(name, fov_files)
            inside = _read(fov_file, mask=True) if fov_file is not None else None
            if inside is None:
                reason = f"no field-of-view mask in {fov}"
            elif inside.shape != label.shape:
                reason = f"field-of-view mask {fov_file} has shape {tuple(inside.shape[1:])}, not the label's"
            else:
                row["fov"] = str(fov_file)
                prediction, label = prediction * (inside > 0), label * (inside > 0)
        if reason is not None:
            mismatched[name] = reason
            row["status"] = reason
            continue
        y_pred = one_hot(prediction.as_tensor()[None].long(), len(classes))
        y = one_hot(label.as_tensor()[None].long(), len(classes))
        spacing = [float(s) for s in label.pixdim]
        scores = {
            "dice": dice(y_pred, y)[0],
            "hd95": hd95(y_pred, y, spacing=spacing)[0],
            "nsd": nsd(y_pred, y, spacing=spacing)[0],
        }
        for metric, values in scores.items():
            for position, class_name in enumerate(foreground.values()):
                value = float(values[position])
                row[f"{metric}_{class_name}"] = value
                per_class[class_name][metric].append(value)

    unmatched = sorted(set(prediction_files) - matched)
    class_summary = {
        class_name: {metric: _statistics(values) for metric, values in metrics.items()}
        for class_name, metrics in per_class.items()
    }
    # The mean over classes of the per-class means (classes without a finite value left out).
    means = {
        metric: _statistics([s[metric]["mean"] for s in class_summary.values() if s[metric]["n"]])["mean"]
        for metric in METRICS
    }
    summary: dict[str, Any] = {
        "num_cases": len(label_files),
        "num_evaluated": len(label_files) - len(missing) - len(mismatched),
        "missing": missing,
        "mismatched": mismatched,
        "unmatched_predictions": unmatched,
        "classes": class_summary,
        "mean": means,
        "tolerance_mm": dict(zip(foreground.values(), thresholds, strict=True)),
        "fov": None if fov is None else str(fov),
        "files": {"cases": str(targets[0]), "summary_csv": str(targets[1]), "summary_json": str(targets[2])},
    }

    columns = (
        ["case", "status", "prediction", "label"]
        + (["fov"] if fov is not None else [])
        + [f"{metric}_{class_name}" for class_name in foreground.values() for metric in METRICS]
    )
    with atomic_output(targets[0]) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(
            {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()}
            for row in rows
        )
    with atomic_output(targets[1]) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["class", "metric", "mean", "std", "n"])
        for class_name, metrics in class_summary.items():
            for metric, st in metrics.items():
                writer.writerow([class_name, metric, _format(st["mean"]), _format(st["std"]), st["n"]])
        for metric, value in means.items():
            writer.writerow(["mean", metric, _format(value), "", len(class_summary)])
    with atomic_output(targets[2]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))

    if missing:
        logger.warning("%d case(s) have no prediction: %s", len(missing), ", ".join(missing))
    for name, reason in mismatched.items():
        logger.warning("case %s not evaluated: %s", name, reason)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet evaluate``."""
    parser.add_argument("--predictions", required=True, help="folder of predicted label maps (<case>.nii.gz)")
    parser.add_argument("--labels", required=True, help="folder of reference label maps (<case>.nii.gz)")
    parser.add_argument("--output", required=True, help="folder for metrics.csv and summary.csv/json")
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names in index order, background first (default: class_K for each label value)",
    )
    parser.add_argument(
        "--tolerance-mm",
        type=float,
        nargs="+",
        default=[2.0],
        help="surface Dice tolerance in mm: one value, or one per foreground class (default: 2)",
    )
    parser.add_argument("--fov", help="folder of field-of-view masks: score inside them only (DRIVE's mask/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet evaluate``; exit status 1 when a prediction is missing or does not match."""
    summary = evaluate(
        args.predictions,
        args.labels,
        output_dir=args.output,
        class_names=args.classes,
        tolerance_mm=args.tolerance_mm,
        fov=args.fov,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    for class_name, metrics in summary["classes"].items():
        text = ", ".join(
            f"{metric} {_format(stats['mean'])} +- {_format(stats['std'])} (n={stats['n']})"
            for metric, stats in metrics.items()
        )
        print(f"{class_name}: {text}")
    print(f"{summary['num_evaluated']}/{summary['num_cases']} cases evaluated; results in {args.output}")
    return 1 if summary["missing"] or summary["mismatched"] else 0
