"""``attnunet evaluate``: its options, one per key of the bundle's ``configs/evaluate.json``, declared once
in :data:`EVALUATE_OPTIONS`; the scoring (numpy, MONAI) is imported by :func:`run` only."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from attnunet.pipelines.options import Option, add_options, config_overrides

__all__ = ["EVALUATE_KEYS", "EVALUATE_OPTIONS", "OPTIONS", "add_arguments", "parse_regions", "run"]


def parse_regions(texts: Sequence[str] | None) -> dict[str, list[int]]:
    """Parse repeated ``--region NAME=V,V,...`` options into the ``regions`` key: name -> label values.

    Raises:
        ValueError: one line naming the option and what is wrong: no ``=``, a name that is not letters,
            digits, ``_`` and ``-``, no values, a value that is not a non-negative integer, a name twice.

    Example:
        >>> parse_regions(["scar=5", "scar_edema=4,5"])
        {'scar': [5], 'scar_edema': [4, 5]}
    """
    from attnunet.pipelines.evaluation.reports import REGION_NAME

    parsed: dict[str, list[int]] = {}
    for text in texts or []:
        name, sep, values = text.partition("=")
        name = name.strip()
        where = f"--region {text!r}"
        if not sep:
            raise ValueError(f"{where}: expected NAME=V,V,... (label values joined by commas, e.g. scar=5)")
        if not REGION_NAME.fullmatch(name):
            raise ValueError(
                f"{where}: a name is letters, digits, '_' and '-', starting with a letter or '_'"
            )
        if not values.strip():
            raise ValueError(f"{where}: no label values after '=' (e.g. {name}=4,5)")
        items = [item.strip() for item in values.split(",")]
        bad = [item for item in items if not re.fullmatch(r"\d+", item)]
        if bad:
            raise ValueError(f"{where}: label values must be non-negative integers, got {bad[0]!r}")
        if name in parsed:
            raise ValueError(f"{where}: region {name!r} is given twice")
        parsed[name] = [int(item) for item in items]
    return parsed


EVALUATE_OPTIONS: tuple[Option, ...] = (
    Option("predictions", "folder of predicted label maps (<case>.nii.gz)", required=True),
    Option("labels", "folder of reference label maps (<case>.nii.gz)", required=True),
    Option("output", "folder for metrics.csv and summary.csv/json", required=True),
    Option(
        "classes",
        "class names in index order, background first (default: class_K for each label value)",
        nargs="+",
        metavar="NAME",
        bundle=["background", "organ", "lesion"],  # the template bundle scores the demo's classes
    ),
    Option(
        "regions",
        "also score the union of these label values as one class named NAME, e.g. BraTS "
        "--region whole_tumour=1,2,3,4 --region tumour_core=1,3,4 --region enhancing=4; repeat for more; "
        "a region absent from both prediction and label of a case scores NaN there, like a class "
        "(default: none)",
        {},
        flag="--region",
        action="append",
        metavar="NAME=V,V,...",
        cli_default=[],
        parse=parse_regions,  # names and integers only: nothing the config parser runs
        item="NAME",
    ),
    Option(
        "tolerance_mm",
        "surface Dice tolerance in mm: one value, or one per foreground class then one per region "
        "(default: %(default)s)",
        [2.0],
        type=float,
        nargs="+",
    ),
    Option(
        "fov",
        "folder of field-of-view masks: score inside them only, as DRIVE's mask/ "
        "(default: none, score every voxel)",
    ),
    Option(
        "images",
        "folder of the images the labels were drawn on (<case>.nii.gz, <case>_0000.nii.gz, DICOM series "
        "folders): also write OUTPUT/report.html, each case's scores and a viewer of its image, reference "
        "and prediction; open it with attnunet view OUTPUT (default: none, no report)",
    ),
    Option("overwrite", "replace existing result files (default: off, refuse)", False, action="store_true"),
    Option("progress", "no progress bar (default: shown)", True, flag="--no-progress", action="store_false"),
)
OPTIONS = EVALUATE_OPTIONS  # every command module's declaration, under one name
# The keys of configs/evaluate.json the flags set (dest names = keys; --region sets regions#NAME).
EVALUATE_KEYS = tuple(opt.key for opt in EVALUATE_OPTIONS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet evaluate``."""
    add_options(parser, EVALUATE_OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet evaluate``: the bundle's ``configs/evaluate.json`` with the flags as its keys; exit
    status 1 when a prediction is missing or does not match."""
    from attnunet.pipelines.bundle.runner import run_config
    from attnunet.pipelines.evaluation.reports import format_value

    summary = run_config("evaluate.json", "evaluation", config_overrides(EVALUATE_OPTIONS, args))
    if summary is None:  # a rank other than 0 under torchrun: rank 0 scores and reports
        return 0
    for class_name, metrics in {**summary["classes"], **summary["regions"]}.items():
        text = ", ".join(
            f"{metric} {format_value(stats['mean'])} +- {format_value(stats['std'])} (n={stats['n']})"
            for metric, stats in metrics.items()
        )
        print(f"{class_name}: {text}")
    print(f"{summary['num_evaluated']}/{summary['num_cases']} cases evaluated; results in {args.output}")
    if "report" in summary["files"]:
        print(f"report: {summary['files']['report']}; open it with: attnunet view {args.output}")
    return 1 if summary["missing"] or summary["mismatched"] else 0
