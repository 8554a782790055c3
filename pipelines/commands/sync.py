"""``attnunet sync OUTPUT``: send what a training run kept on disk to an MLflow store
(:func:`~attnunet.pipelines.tracking.sync.sync_run`)."""

from __future__ import annotations

import argparse

from attnunet.pipelines.tracking.sync import sync_run

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet sync``."""
    add = parser.add_argument
    add("output", help="the --output folder of an 'attnunet train' run")
    add("--tracking-uri", help="MLflow store (default: the run's own, else $MLFLOW_TRACKING_URI)")
    add(
        "--register",
        metavar="NAME",
        help="register the model under NAME when it is sent (default: the run's)",
    )
    add("--alias", help="registry alias, moved only to better models (default: the run's)")
    add("--force-alias", action="store_true", help="move --alias even to a worse model (default: off)")


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet sync`` and say what went where."""
    result = sync_run(
        args.output,
        tracking_uri=args.tracking_uri,
        register=args.register,
        alias=args.alias,
        force_alias=args.force_alias,
    )
    epochs = ", ".join(map(str, result.epochs_sent)) or "none"
    model = f"; model: {result.model_uri}" if result.model_uri else ""
    print(
        f"MLflow run {result.run_id} in {result.tracking_uri} ({result.status}): metrics of epochs "
        f"{epochs} sent{model}"
    )
    return 0
