"""The summary of a cross-validation's finished folds (``attnunet cv OUTPUT``, and the end of
``attnunet train --folds N``): Dice, HD95 and surface Dice per class over the out-of-fold cases, the
post-processing chosen on them, the folds still missing, all sent to the parent MLflow run.

Written into ``OUTPUT``:

- ``cv_summary.csv``: ``class, metric, mean, sd, n`` (``dice``, ``hd95``, ``surface_dice``, and
  ``dice_largest_component``: the Dice with only each class's largest component kept);
- ``cv_summary.json``: the same table, the folds finished and missing, the post-processing chosen;
- ``postprocessing.json``: ``{"largest_component": [class values]}``, nnU-Net's rule (a class keeps only
  its largest component where that raises its mean out-of-fold Dice);
- ``cv/``: ``attnunet evaluate``'s reports over the out-of-fold cases (one row per case).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnunet.atomic import atomic_output
from attnunet.cv_layout import POSTPROCESSING_FILE
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.files import case_name
from attnunet.pipelines.data.splits import case_ids, check_splits
from attnunet.pipelines.engines.checks import CONFIG_FILE
from attnunet.pipelines.engines.folds import (
    SPLITS_FILE,
    VALIDATION_DIR,
    fold_dir,
    fold_finished,
    validation_files,
)
from attnunet.pipelines.evaluation.largest_component import choose_largest_component
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.tracking.cv_run import report_to_parent

__all__ = ["CV_SUMMARY_CSV", "POSTPROCESSING_FILE", "CVSummary", "summarise_folds"]

logger = logging.getLogger(__name__)

CV_SUMMARY_CSV, CV_SUMMARY_JSON = "cv_summary.csv", "cv_summary.json"
EVALUATION_DIR = "cv"
# evaluate's metric names -> the summary's
METRIC_NAMES = {"dice": "dice", "hd95": "hd95", "nsd": "surface_dice"}


@dataclass
class CVSummary:
    """What :func:`summarise_folds` found and wrote.

    Attributes:
        output: the cross-validation's folder.
        folds: how many folds its split has.
        finished, missing: the folds summarised, and those without a finished training and predictions.
        rows: ``{"class", "metric", "mean", "sd", "n"}`` per foreground class and metric.
        largest_component: the class values whose largest component is kept.
        run_id: the parent MLflow run it was sent to (None without one).
    """

    output: Path
    folds: int
    finished: list[int]
    missing: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    largest_component: list[int] = field(default_factory=list)
    run_id: str | None = None


def _read_splits(output: Path) -> list[dict[str, list[str]]]:
    path = output / SPLITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {output} holds no cross-validation")
    try:
        splits = json.loads(path.read_text())
        every = sorted({case for fold in splits for case in fold["val"]})
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{path}: not a split file (a list of {{'train': [...], 'val': [...]}})") from None
    return check_splits(splits, every, path)


def _labels_by_case(config: dict[str, Any]) -> dict[str, str]:
    """Case id -> label file of the dataset the folds trained on."""
    index = discover_dataset(config["data"])
    return {case: item["label"] for case, item in zip(case_ids(index.items), index.items, strict=True)}


def _linked_labels(labels: dict[str, str], cases: list[str], folder: Path) -> list[str]:
    """The cases' label files as ``evaluate`` matches them to ``<case id>`` predictions: linked under the
    case id where the file is named otherwise (a DICOM SEG stays where it is, beside its series)."""
    files = []
    for case in cases:
        label = Path(labels[case])
        if case_name(label) == case or label.suffix.lower() == ".dcm":
            files.append(str(label))
            continue
        link = folder / f"{case}{label.name[len(case_name(label)) :]}"
        link.symlink_to(label.resolve())
        files.append(str(link))
    return files


def summarise_folds(output: str | os.PathLike, *, progress: bool = False) -> CVSummary:
    """Summarise the finished folds of the cross-validation in ``output`` and send it to its parent run.

    Raises:
        FileNotFoundError: ``output`` holds no ``splits.json``, or no fold is finished.
        ValueError: a bad ``splits.json``.
    """
    output = Path(output)
    splits = _read_splits(output)
    finished = [k for k, split in enumerate(splits) if fold_finished(output, k, split)]
    missing = [k for k in range(len(splits)) if k not in finished]
    if not finished:
        report_to_parent(
            output, metrics={}, tags={"cv.finished_folds": "none", "cv.missing_folds": _folds(missing)},
            files=[], folders=[], status="FAILED",
        )  # fmt: skip
        raise FileNotFoundError(
            f"{output}: no fold is finished (fold_K/checkpoints/best.pt and a prediction of each of its "
            f"validation cases in fold_K/{VALIDATION_DIR}/); missing folds: {_folds(missing)}"
        )
    config = json.loads((fold_dir(output, finished[0]) / CONFIG_FILE).read_text())
    classes = {int(k): str(v) for k, v in config["labels"].items()}
    predictions = {c: p for k in finished for c, p in validation_files(output, k, splits[k]).items()}
    cases = sorted(predictions)
    labels = _labels_by_case(config)
    with tempfile.TemporaryDirectory(prefix=".cv-labels-", dir=output) as links:
        label_files = _linked_labels(labels, cases, Path(links))
        scores = evaluate(
            [str(predictions[c]) for c in cases], label_files, output_dir=output / EVALUATION_DIR,
            class_names=classes, overwrite=True, progress=progress,
        )  # fmt: skip
    foreground = sorted(k for k in classes if k > 0)
    choice = choose_largest_component([(predictions[c], labels[c]) for c in cases], foreground)
    with_rule = choice.statistics(with_rule=True)
    rows = []
    for value in foreground:
        name = classes[value]
        for metric, shown in METRIC_NAMES.items():
            rows.append(_row(name, shown, scores["classes"][name][metric]))
        rows.append(_row(name, "dice_largest_component", with_rule[value]))
    summary = CVSummary(output, len(splits), finished, missing, rows, choice.classes)
    _write(summary)
    summary.run_id = _report(summary, finished)
    if missing:
        logger.warning("cross-validation %s: folds %s are missing", output, _folds(missing))
    return summary


def _row(name: str, metric: str, stats: dict[str, Any]) -> dict[str, Any]:
    return {"class": name, "metric": metric, "mean": stats["mean"], "sd": stats["std"], "n": stats["n"]}


def _write(summary: CVSummary) -> None:
    output = summary.output
    with atomic_output(output / CV_SUMMARY_CSV) as tmp, tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["class", "metric", "mean", "sd", "n"])
        writer.writeheader()
        writer.writerows(summary.rows)
    record = {
        "folds": summary.folds,
        "finished_folds": summary.finished,
        "missing_folds": summary.missing,
        "largest_component": summary.largest_component,
        "summary": summary.rows,
    }
    with atomic_output(output / CV_SUMMARY_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    with atomic_output(output / POSTPROCESSING_FILE) as tmp:
        tmp.write_text(json.dumps({"largest_component": summary.largest_component}))


def _report(summary: CVSummary, finished: list[int]) -> str | None:
    """The summary into the parent run: FINISHED once every fold is in it, FAILED while folds are missing
    (the missing ones named in its tags)."""
    metrics = {}
    for row in summary.rows:
        if row["mean"] is not None:
            metrics[f"cv_{row['metric']}_{row['class']}"] = row["mean"]
            metrics[f"cv_{row['metric']}_{row['class']}_sd"] = row["sd"]
    output = summary.output
    return report_to_parent(
        output,
        metrics=metrics,
        tags={"cv.finished_folds": _folds(finished), "cv.missing_folds": _folds(summary.missing)},
        files=[output / name for name in (CV_SUMMARY_CSV, CV_SUMMARY_JSON, POSTPROCESSING_FILE, SPLITS_FILE)],
        folders=[("oof_predictions", fold_dir(output, k) / VALIDATION_DIR) for k in finished],
        status="FAILED" if summary.missing else "FINISHED",
    )


def _folds(folds: list[int]) -> str:
    return ", ".join(map(str, folds)) or "none"
