"""Dice, 95th-percentile Hausdorff distance and surface Dice of predictions against labels.

``attnunet evaluate --predictions DIR --labels DIR --output DIR`` matches each label file to the
prediction of the same case name (:func:`attnunet.pipelines.data.files.case_name`, so the
``<case>.nii.gz`` files of ``attnunet infer`` match ``labelsTs/<case>.nii.gz``), computes MONAI's
:class:`~monai.metrics.DiceMetric`, :class:`~monai.metrics.HausdorffDistanceMetric` (95th percentile, mm)
and :class:`~monai.metrics.SurfaceDiceMetric` (tolerance in mm) per foreground class with the label's
voxel spacing; ``regions`` adds unions of label values scored the same way, as a challenge scores them
(BraTS: ``{"whole_tumour": [1, 2, 3, 4], "tumour_core": [1, 3, 4], "enhancing": [4]}``), and writes:

- ``metrics.csv``: one row per label file, with a ``status`` column: ``ok``, ``missing prediction``
  or what does not match (shape, affine, values outside the classes);
- ``summary.csv`` and ``summary.json``: mean, std and count of cases (``n``) per class, region and metric,
  the mean over classes (regions left out) with the number of classes it averaged (``classes``), the
  missing and mismatched cases by name;
- with ``images``, ``report.html`` (:mod:`attnunet.pipelines.evaluation.report`): the cases' scores and
  volumes, worst first, and a viewer of each case's image with its reference and prediction.

A label may be a DICOM SEG (``labelsTs/<case>.dcm`` for the prediction of series ``<case>/``): it is
read onto the grid of the series it was made from, found beside it
(:func:`attnunet.transforms.dicom_seg_read.find_source_series`: ``imagesTs/<case>/`` beside ``labelsTs/``,
or a folder beside the SEG), which is the grid ``attnunet infer`` writes that series' prediction on.

Missing or mismatched predictions are never skipped silently: they get a row, are listed in the
summary, logged as warnings, and make the command exit with status 1.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
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
from attnunet.atomic import refuse_existing
from attnunet.pipelines.data.files import (
    case_name,
    innermost_cause,
    list_images,
    match_by_leading_token,
)
from attnunet.pipelines.evaluation.reports import (
    METRICS,
    MISSING_STATUS,
    REGION_NAME,
    summarise,
    write_reports,
)
from attnunet.pipelines.evaluation.server import REPORT_FILE
from attnunet.pipelines.flags import flag
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES
from attnunet.transforms.headers import binary_mask, loader_for

__all__ = ["METRICS", "evaluate"]

logger = logging.getLogger(__name__)

CASES_FILE, SUMMARY_CSV, SUMMARY_JSON = "metrics.csv", "summary.csv", "summary.json"
# Predictions are label-map files; labels may also be DICOM SEG files (".dcm").
PREDICTION_SUFFIXES = IMAGE_SUFFIXES + IMAGE2D_SUFFIXES
LABEL_SUFFIXES = (*PREDICTION_SUFFIXES, ".dcm")
# Affines that differ by less than this (mm) are the same geometry (float32 NIfTI headers round).
_AFFINE_TOLERANCE = 1e-3


def _image_files(
    source: str | os.PathLike | Sequence[str | os.PathLike], what: str, suffixes: Sequence[str]
) -> dict[str, Path]:
    """Case name -> file, from a folder (its files ending in ``suffixes``) or a list of files; duplicate
    case names are an error."""
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).exists():
            raise FileNotFoundError(f"{what} {source} does not exist")
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


def _region_table(
    regions: Mapping[str, int | Sequence[int]] | None, table: Mapping[int, str]
) -> dict[str, list[int]]:
    """Name -> sorted label values of every region, checked against the class table."""
    if regions is None:
        return {}
    if not isinstance(regions, Mapping):
        raise ValueError(
            f"regions must map names to label values, e.g. {{'scar_edema': [4, 5]}}, got {regions!r}"
        )
    checked: dict[str, list[int]] = {}
    for name, given in regions.items():
        values = [given] if isinstance(given, numbers.Integral) else given
        shown = ",".join(map(str, values)) if isinstance(values, (list, tuple)) else repr(given)
        where = f"region {name}={shown}"  # as --region writes it
        if not isinstance(name, str) or not REGION_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: a name is letters, digits, '_' and '-', starting with a letter or '_'"
            )
        if name in table.values() or name == "mean":
            raise ValueError(
                f"{where}: {name!r} is a class name (or the summary's 'mean'); name the region otherwise"
            )
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"{where}: give one or more label values, e.g. {name}=4,5")
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"{where}: label values must be non-negative integers")
        outside = sorted({int(v) for v in values if v >= len(table)})
        if outside:
            raise ValueError(
                f"{where}: label value(s) {outside} are not among the classes 0..{len(table) - 1}"
            )
        checked[name] = sorted({int(v) for v in values})
    return checked


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


def _thresholds(tolerance_mm: float | Sequence[float], count: int, regions: int = 0) -> list[float]:
    """One surface Dice tolerance (mm) per foreground class and region, from one for all or one each
    (the classes' in index order, then the regions')."""
    thresholds = [float(t) for t in (tolerance_mm if isinstance(tolerance_mm, Sequence) else [tolerance_mm])]
    thresholds = thresholds * (count + regions) if len(thresholds) == 1 else thresholds
    if len(thresholds) != count + regions or any(t <= 0 for t in thresholds):
        each = (
            f"foreground class and region ({count} + {regions})" if regions else f"foreground class ({count})"
        )
        raise ValueError(f"tolerance_mm must be one positive number or one per {each}, got {tolerance_mm!r}")
    return thresholds


class _Mismatch(Exception):
    """Why a case cannot be scored; it becomes the case's status, never an error of the run."""


