"""``attnunet demo``: the embedded demo end to end, its settings printed first."""

from __future__ import annotations

import argparse

from attnunet.pipelines.engines.config import TrainConfig
from attnunet.pipelines.options import Option, add_options, config_overrides

__all__ = ["OPTIONS", "add_arguments", "run"]

# One per argument of run_demo, same names (all optional).
OPTIONS: tuple[Option, ...] = (
    Option("output", "demo folder (default: ./%(default)s)", "attnunet-demo"),
    Option("data", "an MSD-layout dataset with imagesTs/labelsTs (default: the embedded demo data)"),
    Option("epochs", f"training epochs (default: {TrainConfig.epochs}, as attnunet train)", type=int),
    Option("tracking_uri", "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT/mlflow.db)"),
    Option("device", "cpu, cuda or cuda:N (default: cuda when available)"),
    Option(
        "overwrite",
        "replace the files of an earlier demo in --output (default: off, refuse)",
        False,
        action="store_true",
    ),
    Option(
        "progress",
        "no progress bars (default: off, the bars are shown)",
        True,
        flag="--no-progress",
        action="store_false",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet demo`` (all optional)."""
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    """``attnunet demo``: print its planned settings, run it, print the Dice per class and where all is."""
    from attnunet.pipelines.demo.run import format_settings, run_demo  # training: loaded only to run

    options = config_overrides(OPTIONS, args)
    result = run_demo(
        options.pop("output"),
        **options,
        announce=lambda config: print(format_settings(config), flush=True),
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
    if result.report is not None:
        lines.append(f"  report:       {result.report}  (open it with: attnunet view {result.report.parent})")
    lines += [
        f"  MLflow run:   {trained.run_id} in {trained.tracking_uri}",
        f"  model:        {trained.model_uri}",
    ]
    if trained.tracking_uri and trained.tracking_uri.startswith("sqlite:///"):
        lines.append(f"  browse with:  mlflow ui --backend-store-uri {trained.tracking_uri}")
    print("\n".join(lines))
    return 0
