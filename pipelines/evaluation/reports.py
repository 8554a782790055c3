"""The reports of ``attnunet evaluate``: statistics over the case rows, and the files they are written to.

Not :func:`monai.handlers.utils.write_metrics_reports`: it writes a ``<metric>_raw.csv`` and
``<metric>_summary.csv`` pair per metric (4 decimals, no status, prediction or label column, so missing
and mismatched cases have no row), lets infinite HD95 values into its means and counts, and writes the
files in place; these reports are one table of cases, one summary with its counts, written atomically.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnunet.atomic import atomic_output

__all__ = [
    "METRICS",
    "MISSING_STATUS",
    "REGION_NAME",
    "format_value",
    "statistics",
    "summarise",
    "write_reports",
]

METRICS = ("dice", "hd95", "nsd")
MISSING_STATUS = "missing prediction"  # the status of a case without a prediction
# A region's name: a column suffix (``dice_<name>``) and a bundle config key: no ``#``, ``$``, ``@``, ``%``.
REGION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def statistics(values: list[float]) -> dict[str, float | int | None]:
    """Mean and (population) std over the finite values, and how many there were."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def format_value(value: float | None) -> str:
    """A statistic as the reports print it: 6 significant digits, empty for none."""
    return "" if value is None else f"{value:.6g}"


def summarise(
    rows: Sequence[Mapping[str, Any]],
    foreground: Sequence[str],
    unmatched: list[str],
    regions: Sequence[str] = (),
) -> dict[str, Any]:
    """Case counts, problems, and the statistics per class, per region and over classes, from the case
    rows; the mean over classes leaves the regions out (they overlap the classes)."""
    ok = [row for row in rows if row["status"] == "ok"]

    def per_name(names: Sequence[str]) -> dict[str, dict[str, dict[str, float | int | None]]]:
        return {
            name: {metric: statistics([row[f"{metric}_{name}"] for row in ok]) for metric in METRICS}
            for name in names
        }

    classes = per_name(foreground)
    # The mean over classes of the per-class means (classes without a finite value left out).
    means = {
        metric: statistics([s[metric]["mean"] for s in classes.values() if s[metric]["n"]])
        for metric in METRICS
    }
    return {
        "num_cases": len(rows),
        "num_evaluated": len(ok),
        "missing": [row["case"] for row in rows if row["status"] == MISSING_STATUS],
        "mismatched": {
            row["case"]: row["status"] for row in rows if row["status"] not in ("ok", MISSING_STATUS)
        },
        "unmatched_predictions": unmatched,
        "classes": classes,
        "regions": per_name(regions),
        "mean": {metric: stats["mean"] for metric, stats in means.items()},
        "mean_classes": {metric: stats["n"] for metric, stats in means.items()},
    }


def write_reports(
    targets: Sequence[Path], rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], with_fov: bool
) -> None:
    """Write ``metrics.csv``, ``summary.csv`` and ``summary.json`` (each atomically); regions follow the
    classes, under their own names, in the columns of ``metrics.csv`` and the rows of ``summary.csv``."""
    scored = {**summary["classes"], **summary.get("regions", {})}
    columns = (
        ["case", "status", "prediction", "label"]
        + (["fov"] if with_fov else [])
        + [f"{metric}_{name}" for name in scored for metric in METRICS]
    )
    with atomic_output(targets[0]) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(
            {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()}
            for row in rows
        )
    # n: the cases a class's (or region's) statistics cover; classes: the classes a mean row averaged.
    with atomic_output(targets[1]) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["class", "metric", "mean", "std", "n", "classes"])
        for name, metrics in scored.items():
            for metric, st in metrics.items():
                writer.writerow(
                    [name, metric, format_value(st["mean"]), format_value(st["std"]), st["n"], ""]
                )
        for metric, value in summary["mean"].items():
            writer.writerow(["mean", metric, format_value(value), "", "", summary["mean_classes"][metric]])
    with atomic_output(targets[2]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