def _scorable(
    label_file: Path,
    prediction_file: Path,
    fov_file: Path | None,
    fov: str | os.PathLike | None,
    num_classes: int,
) -> tuple[MetaTensor, MetaTensor]:
    """Prediction and label of one case, set to background outside its field of view when ``fov`` is given.

    Raises:
        _Mismatch: the prediction is unreadable or does not fit the label, or the field of view is
            missing or misshapen.
        ValueError: the label or the field-of-view mask cannot be read.
    """
    label = _read(label_file, mask=True)
    try:
        prediction = _read(prediction_file)
        while prediction.ndim > label.ndim and prediction.shape[-1] == 1:
            prediction = prediction[..., 0]  # infer writes a 2D map as (X, Y, 1): NIfTI needs 3 dims
        reason = _mismatch(prediction, label, num_classes)
    except ValueError as error:  # an unreadable prediction is reported by name, like a mismatched one
        reason = str(error)
    if reason is not None:
        raise _Mismatch(reason)
    if fov is None:
        return prediction, label
    if fov_file is None:
        raise _Mismatch(f"no field-of-view mask in {fov}")
    inside = _read(fov_file, mask=True)
    if inside.shape != label.shape:
        raise _Mismatch(f"field-of-view mask {fov_file} has shape {tuple(inside.shape[1:])}, not the label's")
    return prediction * (inside > 0), label * (inside > 0)


