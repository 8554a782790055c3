"""``attnunet cv OUTPUT``: summarise the finished folds of a cross-validation (``attnunet train --folds N``
or ``--fold K`` into ``OUTPUT``) and name the missing ones; exit status 1 while folds are missing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from attnunet.pipelines.options import Option, add_options

if TYPE_CHECKING:
    from attnunet.pipelines.engines.cv import CVResult
    from attnunet.pipelines.engines.cv_summary import CVSummary

__all__ = ["OPTIONS", "add_arguments", "report_cv", "run"]

OPTIONS = (
    Option("output", "the cross-validation's folder (attnunet train --folds N --output OUTPUT)", flag=None),
    Option("progress", "no progress bar (default: shown)", True, flag="--no-progress", action="store_false"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, OPTIONS)


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: CVSummary) -> None:
    """The table, the folds and where the files are."""
    folds = ", ".join(map(str, summary.finished))
    print(f"cross-validation {summary.output}: folds {folds} of {summary.folds} summarised")
    width = max(len(str(row["class"])) for row in summary.rows)
    print(f"{'class':<{width}}  {'metric':<22}  {'mean':>8}  {'sd':>8}  {'n':>4}")
    for row in summary.rows:
        mean, sd = _shown(row["mean"]), _shown(row["sd"])
        print(f"{row['class']:<{width}}  {row['metric']:<22}  {mean:>8}  {sd:>8}  {row['n']:>4}")
    kept = ", ".join(map(str, summary.largest_component)) or "none"
    print(f"largest component kept for classes: {kept} ({summary.output / 'postprocessing.json'})")
    print(f"summary: {summary.output / 'cv_summary.csv'}")
    if summary.run_id:
        print(f"MLflow run {summary.run_id}")
    if summary.missing:
        missing = ", ".join(map(str, summary.missing))
        print(f"missing folds: {missing} (train each with 'attnunet train ... --fold K', then 'attnunet cv')")


def report_cv(result: CVResult) -> int:
    """What ``attnunet train --folds/--fold`` prints: the folds trained, failed and kept, and the summary;
    exit status 1 when a fold failed or is missing."""
    for k, trained in sorted(result.trained.items()):
        best = f"best mean Dice {trained.best_metric:.4f} at epoch {trained.best_epoch}"
        print(f"fold {k}: {best}; {trained.output}")
    for k in result.skipped:
        print(f"fold {k}: already finished, kept")
    for k in result.predicted:
        print(f"fold {k}: trained before, its validation cases segmented now")
    for k, error in sorted(result.failed.items()):
        print(f"fold {k}: failed: {error}")
    if result.summary is not None:
        print_summary(result.summary)
        return 1 if result.failed or result.summary.missing else 0
    return 1 if result.failed else 0


def run(args: argparse.Namespace) -> int:
    from attnunet.pipelines.engines.cv_summary import summarise_folds

    summary = summarise_folds(args.output, progress=args.progress)
    print_summary(summary)
    return 1 if summary.missing else 0
