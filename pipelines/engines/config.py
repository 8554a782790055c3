"""A training run's options (:class:`TrainConfig`, one field per ``attnunet train`` flag and bundle
key) and what the run gives back (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.utils import look_up_option

from attnunet.networks import network_arguments
from attnunet.pipelines.data.datasets import CACHE_MODES
from attnunet.pipelines.flags import flag
from attnunet.pipelines.planning.plan import TRAIN_FIELDS, load_plan, plan_dataset, plan_options
from attnunet.regions import Regions
from attnunet.transforms.presets import PRESETS

__all__ = [
    "CACHE_MODES",
    "LOSSES",
    "PRESETS",
    "SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "config_from_plan",
    "planned_config",
    "resolve_config",
]

SCHEDULERS = ("cosine", "constant")
# Loss names (see attnunet.pipelines.engines.components.create_loss); "auto" is DiceCE for softmax
# outputs and the document's BCE for one binary output.
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
            region-based training). ``1`` with two classes trains the document's single binary output
            with ``BCEWithLogitsLoss``.
        epochs: number of epochs (total, counting resumed ones).
        val_every: validate every N epochs (and after the last one).
        roi_size: training patch and sliding-window size; its length sets 2D or 3D. An axis larger than
            the largest training image (resampled, padded to the network's multiple) is clamped to that
            size, with a warning (:mod:`attnunet.pipelines.engines.checks`).
        pixdim: target voxel spacing in mm, or None to keep each image's own.
        batch_size: images per batch (each gives ``num_samples`` patches).
        num_samples: random patches per image and iteration.
        lr: Adam learning rate (the document's 1e-3).
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
        cache: ``"auto"`` (memory if it fits ``memory_budget_gb``, else a persistent disk cache),
            ``"memory"``, ``"disk"`` or ``"none"``.
        cache_dir: folder of the disk cache; None means ``output/cache``.
        memory_budget_gb: memory the ``"auto"`` cache may use; None lets the dataset helper decide.
        num_workers: data-loader worker processes.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None picks CUDA when available.
        amp: mixed precision (used on CUDA only).
        sw_batch_size: windows per forward pass in sliding-window validation.
        overlap: sliding-window overlap in validation.
        progress: show a progress bar per epoch.
        plan: the plan (:func:`~attnunet.pipelines.planning.plan.plan_dataset`) these options came from;
            it is saved as ``output/plan.json`` and logged to MLflow. :func:`config_from_plan` builds a
            config from one.
        time_budget: minutes the whole run (training and validation) may take; after every epoch the
            number of epochs is set to what fits at the last epoch's speed (``epochs`` is then only an
            upper bound's starting value), with the cosine schedule annealed to 0 at the last one;
            an epoch is then at least 50 steps (whole passes over the training cases). None trains
            ``epochs`` epochs of one pass each.

    Example:
        >>> config = TrainConfig(data="data/demo", output="runs/demo", roi_size=(64, 64, 32), epochs=2)
        >>> config.lr
        0.001
    """

    data: str
    output: str
    preset: str = "ct"
    network: str = "attention_unet_3d_small"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    preset_kwargs: dict[str, Any] = field(default_factory=dict)
    out_channels: int | None = None
    epochs: int = 50
    val_every: int = 1
    roi_size: tuple[int, ...] = (96, 96, 96)
    pixdim: tuple[float, ...] | None = None
    batch_size: int = 2
    num_samples: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    loss: str = "auto"
    val_fraction: float = 0.2
    seed: int = 0
    resume: bool = False
    track: bool = True
    tracking_uri: str | None = None
    experiment: str = "attnunet"
    artifact_location: str | None = None
    run_name: str | None = None
    register: str | None = None
    alias: str = "champion"
    force_alias: bool = False
    cache: str = "auto"
    cache_dir: str | None = None
    memory_budget_gb: float | None = None
    num_workers: int = 0
    device: str | None = None
    amp: bool = True
    sw_batch_size: int = 4
    overlap: float = 0.25
    progress: bool = True
    plan: dict[str, Any] | None = None
    time_budget: float | None = None

    def __post_init__(self) -> None:
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
    planned = plan_options(plan, network_arguments(network))
    if options.get("preset", plan["preset"]) != plan["preset"]:
        planned["preset_kwargs"] = {}
    merged = {**planned, **options}
    chosen = options.get("network_kwargs", {})
    merged["network_kwargs"] = {**planned["network_kwargs"], **chosen}
    if chosen.get("attention") == "none" and "attention_levels" not in chosen:
        # the plan's levels place attention blocks; a network chosen without attention has none to place
        merged["network_kwargs"].pop("attention_levels", None)
    merged["preset_kwargs"] = {**planned["preset_kwargs"], **options.get("preset_kwargs", {})}
    return TrainConfig(plan=dict(plan), **merged)


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
