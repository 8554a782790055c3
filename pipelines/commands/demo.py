"""``attnunet demo``: the embedded demo end to end, its settings printed first."""

from __future__ import annotations

import argparse

from attnunet.pipelines.demo.run import format_settings, run_demo
from attnunet.pipelines.engines.config import TrainConfig

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet demo`` (all optional)."""
    parser.add_argument("--output", default="attnunet-demo", help="demo folder (default: ./%(default)s)")
    parser.add_argument(
        "--data", help="an MSD-layout dataset with imagesTs/labelsTs (default: the embedded demo data)"
    )
    parser.add_argument(
        "--epochs", type=int, help=f"training epochs (default: {TrainConfig.epochs}, as attnunet train)"
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT/mlflow.db)"
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier demo in --output (default: off, refuse)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (default: off, the bars are shown)",
    )


def run(args: argparse.Namespace) -> int:
    """``attnunet demo``: print its planned settings, run it, print the Dice per class and where all is."""
    result = run_demo(
        args.output,
        data=args.data,
        epochs=args.epochs,
        tracking_uri=args.tracking_uri,
        device=args.device,
        overwrite=args.overwrite,
        progress=args.progress,
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
    lines += [
        f"  MLflow run:   {trained.run_id} in {trained.tracking_uri}",
        f"  model:        {trained.model_uri}",
    ]
    if trained.tracking_uri and trained.tracking_uri.startswith("sqlite:///"):
        lines.append(f"  browse with:  mlflow ui --backend-store-uri {trained.tracking_uri}")
    print("\n".join(lines))
    return 0
