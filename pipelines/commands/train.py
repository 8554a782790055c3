"""``attnunet train``: one option per :class:`~attnunet.pipelines.engines.config.TrainConfig` field,
``--plan``, and the run that prints where the model went. The options are declared once, on
``TrainConfig`` (:func:`~attnunet.pipelines.engines.config.train_options`); the run's heavy imports (MONAI's
bundle parser, ignite, MLflow) happen in :func:`run`, so ``attnunet train --help`` does not load them."""

from __future__ import annotations

import argparse
import os
from typing import Any

from attnunet.pipelines.engines.config import train_options
from attnunet.pipelines.options import add_options, config_overrides

__all__ = ["OPTIONS", "TRAIN_KEYS", "add_arguments", "run", "train_overrides"]

OPTIONS = tuple(train_options())  # every command module's declaration, under one name
# The configs/train.json keys the flags set (dest names = keys).
TRAIN_KEYS = tuple(opt.key for opt in OPTIONS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet train``: each sets the :class:`TrainConfig` field of the same name (dashes
    for underscores; ``--network-option``/``--preset-option`` set ``network_kwargs``/``preset_kwargs``),
    which is also the bundle's ``configs/train.json`` key."""
    add_options(parser, OPTIONS)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``configs/train.json`` keys the parsed flags set: each option's key, ``--network-option`` and
    ``--preset-option`` parsed into ``network_kwargs`` and ``preset_kwargs``."""
    overrides = config_overrides(OPTIONS, args)
    overrides["model_path"] = None  # a bundle's models/model.pt; the command's model is OUTPUT/checkpoints
    return overrides


def run(args: argparse.Namespace) -> int:
    """``attnunet train``: the bundle's ``configs/train.json`` with the flags as its keys; then where the
    checkpoints and the model are."""
    from attnunet.pipelines.bundle.runner import run_config

    result = run_config("train.json", "training", train_overrides(args))
    if args.folds is not None or args.fold is not None:  # a cross-validation (engines.cv.CVResult)
        from attnunet.pipelines.commands.cv import report_cv

        return report_cv(result)
    if result.run_id is not None or int(os.environ.get("RANK", "0")) == 0:
        print(
            f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}; "
            f"checkpoints in {result.best_checkpoint.parent}"
        )
        if result.run_id:
            model = result.model_uri or f"not sent (see the warning above; 'attnunet sync {args.output}')"
            print(f"MLflow run {result.run_id} in {result.tracking_uri}; model: {model}")
    return 0