class _Scorer:
    """Per-class and per-region Dice, HD95 and surface Dice of a case, with MONAI's metrics built once per
    evaluation: a region is one more channel, its mask ``isin(label, values)`` in prediction and label."""

    def __init__(
        self,
        foreground: Sequence[str],
        thresholds: Sequence[float],
        regions: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.foreground = list(foreground)
        self.regions = {name: torch.tensor(list(values)) for name, values in (regions or {}).items()}
        self.dice = DiceMetric(include_background=False, reduction="none")
        self.hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        self.nsd = SurfaceDiceMetric(
            class_thresholds=list(thresholds), include_background=False, reduction="none"
        )

    def __call__(self, prediction: MetaTensor, label: MetaTensor) -> dict[str, float]:
        """``<metric>_<class or region>`` -> value; distances in mm, from the label's voxel spacing."""
        y_pred, y = (self._channels(image.as_tensor().long()) for image in (prediction, label))
        spacing = [float(s) for s in label.pixdim]
        with warnings.catch_warnings():
            # MONAI's own surface-distance code passes an argument it has deprecated (FutureWarning on
            # every case since MONAI 1.5); nothing a user of these metrics can change.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            # a class absent from the prediction: its distances are NaN in metrics.csv, and the summary's n
            # counts the cases that have one; MONAI's warning, once per case and class, says no more
            warnings.filterwarnings("ignore", message=".*is all 0, this may result in nan/inf distance")
            scores = {
                "dice": self.dice(y_pred, y)[0],
                "hd95": self.hd95(y_pred, y, spacing=spacing)[0],
                "nsd": self.nsd(y_pred, y, spacing=spacing)[0],
            }
        names = self.foreground + list(self.regions)
        return {
            f"{metric}_{name}": float(values[position])
            for metric, values in scores.items()
            for position, name in enumerate(names)
        }

    def _channels(self, image: torch.Tensor) -> torch.Tensor:
        """A channel-first label map (1, *spatial) as a batch of one: background, one channel per foreground
        class, then one per region."""
        classes = one_hot(image[None], len(self.foreground) + 1)
        regions = [torch.isin(image, values)[None].to(classes.dtype) for values in self.regions.values()]
        return torch.cat([classes, *regions], dim=1)


def _case_row(
    name: str,
    label_file: Path,
    prediction_files: Mapping[str, Path],
    fov: str | os.PathLike | None,
    fov_files: Mapping[str, Path],
    score: _Scorer,
) -> dict[str, Any]:
    """The ``metrics.csv`` row of one case: its files, its status and (when ``ok``) its scores."""
    row: dict[str, Any] = {"case": name, "label": str(label_file), "prediction": "", "status": "ok"}
    # DRIVE names a case's label 21_manual1 and its prediction (from 21_training.tif) 21_training
    prediction_file = prediction_files.get(name) or match_by_leading_token(name, prediction_files)
    if prediction_file is None:
        row["status"] = MISSING_STATUS
        return row
    row["prediction"] = str(prediction_file)
    fov_file = fov_files.get(name) or match_by_leading_token(name, fov_files)
    try:
        prediction, label = _scorable(label_file, prediction_file, fov_file, fov, len(score.foreground) + 1)
    except _Mismatch as reason:
        row["status"] = str(reason)
        return row
    if fov is not None:
        row["fov"] = str(fov_file)
    return {**row, **score(prediction, label)}


def evaluate(
    predictions: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    output_dir: str | os.PathLike,
    class_names: Mapping[Any, str] | Sequence[str] | None = None,
    regions: Mapping[str, int | Sequence[int]] | None = None,
    tolerance_mm: float | Sequence[float] = 2.0,
    fov: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Score label-map predictions against reference labels, per case, per class and per region.

    Under ``torchrun`` (``multi_gpu_evaluate.json``) rank 0 scores every case and the other ranks return
    None: scoring is cheap beside inference, and one writer keeps the reports whole.

    Args:
        predictions: a folder of predicted label maps, or a list of files.
        labels: a folder of reference label maps, or a list of files; every label is one case. A DICOM
            SEG label is read onto the series found beside it (see the module docstring).
        output_dir: where ``metrics.csv``, ``summary.csv`` and ``summary.json`` are written.
        class_names: index -> name, background at 0, like a checkpoint config's ``labels``
            (``{"0": "background", "1": "organ"}``) or a list in index order; default: ``class_K``
            for every value up to the largest label value.
        regions: name -> label values (``{"scar": [5], "scar_edema": [4, 5]}``): each region is scored as one
            more class whose mask is ``isin(label, values)`` in prediction and label, under its own name
            (columns ``dice_<name>``... of ``metrics.csv``, rows of ``summary.csv``, ``regions`` of the
            summary) and left out of the mean over classes. Names are letters, digits, ``_`` and ``-``,
            none a class name; values are classes. Default: none.
        tolerance_mm: surface Dice tolerance in mm, one for all foreground classes and regions or one per
            class then one per region.
        fov: a folder of field-of-view masks (DRIVE's ``mask/``): every metric is computed inside each
            case's mask only (prediction and label are set to background outside it).
        images: the folder of the images the labels were drawn on (``<case>.nii.gz``, ``<case>_0000.nii.gz``,
            DICOM series folders ``<case>/``...): also write ``report.html``, the results page, and its
            ``report_files/`` (:func:`attnunet.pipelines.evaluation.report.write_report`). Default: none.
        overwrite, progress: replace existing result files in ``output_dir``; a progress bar over cases.

    Returns:
        None on a rank other than 0; otherwise the summary: ``num_cases``, ``num_evaluated``,
        ``missing`` (case names), ``mismatched`` (case -> reason), ``unmatched_predictions``,
        ``classes`` and ``regions`` (name -> metric -> mean/std/n), ``region_values`` (name -> label
        values), ``mean`` (metric -> mean over classes),
        ``mean_classes`` (metric -> how many classes that mean averaged), ``tolerance_mm`` and ``files``
        (``report`` among them with ``images``).
        Hausdorff distances are in mm; infinite or NaN values (an empty prediction or label) count in
        ``metrics.csv`` but not in the means. A class or region absent from both the prediction and the
        label of a case scores NaN in every metric (MONAI's metrics), so that case is left out of its means.

    Raises:
        FileNotFoundError: ``labels`` or ``predictions`` does not exist, or no label file is found.
        FileExistsError: result files exist in ``output_dir`` and ``overwrite`` is False.
        ValueError: bad ``class_names``, ``regions``, ``tolerance_mm`` or flag, a case name given twice, or an
            unreadable label (an unreadable prediction is reported as mismatched).

    Example:
        >>> evaluate("preds/", "labelsTs/", output_dir="eval/", class_names=["background", "organ"])[
        ...     "classes"]["organ"]["dice"]["mean"]  # doctest: +SKIP
        0.91
    """
    overwrite, progress = flag("overwrite", overwrite), flag("progress", progress)
    if int(os.environ.get("RANK", "0")) > 0:
        return None
    targets = [Path(output_dir) / name for name in (CASES_FILE, SUMMARY_CSV, SUMMARY_JSON)]
    report = Path(output_dir) / REPORT_FILE
    refuse_existing([*targets, *([report] if images is not None else [])], overwrite)
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"images {images} is not a folder")
    label_files = _image_files(labels, "labels", LABEL_SUFFIXES)
    prediction_files = _image_files(predictions, "predictions", PREDICTION_SUFFIXES)
    fov_files = _image_files(fov, "fov", PREDICTION_SUFFIXES) if fov is not None else {}
    if not label_files:
        raise FileNotFoundError(f"no label images ({', '.join(LABEL_SUFFIXES)}) in {labels}")
    table = _class_table(class_names, label_files)
    foreground = [name for index, name in table.items() if index > 0]
    region_values = _region_table(regions, table)
    thresholds = _thresholds(tolerance_mm, len(foreground), len(region_values))
    score = _Scorer(foreground, thresholds, region_values)
    rows = [
        _case_row(name, label_file, prediction_files, fov, fov_files, score)
        for name, label_file in tqdm(label_files.items(), desc="evaluate", unit="case", disable=not progress)
    ]
    matched = {case_name(Path(row["prediction"])) for row in rows if row["prediction"]}
    summary = {
        **summarise(rows, foreground, sorted(set(prediction_files) - matched), list(region_values)),
        "region_values": region_values,
        "tolerance_mm": dict(zip(foreground + list(region_values), thresholds, strict=True)),
        "fov": None if fov is None else str(fov),
        "files": {
            "cases": str(targets[0]),
            "summary_csv": str(targets[1]),
            "summary_json": str(targets[2]),
            **({"report": str(report)} if images is not None else {}),
        },
    }
    write_reports(targets, rows, summary, fov is not None)
    if images is not None:
        from attnunet.pipelines.evaluation.report import write_report  # nibabel, the page's files

        given = {"predictions": predictions, "labels": labels}
        sources = {what: str(where) for what, where in given.items() if isinstance(where, (str, os.PathLike))}
        write_report(report, rows, table, list(region_values), images, sources=sources)
    if summary["missing"]:
        logger.warning(
            "%d case(s) have no prediction: %s", len(summary["missing"]), ", ".join(summary["missing"])
        )
    for name, reason in summary["mismatched"].items():
        logger.warning("case %s not evaluated: %s", name, reason)
    return summary
