"""A training run's options (:class:`TrainConfig`, one field per ``attnunet train`` flag and bundle
key, declared once with its help: :func:`train_options`) and what the run gives back (:class:`TrainResult`).

This module is the declaration ``attnunet train --help`` is built from, so it imports nothing heavy at
module level: MONAI, torch and the planner are imported by the functions that use them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnunet.defaults import OVERLAP, SW_BATCH_SIZE
from attnunet.pipelines.flags import flag
from attnunet.pipelines.options import Option, field_options, key_value_declaration, option
from attnunet.pipelines.planning.fields import TRAIN_FIELDS

if TYPE_CHECKING:
    from attnunet.regions import Regions

__all__ = [
    "CACHE_MODES",
    "LOSSES",
    "NETWORKS",
    "PLAN_OPTION",
    "PRESET_NAMES",
    "SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "config_from_plan",
    "planned_config",
    "resolve_config",
    "train_options",
]

# The names the flags accept, spelled out so that --help needs no MONAI; tests/test_option_declarations.py
# checks them against the registries they mirror (transforms.presets.PRESETS, datasets.CACHE_MODES,
# attnunet.networks.list_networks()).
PRESET_NAMES = ("ct", "mr", "image2d")
CACHE_MODES = ("auto", "memory", "disk", "none")
NETWORKS = (
    "attention_unet",
    "attention_unet_2d",
    "attention_unet_3d",
    "attention_unet_3d_small",
    "monai_attention_unet",
    "monai_unet",
    "nnunet_plain_conv_unet",
)
SCHEDULERS = ("cosine", "constant")
# Loss names (see attnunet.pipelines.engines.components.create_loss); "auto" is DiceCE for softmax
# outputs and BCE for one binary output.
LOSSES = ("auto", "dice_ce", "dice_focal", "dice", "bce")


@dataclass
class TrainConfig:
    """Every option of a training run, with its default.

    Args:
        data: dataset to train on: an MSD folder with ``dataset.json``, an image/label folder pair,
            a CSV, or a 2D image+mask folder (see :func:`attnunet.pipelines.data.datasets.discover_dataset`).
        output: folder for checkpoints, the resolved config and overlays; must not already hold a
            run unless ``resume``.
        preset: transform preset: ``"ct"``, ``"mr"`` or ``"image2d"``.
        network: name in :func:`attnunet.networks.list_networks`.
        network_kwargs: extra keyword arguments for the network (``init_features``, ``attention``...).
        preset_kwargs: extra keyword arguments for the transform preset (CT ``a_min``/``a_max``...).
        out_channels: network outputs; None means one per class (softmax, ``DiceCELoss``), or one per
            region (sigmoid, Dice + BCE) for a dataset whose ``dataset.json`` declares regions (nnU-Net's
            region-based training). ``1`` with two classes trains a single binary output
            with ``BCEWithLogitsLoss``.
        epochs: number of epochs (total, counting resumed ones).
        val_every: validate every N epochs (and after the last one).
        roi_size: training patch and sliding-window size; its length sets 2D or 3D. An axis larger than
            the largest training image (resampled, padded to the network's multiple) is clamped to that
            size, with a warning (:mod:`attnunet.pipelines.engines.checks`).
        pixdim: target voxel spacing in mm, or None to keep each image's own.
        batch_size: images per batch (each gives ``num_samples`` patches).
        num_samples: random patches per image and iteration.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        scheduler: ``"cosine"`` (annealed to 0 over ``epochs``) or ``"constant"``.
        loss: name in :data:`LOSSES`; ``"auto"``: ``DiceCELoss`` for one output per class, the
            document's ``BCEWithLogitsLoss`` for one binary output, batch Dice + BCE for regions (every
            name is then taken on each region's sigmoid).
        val_fraction: share of the cases held out for validation.
        seed: seed of the split, the weights and the random transforms; two CPU runs with the same
            seed give the same losses.
        resume: continue from ``output/checkpoints/last.pt``.
        track: log to MLflow (rank 0 only). Each call to the store is bounded (about 35 s at most, see
            :mod:`attnunet.pipelines.tracking.store`); a store that fails mid-run gets one warning, the run
            goes on and sends what it logged meanwhile when the store is back (every epoch's record is
            kept in ``output/metrics.jsonl`` as always, for ``attnunet sync``).
        tracking_uri: MLflow store; None means ``MLFLOW_TRACKING_URI`` or MLflow's default.
        experiment: MLflow experiment name.
        artifact_location: artifact root for the experiment if this run creates it (a folder or URI).
        run_name: MLflow run name; None: ``EXPERIMENT-DATE-TIME-XXXX``, one per run.
        register: register the best model under this name in the MLflow model registry.
        alias: alias given to the registered version when its best ``val_mean_dice`` beats the version
            holding the alias (or none holds it).
        force_alias: move ``alias`` to the new version even when it does not beat the one holding it.
        cache: ``"auto"`` (memory if it fits ``cache_memory_gb``, else a persistent disk cache),
            ``"memory"``, ``"disk"`` or ``"none"``.
        cache_dir: folder of the disk cache; None means ``output/cache``.
        cache_memory_gb: RAM the ``"auto"`` cache may fill; None lets the dataset helper decide (not the
            memory of a training step: that is the plan's ``step_memory_gb``).
        num_workers: data-loader worker processes.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None picks CUDA when available.
        amp: mixed precision (used on CUDA only).
        sw_batch_size: windows per forward pass in sliding-window validation.
        overlap: sliding-window overlap in validation.
        progress: show a progress bar per epoch.
        applied_plan: the plan (:func:`~attnunet.pipelines.planning.plan.plan_dataset`) these options
            came from; it is saved as ``output/plan.json`` and logged to MLflow. :func:`config_from_plan`
            builds a config from one. Not an option: the ``plan`` option names where it comes from.
        folds: train a cross-validation of this many folds, each into ``output/fold_K``
            (:func:`attnunet.pipelines.engines.cv.cross_validate`), the fold's ``val`` cases its validation
            set; None: one split by ``val_fraction``.
        fold: train only this fold of the cross-validation (0-based).
        splits: a split file in nnU-Net's ``splits_final.json`` format to take the folds from.
        time_budget: minutes the whole run (training and validation) may take; after every epoch the
            number of epochs is set to what fits at the last epoch's speed (``epochs`` is then only an
            upper bound's starting value), with the cosine schedule annealed to 0 at the last one;
            an epoch is then at least 50 steps (whole passes over the training cases). None trains
            ``epochs`` epochs of one pass each. With ``folds``, it covers all the folds together.

    Example:
        >>> config = TrainConfig(data="data/demo", output="runs/demo", roi_size=(64, 64, 32), epochs=2)
        >>> config.lr
        0.001
    """

    # Each field is also an `attnunet train` flag and a configs/train.json key (train_options); a field the
    # plan fills (TRAIN_FIELDS) shows its default here as the one taken with `--plan none`.
    data: str = option(
        required=True, help="dataset: MSD folder with dataset.json, image/label folders or a CSV"
    )
    output: str = option(
        required=True, help="new folder for checkpoints, config.json, plan.json and overlays"
    )
    preset: str = option("ct", "transform preset", choices=PRESET_NAMES)
    network: str = option(
        "attention_unet_3d_small",
        "network preset, one of: %(choices)s (default: %(default)s)",
        choices=NETWORKS,
        metavar="NAME",
    )
    network_kwargs: dict[str, Any] = option(
        {},
        "network argument; VALUE is JSON when it parses (init_features=16, attention_levels=[2,3]), "
        "else a word (norm=instance); repeat for more (default: the plan's widths)",
        **key_value_declaration("--network-option"),
        item="KEY",
    )
    preset_kwargs: dict[str, Any] = option(
        {},
        "preset argument, same syntax, e.g. a_min=-200 (default: the plan's CT window)",
        **key_value_declaration("--preset-option"),
        item="KEY",
    )
    out_channels: int | None = option(
        None, "1 for one binary (sigmoid, BCE) output (default: one per class, or one per region)", type=int
    )
    epochs: int = option(50, "total epochs (default: %(default)s)", type=int)
    val_every: int = option(1, "validate every N epochs (default: %(default)s)", type=int)
    roi_size: tuple[int, ...] = option((96, 96, 96), "patch size, 2 or 3 ints", type=int, nargs="+")
    pixdim: tuple[float, ...] | None = option(
        None, "target spacing in mm (default: the plan's; else each image's)", type=float, nargs="+"
    )
    batch_size: int = option(2, "images per batch", type=int)
    num_samples: int = option(2, "patches per image", type=int)
    lr: float = option(1e-3, "Adam learning rate (default: %(default)s)", type=float)
    weight_decay: float = option(0.0, "Adam weight decay (default: %(default)s)", type=float)
    scheduler: str = option("cosine", "learning-rate schedule (default: %(default)s)", choices=SCHEDULERS)
    loss: str = option(
        "auto",
        "loss (default: %(default)s: DiceCE, or BCE for 1 output, or Dice + BCE for regions)",
        choices=LOSSES,
    )
    val_fraction: float = option(0.2, "share held out (default: %(default)s)", type=float)
    seed: int = option(0, "seed of split, weights and augmentation (default: %(default)s)", type=int)
    resume: bool = option(False, "continue OUTPUT/checkpoints/last.pt (default: off)", action="store_true")
    track: bool = option(True, "do not log to MLflow (default: log)", flag="--no-track", action="store_false")
    tracking_uri: str | None = option(
        None, "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)"
    )
    experiment: str = option("attnunet", "MLflow experiment (default: %(default)s)")
    artifact_location: str | None = option(
        None, "artifact root of a new experiment (default: mlartifacts/ by sqlite)"
    )
    run_name: str | None = option(None, "MLflow run name (default: EXPERIMENT-DATE-TIME-XXXX, one per run)")
    register: str | None = option(
        None, "register the best model under NAME (default: not registered)", metavar="NAME"
    )
    alias: str = option(
        "champion",
        "alias of the registered version when its best val_mean_dice beats the version holding it "
        "(default: %(default)s)",
    )
    force_alias: bool = option(
        False,
        "move --alias to the new version even when it does not beat the version holding it (default: off)",
        action="store_true",
    )
    cache: str = option("auto", "dataset cache (default: %(default)s)", choices=CACHE_MODES)
    cache_dir: str | None = option(None, "disk cache folder (default: OUTPUT/cache)")
    cache_memory_gb: float | None = option(
        None, "RAM the auto cache may fill, in GiB (default: half the free RAM)", type=float
    )
    num_workers: int = option(0, "data-loader workers (default: %(default)s)", type=int)
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when available)")
    amp: bool = option(True, "mixed precision on CUDA (default: on)", action=argparse.BooleanOptionalAction)
    sw_batch_size: int = option(SW_BATCH_SIZE, "windows per forward pass", type=int)
    overlap: float = option(OVERLAP, "sliding-window overlap", type=float)
    progress: bool = option(
        True, "no progress bar (default: shown)", flag="--no-progress", action="store_false"
    )
    time_budget: float | None = option(
        None,
        "size the epochs so the run ends within it (default: none, --epochs epochs)",
        type=float,
        metavar="MINUTES",
    )
    folds: int | None = option(
        None,
        "cross-validation: train each of N folds in turn into OUTPUT/fold_K, then summarise them as "
        "'attnunet cv OUTPUT' does; --time-budget covers all folds (default: one split by --val-fraction)",
        type=int,
        metavar="N",
    )
    fold: int | None = option(
        None,
        "train only fold K of the cross-validation, into OUTPUT/fold_K (the folds of --splits, else of "
        "OUTPUT/splits.json, else nnU-Net's 5) (default: every fold with --folds)",
        type=int,
        metavar="K",
    )
    splits: str | None = option(
        None,
        "nnU-Net splits_final.json to take the folds from, copied to OUTPUT/splits.json (default: "
        "OUTPUT/splits.json, else nnU-Net's split of the sorted cases)",
        metavar="FILE",
    )
    # Not an option: what planned_config read or made from the `plan` option (a source: auto, none, a path).
    applied_plan: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from monai.utils import look_up_option  # MONAI's "did you mean" message; heavy, so imported here

        from attnunet.transforms.presets import PRESETS

        for name in ("resume", "track", "force_alias", "amp", "progress"):
            setattr(self, name, flag(name, getattr(self, name)))
        self.preset = look_up_option(self.preset, tuple(PRESETS))
        self.cache = look_up_option(self.cache, CACHE_MODES)
        self.scheduler = look_up_option(self.scheduler, SCHEDULERS)
        self.loss = look_up_option(self.loss, LOSSES)
        self.roi_size = tuple(int(s) for s in self.roi_size)
        self.pixdim = None if self.pixdim is None else tuple(float(p) for p in self.pixdim)
        for name in ("epochs", "val_every", "batch_size", "num_samples", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.roi_size) not in (2, 3) or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be 2 or 3 positive sizes, got {self.roi_size}")
        if self.pixdim is not None and (len(self.pixdim) != len(self.roi_size) or min(self.pixdim) <= 0):
            raise ValueError(
                f"pixdim must be {len(self.roi_size)} positive spacings (one per roi_size axis), "
                f"got {self.pixdim}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be > 0 minutes, got {self.time_budget}")
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.fold is not None and not 0 <= self.fold < (self.folds or self.fold + 1):
            raise ValueError(f"fold must be >= 0 and below folds ({self.folds}), got {self.fold}")
        if self.time_budget is not None and self.resume:
            raise ValueError("time_budget cannot be combined with resume: the budget sizes a whole run")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        output: the run's output folder.
        best_checkpoint: ``output/checkpoints/best.pt`` (the best validation Dice).
        last_checkpoint: ``output/checkpoints/last.pt`` (the last epoch, for ``--resume``).
        best_metric: best mean validation Dice (foreground classes).
        best_epoch: the epoch it was reached at.
        epochs: the last completed epoch.
        history: one dict per epoch run by this call (``epoch``, ``train_loss``, ``lr``, and the
            validation metrics on validation epochs).
        config: the resolved config (the checkpoint's ``config``).
        run_id: the MLflow run id (None without tracking or on ranks other than 0).
        tracking_uri: the MLflow store used.
        model_uri: where the logged model loads from (``models:/NAME@ALIAS`` when registered and given the
            alias, ``models:/NAME/VERSION`` when the alias stayed on a better version); None when the
            tracking store failed before the model was logged.
    """

    output: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metric: float
    best_epoch: int
    epochs: int
    history: list[dict[str, float]]
    config: dict[str, Any]
    run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None


def resolve_config(
    config: TrainConfig,
    labels: dict[str, str],
    in_channels: int,
    out_channels: int,
    regions: Regions | None = None,
) -> dict:
    """The run's config as saved beside the model and in MLflow: ``config`` with the data it met
    (classes, channels, the regions its ``dataset.json`` declares) filled in, in plain JSON types; a region
    dataset has one output per region."""
    if regions is not None:
        if config.out_channels is not None:
            raise ValueError(
                f"out_channels={config.out_channels}: {config.data} declares regions "
                f"({', '.join(regions.names)}), one sigmoid output each; leave out_channels unset"
            )
        out_channels = len(regions.names)
    resolved = dataclasses.asdict(config)
    resolved.update(
        data=str(Path(config.data).resolve()),
        output=str(Path(config.output).resolve()),
        roi_size=list(config.roi_size),
        pixdim=None if config.pixdim is None else list(config.pixdim),
        labels=dict(labels),
        spatial_dims=len(config.roi_size),
        in_channels=in_channels,
        out_channels=out_channels,
        regions=None if regions is None else regions.to_dict(),
    )
    return json.loads(json.dumps(resolved))  # plain JSON types only (tuples become lists)


def config_from_plan(plan: dict[str, Any], **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` whose options not given in ``options`` come from ``plan``.

    ``network_kwargs`` and ``preset_kwargs`` are merged key by key (``options`` win); the plan's
    preset options are dropped when ``options`` choose another preset, and its ``attention_levels``
    when they choose ``attention="none"``.

    Example:
        >>> config = config_from_plan(load_plan("plan.json"), data="Task04", output="run")  # doctest: +SKIP
    """
    network = options.get("network", TrainConfig.network)
    from attnunet.networks import network_arguments
    from attnunet.pipelines.planning.plan import plan_options

    planned = plan_options(plan, network_arguments(network))
    return TrainConfig(applied_plan=dict(plan), **planned.under(options))


def planned_config(plan: str | os.PathLike | None = "auto", **options: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a run: ``options`` as given, the planned fields left None from a plan.

    This is what ``attnunet train`` and the bundle's ``configs/train.json`` both build (its keys and the
    command's flags are these arguments, same names).

    Args:
        plan: ``"auto"``: plan ``data`` now (:func:`~attnunet.pipelines.planning.plan.plan_dataset`; on
            ``resume``, the run's own ``plan.json``); a ``plan.json`` path; or ``"none"``/None for the
            built-in defaults.
        options: :class:`TrainConfig` fields. None for a field a plan sets (``roi_size``, ``batch_size``,
            ...) means "from the plan" (the default without one); ``network_kwargs`` and
            ``preset_kwargs`` are merged key by key over the plan's.

    Example:
        >>> planned_config("none", data="Task04", output="run", roi_size=None).roi_size
        (96, 96, 96)
    """
    from attnunet.pipelines.planning.plan import load_plan, plan_dataset

    options = {k: v for k, v in options.items() if not (k in TRAIN_FIELDS and v is None)}
    if plan in (None, "none"):
        return TrainConfig(**options)
    saved = Path(options.get("output", "")) / "plan.json"
    if plan != "auto":
        found = load_plan(plan)
    elif options.get("resume") and saved.is_file():
        found = load_plan(saved)
    else:
        # the files' voxels are checked once, by the run itself (prepare_run), not here as well
        found = plan_dataset(options["data"], device=options.get("device"), check_values=False)
    return config_from_plan(found, **options)


# `--plan`: where the planned fields come from (planned_config's `plan`), not a TrainConfig field: the
# config keeps the plan itself, as `applied_plan`.
PLAN_OPTION = Option(
    "plan",
    "plan.json to take the unset options from; 'auto': plan DATA now (with --resume: OUTPUT/plan.json); "
    "'none': the built-in defaults (default: %(default)s)",
    default="auto",
)


def train_options() -> list[Option]:
    """The options of ``attnunet train`` and the keys of ``configs/train.json``: ``--plan`` and one per
    :class:`TrainConfig` field. A field the plan fills has no flag default (None: the plan's), its
    ``--plan none`` value shown in its help."""
    options = []
    for opt in field_options(TrainConfig):
        if opt.key in TRAIN_FIELDS:
            shown = list(opt.default) if isinstance(opt.default, tuple) else opt.default
            note = "" if opt.default is None else f" (default: from the plan; with --plan none: {shown})"
            opt = opt.with_(cli_default=None, help=opt.help + note)
        options.append(opt)
    return options[:2] + [PLAN_OPTION] + options[2:]  # after --data and --output, as the help reads best
