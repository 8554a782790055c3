"""``attnunet train``: one option per :class:`~attnunet.pipelines.engines.config.TrainConfig` field,
``--plan``, and the run that prints where the model went."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from attnunet.cli import key_values
from attnunet.networks import list_networks
from attnunet.pipelines.bundle.runner import run_config
from attnunet.pipelines.engines.config import CACHE_MODES, LOSSES, PRESETS, SCHEDULERS, TrainConfig

__all__ = ["TRAIN_KEYS", "add_arguments", "run", "train_overrides"]

# The configs/train.json keys set by a flag of the same name (dest): every TrainConfig field but the
# two KEY=VALUE dicts, and --plan.
TRAIN_KEYS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("network_kwargs", "preset_kwargs")
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet train``: each sets the :class:`TrainConfig` field of the same name (dashes
    for underscores), which is also the bundle's ``configs/train.json`` key."""
    d = TrainConfig(data="", output="")
    planned = "(default: from the plan; with --plan none: %s)"
    add = parser.add_argument
    add("--data", required=True, help="dataset: MSD folder with dataset.json, image/label folders or a CSV")
    add("--output", required=True, help="new folder for checkpoints, config.json, plan.json and overlays")
    add(
        "--plan",
        default="auto",
        help="plan.json to take the unset options from; 'auto': plan DATA now (with --resume: "
        "OUTPUT/plan.json); 'none': the built-in defaults (default: %(default)s)",
    )
    add("--time-budget", type=float, metavar="MINUTES", help="size the epochs so the run ends within it")
    add("--preset", choices=PRESETS, help="transform preset " + planned % d.preset)
    add("--network", default=d.network, choices=list_networks(), metavar="NAME",
        help="network preset, one of: %(choices)s (default: %(default)s)")  # fmt: skip
    add("--network-option", action="append", metavar="KEY=VALUE", default=[],
        help="network argument; VALUE is JSON when it parses (init_features=16, attention_levels=[2,3]), "
        "else a word (norm=instance); repeat for more (default: the plan's widths)")  # fmt: skip
    add("--preset-option", action="append", metavar="KEY=VALUE", default=[],
        help="preset argument, same syntax, e.g. a_min=-200 (default: the plan's CT window)")  # fmt: skip
    add(
        "--out-channels",
        type=int,
        help="1 for one binary (sigmoid, BCE) output (default: one per class, or one per region)",
    )
    add(
        "--loss",
        default=d.loss,
        choices=LOSSES,
        help="loss (default: %(default)s: DiceCE, or BCE for 1 output, or Dice + BCE for regions)",
    )
    add("--epochs", type=int, default=d.epochs, help="total epochs (default: %(default)s)")
    add("--val-every", type=int, default=d.val_every, help="validate every N epochs (default: %(default)s)")
    add("--roi-size", type=int, nargs="+", help="patch size, 2 or 3 ints " + planned % list(d.roi_size))
    add(
        "--pixdim",
        type=float,
        nargs="+",
        help="target spacing in mm (default: the plan's; else each image's)",
    )
    add("--batch-size", type=int, help="images per batch " + planned % d.batch_size)
    add("--num-samples", type=int, help="patches per image " + planned % d.num_samples)
    add("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    add("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay (default: %(default)s)")
    add(
        "--scheduler",
        default=d.scheduler,
        choices=SCHEDULERS,
        help="learning-rate schedule (default: %(default)s)",
    )
    add("--val-fraction", type=float, default=d.val_fraction, help="share held out (default: %(default)s)")
    add(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of split, weights and augmentation (default: %(default)s)",
    )
    add("--resume", action="store_true", help="continue OUTPUT/checkpoints/last.pt (default: off)")
    add("--no-track", dest="track", action="store_false", help="do not log to MLflow (default: log)")
    add("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    add("--experiment", default=d.experiment, help="MLflow experiment (default: %(default)s)")
    add("--artifact-location", help="artifact root of a new experiment (default: mlartifacts/ by sqlite)")
    add("--run-name", help="MLflow run name (default: EXPERIMENT-DATE-TIME-XXXX, one per run)")
    add("--register", metavar="NAME", help="register the best model under NAME (default: not registered)")
    add("--alias", default=d.alias, help="registry alias, moved only to better models (default: %(default)s)")
    add("--force-alias", action="store_true", help="move --alias even to a worse model (default: off)")
    add("--cache", default=d.cache, choices=CACHE_MODES, help="dataset cache (default: %(default)s)")
    add("--cache-dir", help="disk cache folder (default: OUTPUT/cache)")
    add("--memory-budget-gb", type=float, help="memory the auto cache may use (default: half the free RAM)")
    add("--num-workers", type=int, default=d.num_workers, help="data-loader workers (default: %(default)s)")
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=d.amp,
        help="mixed precision on CUDA (default: on)",
    )
    add("--sw-batch-size", type=int, help="windows per forward pass " + planned % d.sw_batch_size)
    add("--overlap", type=float, help="sliding-window overlap " + planned % d.overlap)
    add("--no-progress", dest="progress", action="store_false", help="no progress bar (default: shown)")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``configs/train.json`` keys the parsed flags set: each flag's own name, ``--network-option``
    and ``--preset-option`` as ``network_kwargs`` and ``preset_kwargs``."""
    overrides = {k: v for k, v in vars(args).items() if k in TRAIN_KEYS}
    overrides["network_kwargs"] = key_values(args.network_option, "--network-option")
    overrides["preset_kwargs"] = key_values(args.preset_option, "--preset-option")
    overrides["model_path"] = None  # a bundle's models/model.pt; the command's model is OUTPUT/checkpoints
    return overrides


def run(args: argparse.Namespace) -> int:
    """``attnunet train``: the bundle's ``configs/train.json`` with the flags as its keys; then where the
    checkpoints and the model are."""
    result = run_config("train.json", "training", train_overrides(args))
    if result.run_id is not None or int(os.environ.get("RANK", "0")) == 0:
        print(
            f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}; "
            f"checkpoints in {result.best_checkpoint.parent}"
        )
        if result.run_id:
            model = result.model_uri or f"not sent (see the warning above; 'attnunet sync {args.output}')"
            print(f"MLflow run {result.run_id} in {result.tracking_uri}; model: {model}")
    return 0
