"""``attnunet sync OUTPUT``: send what a training run kept on disk to an MLflow store
(:func:`~attnunet.pipelines.engines.sync.sync_run`)."""

from __future__ import annotations

import argparse

from attnunet.pipelines.options import Option, add_options, config_overrides

__all__ = ["OPTIONS", "add_arguments", "run"]

# One per argument of sync_run, same names.
OPTIONS: tuple[Option, ...] = (
    Option("output", "the --output folder of an 'attnunet train' run", flag=None, required=True),
    Option("tracking_uri", "MLflow store (default: the run's own, else $MLFLOW_TRACKING_URI)"),
    Option("register", "register the model under NAME when it is sent (default: the run's)", metavar="NAME"),
    Option("alias", "registry alias, moved only to better models (default: the run's)"),
    Option("force_alias", "move --alias even to a worse model (default: off)", False, action="store_true"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet sync``."""
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet sync`` and say what went where."""
    from attnunet.pipelines.engines.sync import sync_run  # MLflow: loaded only to run

    options = config_overrides(OPTIONS, args)
    result = sync_run(options.pop("output"), **options)
    epochs = ", ".join(map(str, result.epochs_sent)) or "none"
    model = f"; model: {result.model_uri}" if result.model_uri else ""
    print(
        f"MLflow run {result.run_id} in {result.tracking_uri} ({result.status}): metrics of epochs "
        f"{epochs} sent{model}"
    )
    return 0
