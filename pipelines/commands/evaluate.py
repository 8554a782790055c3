"""``attnunet evaluate``: its options, one per key of the bundle's ``configs/evaluate.json``."""

from __future__ import annotations

import argparse

from attnunet.pipelines.bundle.runner import run_config
from attnunet.pipelines.evaluation.reports import format_value

__all__ = ["EVALUATE_KEYS", "add_arguments", "run"]

# The keys of configs/evaluate.json the flags set (dest names = keys).
EVALUATE_KEYS = ("predictions", "labels", "output", "classes", "tolerance_mm", "fov", "overwrite", "progress")


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
        help="surface Dice tolerance in mm: one value, or one per foreground class (default: %(default)s)",
    )
    parser.add_argument(
        "--fov",
        help="folder of field-of-view masks: score inside them only, as DRIVE's mask/ "
        "(default: none, score every voxel)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing result files (default: off, refuse)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (default: shown)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet evaluate``: the bundle's ``configs/evaluate.json`` with the flags as its keys; exit
    status 1 when a prediction is missing or does not match."""
    overrides = {key: value for key, value in vars(args).items() if key in EVALUATE_KEYS}
    summary = run_config("evaluate.json", "evaluation", overrides)
    if summary is None:  # a rank other than 0 under torchrun: rank 0 scores and reports
        return 0
    for class_name, metrics in summary["classes"].items():
        text = ", ".join(
            f"{metric} {format_value(stats['mean'])} +- {format_value(stats['std'])} (n={stats['n']})"
            for metric, stats in metrics.items()
        )
        print(f"{class_name}: {text}")
    print(f"{summary['num_evaluated']}/{summary['num_cases']} cases evaluated; results in {args.output}")
    return 1 if summary["missing"] or summary["mismatched"] else 0
