"""Training with MONAI's engines, tracked in MLflow: ``attnunet train`` and :func:`train`.

The loop is MONAI's :class:`~monai.engines.SupervisedTrainer` with a
:class:`~monai.engines.SupervisedEvaluator` run by :class:`~monai.handlers.ValidationHandler`
(sliding-window inference, mean Dice per class, validation loss). What this module adds is what no
MONAI handler does for us:

- checkpoints in the project's format (:mod:`attnunet.pipelines.checkpoints`: the network spec and
  resolved config beside the weights, written atomically), ``best.pt`` when the key metric improves
  and ``last.pt`` after every epoch with the optimiser, scheduler, AMP scaler, engine state and the
  MLflow run id, so ``--resume`` continues the same run and a SIGKILL loses at most one epoch;
- per-epoch MLflow metrics (train/validation loss, Dice per class by name, learning rate,
  throughput) through :class:`attnunet.pipelines.tracking.RunTracker`, from rank 0 only;
- DDP under ``torchrun``: MONAI's ``partition_dataset`` splits the cases, the metrics are reduced
  across ranks by MONAI's cumulative metrics, rank 0 writes checkpoints and logs.

Example:
    >>> from attnunet.pipelines.training import TrainConfig, train
    >>> config = TrainConfig(data="Task09_Spleen", output="runs/spleen", roi_size=(96, 96, 96))
    >>> result = train(config)  # doctest: +SKIP
    >>> result.best_metric, result.model_uri  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from monai.data import DataLoader, partition_dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer, default_prepare_batch
from monai.handlers import IgniteMetricHandler, MeanDice, ValidationHandler
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.utils import convert_to_tensor, look_up_option, set_determinism

from attnunet.cli import key_values
from attnunet.networks import create_network, network_arguments
from attnunet.pipelines.checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from attnunet.pipelines.datasets import discover_dataset, make_dataset, split_items
from attnunet.pipelines.overlays import save_overlay
from attnunet.pipelines.planning import TRAIN_FIELDS, load_plan, plan_dataset, plan_options, save_plan
from attnunet.pipelines.tracking import RunTracker, check_tracking_server, resolve_tracking_uri
from attnunet.pipelines.validation import validate_items
from attnunet.transforms.presets import build_transforms

__all__ = [
    "CACHE_MODES",
    "PRESETS",
    "SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "add_arguments",
    "config_from_args",
    "config_from_plan",
    "further_epochs",
    "run",
    "train",
]

logger = logging.getLogger(__name__)

PRESETS = ("ct", "mr", "image2d")
CACHE_MODES = ("auto", "memory", "disk", "none")
SCHEDULERS = ("cosine", "constant")
CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Every option of a training run, with its default.

    Args:
        data: dataset to train on: an MSD folder with ``dataset.json``, an image/label folder pair,
            a CSV, or a 2D image+mask folder (see :func:`attnunet.pipelines.datasets.discover_dataset`).
        output: folder for checkpoints, the resolved config and overlays; must not already hold a
            run unless ``resume``.
        preset: transform preset: ``"ct"``, ``"mr"`` or ``"image2d"``.
        network: name in :func:`attnunet.networks.list_networks`.
        network_kwargs: extra keyword arguments for the network (``init_features``, ``attention``...).
        preset_kwargs: extra keyword arguments for the transform preset (CT ``a_min``/``a_max``...).
        out_channels: network outputs; None means one per class (softmax, ``DiceCELoss``). ``1`` with
            two classes trains the document's single binary output with ``BCEWithLogitsLoss``.
        epochs: number of epochs (total, counting resumed ones).
        val_every: validate every N epochs (and after the last one).
        roi_size: training patch and sliding-window size; its length sets 2D or 3D.
        pixdim: target voxel spacing in mm, or None to keep each image's own.
        batch_size: images per batch (each gives ``num_samples`` patches).
        num_samples: random patches per image and iteration.
        lr: Adam learning rate (the document's 1e-3).
        weight_decay: Adam weight decay.
        scheduler: ``"cosine"`` (annealed to 0 over ``epochs``) or ``"constant"``.
        val_fraction: share of the cases held out for validation.
        seed: seed of the split, the weights and the random transforms; two CPU runs with the same
            seed give the same losses.
        resume: continue from ``output/checkpoints/last.pt``.
        track: log to MLflow (rank 0 only).
        tracking_uri: MLflow store; None means ``MLFLOW_TRACKING_URI`` or MLflow's default.
        experiment: MLflow experiment name.
        artifact_location: artifact root for the experiment if this run creates it (a folder or URI).
        run_name: MLflow run name.
        register: register the best model under this name in the MLflow model registry.
        alias: alias given to the registered version.
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
        plan: the plan (:func:`attnunet.pipelines.planning.plan_dataset`) these options came from, if any;
            it is saved as ``output/plan.json`` and logged to MLflow. :func:`config_from_plan` builds a
            config from one.
        time_budget: minutes the whole run (training and validation) may take; after every epoch the
            number of epochs is set to what fits at the last epoch's speed (``epochs`` is then only an
            upper bound's starting value), with the cosine schedule annealed to 0 at the last one.
            None trains ``epochs`` epochs.

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
        self.preset = look_up_option(self.preset, PRESETS)
        self.cache = look_up_option(self.cache, CACHE_MODES)
        self.scheduler = look_up_option(self.scheduler, SCHEDULERS)
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
        model_uri: where the logged model loads from (``models:/NAME@ALIAS`` when registered).
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


def _setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on CPU); return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_obj = torch.device(device)
    if device_obj.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for CUDA, but CUDA is not available; use --device cpu")
    if world == 1:
        return 0, 1, device_obj
    if device_obj.type == "cuda":
        device_obj = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device_obj)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_obj.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device_obj


def _all_mean(value: float, world: int) -> float:
    """Mean of a per-rank scalar over all ranks."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world


def _resolved_config(
    config: TrainConfig, labels: dict[str, str], in_channels: int, out_channels: int
) -> dict:
    """The run's config as saved in checkpoints and MLflow (JSON-serialisable, checkpoint schema)."""
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
    )
    return json.loads(json.dumps(resolved))  # plain JSON types only (tuples become lists)


def _pred_label(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, label) of a batch as plain tensors (MONAI's LossMetric cannot index a 0-d MetaTensor)."""
    return convert_to_tensor(output["pred"], track_meta=False), convert_to_tensor(
        output["label"], track_meta=False
    )


def _prepare_batch(batch: dict[str, Any], device: torch.device, non_blocking: bool = False, **kwargs):
    """MONAI's ``default_prepare_batch`` giving plain tensors: the network needs no metadata, and
    every operation on a ``MetaTensor`` pays for ``__torch_function__`` dispatch."""
    image, label = default_prepare_batch(batch, device, non_blocking, **kwargs)
    return convert_to_tensor(image, track_meta=False), convert_to_tensor(label, track_meta=False)


def _discrete_pred_label(out_channels: int) -> Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
    """Output transform for Dice: class indices for softmax outputs, a 0/1 mask for one sigmoid output."""

    def transform(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, label = _pred_label(output)
        return ((logits > 0).float() if out_channels == 1 else logits.argmax(dim=1, keepdim=True)), label

    return transform


def _check_output(output: Path, resume: bool) -> Path:
    last = output / CHECKPOINT_DIR / "last.pt"
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} does not exist; train without --resume first")
    elif last.exists() or (output / CHECKPOINT_DIR / "best.pt").exists():
        raise FileExistsError(
            f"{output} already holds a training run ({last}); pass --resume to continue it "
            "or choose another --output"
        )
    return last


def train(config: TrainConfig) -> TrainResult:
    """Train a segmentation network as ``config`` says, with checkpoints and MLflow tracking.

    Steps: discover and validate the data, split it, check the tracking store (fails before any
    training), build cached datasets, the network, ``DiceCELoss`` (or ``BCEWithLogitsLoss`` for one
    binary output), Adam and the scheduler, then run MONAI's trainer with validation every
    ``val_every`` epochs. At the end rank 0 logs the best checkpoint, the config and an overlay PNG,
    logs the model and registers it when ``config.register`` is set.

    Args:
        config: the options (see :class:`TrainConfig`).

    Returns:
        a :class:`TrainResult`.

    Raises:
        FileNotFoundError: ``data`` does not exist, or ``resume`` without a last checkpoint.
        FileExistsError: ``output`` already holds a run and ``resume`` is not set.
        ValueError: bad data (see :func:`attnunet.pipelines.validation.validate_items`) or options.
        ConnectionError: the MLflow tracking store cannot be reached.

    Example:
        >>> config = TrainConfig(data="demo", output="runs/a", roi_size=(64, 64, 32), epochs=2)
        >>> result = train(config)  # doctest: +SKIP
    """
    rank, world, device = _setup_distributed(config.device)
    try:
        return _train(config, rank, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            # The engines hold the DDP model in reference cycles; left to interpreter shutdown, its
            # gloo reducer is destroyed with worker threads still joinable and the process aborts
            # ("terminate called without an active exception"). Free it while the group is alive.
            gc.collect()
            dist.destroy_process_group()


def _train(config: TrainConfig, rank: int, world: int, device: torch.device) -> TrainResult:
    started = time.perf_counter()  # the time budget counts from here: data checks and caching included
    output = Path(config.output)
    if not Path(config.data).exists():
        raise FileNotFoundError(f"--data {config.data} does not exist")
    last_path = _check_output(output, config.resume)
    resumed = load_checkpoint(last_path) if config.resume else None
    if resumed is not None and int(resumed["epoch"]) >= config.epochs:
        raise ValueError(
            f"--resume: {last_path} already finished epoch {resumed['epoch']}; raise --epochs to train more"
        )

    if config.track and rank == 0:  # fail fast, before the (slow) data validation
        check_tracking_server(resolve_tracking_uri(config.tracking_uri))

    index = discover_dataset(config.data)
    labels = dict(index.labels)
    if len(labels) < 2:
        raise ValueError(
            f"{config.data}: a segmentation needs at least 2 classes (background + one), got {labels}"
        )
    out_channels = config.out_channels or len(labels)
    if out_channels == 1 and len(labels) != 2:
        raise ValueError(
            f"out_channels=1 (one binary output) needs exactly 2 classes, {config.data} has {labels}"
        )
    if out_channels not in (1, len(labels)):
        raise ValueError(
            f"out_channels must be 1 or the number of classes ({len(labels)}), got {out_channels}"
        )
    validate_items(index.items, labels=labels)
    train_items, val_items = split_items(index.items, val_fraction=config.val_fraction, seed=config.seed)

    if world > 1 and len(val_items) < world:
        raise ValueError(
            f"{len(val_items)} validation cases cannot be shared by {world} processes; raise --val-fraction"
        )

    tracker = None
    if config.track and rank == 0:
        run_id = resumed.get("mlflow_run_id") if resumed else None
        tracker = RunTracker(
            config.tracking_uri,
            experiment=config.experiment,
            run_name=config.run_name,
            run_id=run_id,
            artifact_location=config.artifact_location,
        )
    try:
        return _fit(config, rank, world, device, labels, train_items, val_items, resumed, tracker, started)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise


def _fit(
    config: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
    labels: dict[str, str],
    train_items: list[dict],
    val_items: list[dict],
    resumed: dict[str, Any] | None,
    tracker: RunTracker | None,
    started: float,
) -> TrainResult:
    """Build datasets, network, engines and handlers, and run the trainer (rank-0 side effects only)."""
    output = Path(config.output)
    last_path, best_path = output / CHECKPOINT_DIR / "last.pt", output / CHECKPOINT_DIR / "best.pt"
    out_channels = config.out_channels or len(labels)
    set_determinism(seed=config.seed)
    preset_args = dict(config.preset_kwargs, pixdim=config.pixdim)
    train_transform = build_transforms(
        config.preset, "train", roi_size=config.roi_size, num_samples=config.num_samples, **preset_args
    )
    val_transform = build_transforms(config.preset, "val", **preset_args)
    if world > 1:  # MONAI's partitioning: every rank gets the same number of training cases
        train_items = partition_dataset(
            train_items, num_partitions=world, shuffle=True, seed=config.seed, even_divisible=True
        )[rank]
        val_items = partition_dataset(val_items, num_partitions=world, shuffle=False, even_divisible=False)[
            rank
        ]
    cache_dir = Path(config.cache_dir) if config.cache_dir else output / "cache"
    cache_args = {"cache": config.cache, "memory_budget_gb": config.memory_budget_gb}
    # Separate disk caches: the two chains' cached heads differ, and MONAI keys the cache by item only.
    train_ds = make_dataset(train_items, train_transform, cache_dir=cache_dir / "train", **cache_args)
    val_ds = make_dataset(val_items, val_transform, cache_dir=cache_dir / "val", **cache_args)
    in_channels = int(val_ds[0]["image"].shape[0])

    resolved = _resolved_config(config, labels, in_channels, out_channels)
    spec = {
        "name": config.network,
        "kwargs": {
            **config.network_kwargs,
            "spatial_dims": len(config.roi_size),
            "in_channels": in_channels,
            "out_channels": out_channels,
        },
    }
    resolved["network_spec"] = spec
    if resumed is not None and resumed["network"] != spec:
        raise ValueError(
            f"--resume: {last_path} was trained with network {resumed['network']}, "
            f"the options now give {spec}"
        )
    network = create_network(spec["name"], **spec["kwargs"]).to(device)
    model = network
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )

    if out_channels == 1:
        loss_function: torch.nn.Module = torch.nn.BCEWithLogitsLoss()  # the document's loss
    else:
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.scheduler == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs
        )
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    amp = config.amp and device.type == "cuda"

    train_loader = DataLoader(
        train_ds, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers, drop_last=False
    )
    val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=config.num_workers)
    # Softmax outputs: Dice of the foreground classes from class indices; one sigmoid output: of the mask.
    dice_args = {
        "include_background": out_channels == 1,
        "num_classes": out_channels if out_channels > 1 else None,
        "output_transform": _discrete_pred_label(out_channels),
    }
    foreground = [labels[k] for k in sorted(labels, key=int) if k != "0"]
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=model,
        inferer=SlidingWindowInferer(
            roi_size=config.roi_size,
            sw_batch_size=config.sw_batch_size,
            overlap=config.overlap,
            mode="gaussian",
        ),
        key_val_metric={"val_mean_dice": MeanDice(**dice_args)},
        additional_metrics={
            "val_dice": MeanDice(reduction="mean_batch", **dice_args),
            "val_loss": IgniteMetricHandler(loss_fn=loss_function, output_transform=_pred_label),
        },
        amp=amp,
        decollate=False,
        prepare_batch=_prepare_batch,
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=config.epochs,
        train_data_loader=train_loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=SimpleInferer(),
        amp=amp,
        decollate=False,
        prepare_batch=_prepare_batch,
    )
    # One line per epoch from _record_epoch below replaces MONAI's StatsHandler (whose logger setup
    # would also silence this module's logger) and ignite's per-epoch INFO lines.
    for engine in (trainer, evaluator):
        engine.logger.setLevel(logging.WARNING)

    if resumed is not None:
        network.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if trainer.scaler is not None and resumed.get("scaler"):
            trainer.scaler.load_state_dict(resumed["scaler"])
        # ignite's engine state: the next run() starts at the epoch after the checkpointed one.
        trainer.load_state_dict(
            {"epoch": int(resumed["epoch"]), "max_epochs": config.epochs, "epoch_length": len(train_loader)}
        )
        evaluator.state.best_metric = float(resumed["best_metric"])
        evaluator.state.best_metric_epoch = int(resumed["best_epoch"])
        logger.info(
            "resuming %s after epoch %d (best %.4f)", last_path, resumed["epoch"], resumed["best_metric"]
        )

    history: list[dict[str, float]] = []
    epoch_stats: dict[str, float] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def _start_epoch(engine: Engine) -> None:
        epoch_stats.update(started=time.perf_counter(), loss=0.0, batches=0, samples=0)
        if rank == 0:
            logger.info("epoch %d/%d started", engine.state.epoch, engine.state.max_epochs)

    # ignite's Timer, summing the time the trainer waits for each batch from the loader in an epoch
    data_timer = Timer(average=False)
    data_timer.attach(
        trainer, start=Events.EPOCH_STARTED, resume=Events.GET_BATCH_STARTED, pause=Events.GET_BATCH_COMPLETED
    )

    @trainer.on(Events.ITERATION_COMPLETED)
    def _accumulate(engine: Engine) -> None:
        epoch_stats["loss"] += float(engine.state.output["loss"].item())
        epoch_stats["batches"] += 1
        epoch_stats["samples"] += int(engine.state.output["image"].shape[0])

    @trainer.on(Events.EPOCH_COMPLETED)
    def _finish_epoch(engine: Engine) -> None:
        seconds = time.perf_counter() - epoch_stats["started"]
        epoch_stats["data_wait_share"] = _all_mean(data_timer.value() / max(seconds, 1e-9), world)
        epoch_stats["train_loss"] = _all_mean(epoch_stats["loss"] / max(epoch_stats["batches"], 1), world)
        epoch_stats["throughput"] = _all_mean(epoch_stats["samples"], world) * world / max(seconds, 1e-9)
        epoch_stats["lr"] = optimizer.param_groups[0]["lr"]
        # Epoch-level schedule, stepped before validation so that the checkpoint holds the next lr.
        scheduler.step()

    if config.progress and rank == 0:
        ProgressBar(persist=False).attach(
            trainer, output_transform=lambda output: {"loss": output["loss"].item()}
        )
    ValidationHandler(validator=evaluator, interval=config.val_every, epoch_level=True).attach(trainer)
    validation_clock = {"started": 0.0, "seconds": 0.0}  # the last validation's duration

    @evaluator.on(Events.STARTED)
    def _start_validation(_: Engine) -> None:
        validation_clock["started"] = time.perf_counter()

    @evaluator.on(Events.COMPLETED)
    def _finish_validation(_: Engine) -> None:
        validation_clock["seconds"] = time.perf_counter() - validation_clock["started"]

    budget_choice: dict[str, float] = {}
    if config.time_budget is not None:

        @trainer.on(Events.EPOCH_COMPLETED)
        def _size_to_the_budget(engine: Engine) -> None:
            # Re-sized after every epoch from the last epoch's own time, so a machine that slows down
            # (or speeds up) mid-run still ends within the budget; the mean over ranks keeps DDP in step.
            now, epoch = time.perf_counter(), engine.state.epoch
            validation = validation_clock["seconds"]
            validated = evaluator.state.epoch == epoch
            epoch_seconds = now - epoch_stats["started"] - (validation if validated else 0.0)
            more = further_epochs(
                60 * config.time_budget, now - started, epoch_seconds, validation, config.val_every
            )
            epochs = epoch + int(_all_mean(float(more), world))
            engine.state.max_epochs = epochs
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                scheduler.T_max = epochs  # anneals to 0 at the chosen last epoch
            if epoch == 1:
                logger.info(
                    "time budget %.1f min: setup and epoch 1 took %.0f s (validation %.0f s) -> %d epochs",
                    config.time_budget, now - started, validation, epochs,
                )  # fmt: skip
            budget_choice.update(
                epochs=epochs,
                first_epoch_seconds=budget_choice.get("first_epoch_seconds", round(now - started, 3)),
                last_epoch_seconds=round(epoch_seconds, 3),
                validation_seconds=round(validation, 3),
            )

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate_last_and_first(engine: Engine) -> None:
        # after the last epoch, and after the first under a time budget (which times a validation)
        epoch = engine.state.epoch
        last = epoch == engine.state.max_epochs
        if evaluator.state.epoch != epoch and (last or (epoch == 1 and config.time_budget is not None)):
            evaluator.run(epoch)

    @trainer.on(Events.EPOCH_COMPLETED)  # after validation: handlers run in the order they are added
    def _record_epoch(engine: Engine) -> None:
        epoch = engine.state.epoch
        record = {"epoch": epoch, "train_loss": epoch_stats["train_loss"], "lr": epoch_stats["lr"]}
        record["throughput_samples_per_s"] = epoch_stats["throughput"]
        record["data_wait_share"] = epoch_stats["data_wait_share"]  # of the epoch, waiting for the loader
        if config.time_budget is not None:  # the budget's current choice, as an MLflow metric per epoch
            record["planned_epochs"] = engine.state.max_epochs
        validated = evaluator.state.epoch == epoch
        if validated:
            metrics = evaluator.state.metrics
            record["val_loss"] = float(metrics["val_loss"])
            record["val_mean_dice"] = float(metrics["val_mean_dice"])
            per_class = torch.as_tensor(metrics["val_dice"]).flatten().tolist()
            record.update(
                {f"val_dice_{name}": float(v) for name, v in zip(foreground, per_class, strict=True)}
            )
        history.append(record)
        if rank != 0:
            return
        logger.info(
            "epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        )
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        checkpoint = {
            "network": spec,
            "model": network.state_dict(),
            "config": resolved,
            "epoch": epoch,
            "best_metric": float(evaluator.state.best_metric),
            "best_epoch": int(evaluator.state.best_metric_epoch),
        }
        if validated and evaluator.state.best_metric_epoch == epoch:
            save_checkpoint(best_path, checkpoint)
        save_checkpoint(
            last_path,
            {
                **checkpoint,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
                "mlflow_run_id": tracker.run_id if tracker is not None else None,
            },
        )

    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        if config.plan is not None:
            plan_path = save_plan(config.plan, output / "plan.json")
            if tracker is not None:
                tracker.log_artifact(plan_path, artifact_path="plan")
        _write_config(output, resolved, tracker)
    trainer.run()
    if budget_choice:
        resolved.update(epochs=int(trainer.state.epoch), time_budget_choice=dict(budget_choice))
        if rank == 0:  # what the budget chose, beside the run and (as new parameters) in MLflow
            _write_config(output, resolved, tracker)

    result = TrainResult(
        output=output,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_metric=float(evaluator.state.best_metric),
        best_epoch=int(evaluator.state.best_metric_epoch),
        epochs=int(trainer.state.epoch),
        history=history,
        config=resolved,
    )
    if tracker is not None:
        _finish_run(result, tracker, val_ds, config, register=config.register, alias=config.alias)
    return result


def further_epochs(
    budget_seconds: float, spent: float, epoch_seconds: float, validation_seconds: float, val_every: int
) -> int:
    """How many more epochs end within ``budget_seconds``.

    ``spent`` seconds have passed (setup and the epochs run so far, with their validations); every
    further epoch costs ``epoch_seconds`` plus a validation every ``val_every`` epochs. Kept in reserve:
    one more validation (after the last epoch), the same again for logging the model, and 5% of the
    budget for the jitter of the epoch time.

    Example:
        >>> further_epochs(600, spent=70, epoch_seconds=50, validation_seconds=10, val_every=1)
        8
    """
    reserve = 2 * validation_seconds + 0.05 * budget_seconds
    per_epoch = max(epoch_seconds + validation_seconds / val_every, 1e-6)
    return max(0, int((budget_seconds - spent - reserve) // per_epoch))


def _write_config(output: Path, resolved: dict[str, Any], tracker: RunTracker | None) -> None:
    """Write the resolved config beside the checkpoints (and log it to MLflow when tracking)."""
    (output / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    if tracker is not None:
        tracker.log_config(resolved)


def _finish_run(
    result: TrainResult, tracker: RunTracker, val_ds, config: TrainConfig, *, register, alias
) -> None:
    """Log the best checkpoint, an overlay of the first validation case and the model; end the run."""
    resolved = result.config
    model, _ = model_from_checkpoint(result.best_checkpoint)
    overlay = result.output / "overlays" / "validation.png"
    sample = val_ds[0]
    inferer = SlidingWindowInferer(
        roi_size=config.roi_size, sw_batch_size=config.sw_batch_size, overlap=config.overlap, mode="gaussian"
    )
    with torch.no_grad():
        logits = inferer(sample["image"].unsqueeze(0).as_tensor().float(), model)[0]
    prediction = (logits > 0).long() if logits.shape[0] == 1 else logits.argmax(dim=0)
    save_overlay(
        overlay,
        sample["image"][0],
        sample["label"][0],
        prediction,
        class_names=resolved["labels"],
        title=f"validation case, best epoch {result.best_epoch} (mean Dice {result.best_metric:.3f})",
    )
    tracker.log_artifact(result.best_checkpoint, artifact_path="checkpoints")
    tracker.log_artifact(overlay, artifact_path="overlays")
    example = tuple(min(s, 32) for s in config.roi_size)
    result.model_uri = tracker.log_model(
        model,
        in_channels=resolved["in_channels"],
        out_channels=resolved["out_channels"],
        spatial_dims=resolved["spatial_dims"],
        example_size=example,
        register=register,
        alias=alias,
    )
    result.run_id, result.tracking_uri = tracker.run_id, tracker.tracking_uri
    tracker.end("FINISHED")


def config_from_plan(plan: dict[str, Any], **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` whose options not given in ``options`` come from ``plan``.

    ``network_kwargs`` and ``preset_kwargs`` are merged key by key (``options`` win); the plan's
    preset options are dropped when ``options`` choose another preset.

    Example:
        >>> config = config_from_plan(load_plan("plan.json"), data="Task04", output="run")  # doctest: +SKIP
    """
    network = options.get("network", TrainConfig.network)
    planned = plan_options(plan, network_arguments(network))
    if options.get("preset", plan["preset"]) != plan["preset"]:
        planned["preset_kwargs"] = {}
    merged = {**planned, **options}
    merged["network_kwargs"] = {**planned["network_kwargs"], **options.get("network_kwargs", {})}
    merged["preset_kwargs"] = {**planned["preset_kwargs"], **options.get("preset_kwargs", {})}
    return TrainConfig(plan=dict(plan), **merged)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet train`` (one per :class:`TrainConfig` field, and ``--plan``)."""
    defaults = TrainConfig(data="", output="")
    parser.add_argument(
        "--data", required=True, help="dataset: MSD folder with dataset.json, image/label folders, CSV"
    )
    parser.add_argument("--output", required=True, help="folder for checkpoints, config and overlays")
    parser.add_argument(
        "--plan",
        default="auto",
        help="plan.json to take the unset options from; 'auto' (default): plan DATA now (with --resume: "
        "OUTPUT/plan.json); 'none': the built-in defaults",
    )
    parser.add_argument(
        "--time-budget", type=float, metavar="MINUTES", help="size the schedule so the run ends within it"
    )
    parser.add_argument("--preset", choices=PRESETS, help=f"transform preset (no plan: {defaults.preset})")
    parser.add_argument(
        "--network", default=defaults.network, help="network preset name (default: %(default)s)"
    )
    parser.add_argument(
        "--network-option",
        action="append",
        metavar="KEY=VALUE",
        help="extra network argument, e.g. init_features=16",
    )
    parser.add_argument(
        "--preset-option", action="append", metavar="KEY=VALUE", help="extra preset argument, e.g. a_min=-200"
    )
    parser.add_argument(
        "--out-channels", type=int, help="1 for one binary (sigmoid, BCE) output; default: one per class"
    )
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="total epochs (default: %(default)s)"
    )
    parser.add_argument("--val-every", type=int, default=defaults.val_every, help="validate every N epochs")
    parser.add_argument(
        "--roi-size", type=int, nargs="+", help=f"patch size, 2 or 3 ints (no plan: {defaults.roi_size})"
    )
    parser.add_argument(
        "--pixdim", type=float, nargs="+", help="target spacing in mm (default: keep each image's)"
    )
    parser.add_argument("--batch-size", type=int, help=f"images per batch (no plan: {defaults.batch_size})")
    parser.add_argument(
        "--num-samples", type=int, help=f"patches per image (no plan: {defaults.num_samples})"
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)"
    )
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="Adam weight decay")
    parser.add_argument(
        "--scheduler", default=defaults.scheduler, choices=SCHEDULERS, help="learning-rate schedule"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=defaults.val_fraction, help="share held out for validation"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of split, weights and augmentation"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    parser.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--experiment", default=defaults.experiment, help="MLflow experiment (default: %(default)s)"
    )
    parser.add_argument("--artifact-location", help="artifact root of a new MLflow experiment")
    parser.add_argument("--run-name", help="MLflow run name")
    parser.add_argument("--register", metavar="NAME", help="register the best model under NAME")
    parser.add_argument(
        "--alias", default=defaults.alias, help="alias of the registered version (default: %(default)s)"
    )
    parser.add_argument(
        "--cache", default=defaults.cache, choices=CACHE_MODES, help="dataset cache (default: auto)"
    )
    parser.add_argument("--cache-dir", help="disk cache folder (default: OUTPUT/cache)")
    parser.add_argument("--memory-budget-gb", type=float, help="memory the auto cache may use")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="data-loader workers")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA"
    )
    parser.add_argument(
        "--sw-batch-size", type=int, help=f"windows per forward pass (no plan: {defaults.sw_batch_size})"
    )
    parser.add_argument("--overlap", type=float, help=f"sliding-window overlap (no plan: {defaults.overlap})")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the parsed ``attnunet train`` arguments describe."""
    options = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)
    }
    # the options a plan sets are None on the command line unless given
    options = {k: v for k, v in options.items() if not (k in TRAIN_FIELDS and v is None) and k != "plan"}
    options["network_kwargs"] = key_values(args.network_option, "--network-option")
    options["preset_kwargs"] = key_values(args.preset_option, "--preset-option")
    if args.plan == "none":
        return TrainConfig(**options)
    saved = Path(args.output) / "plan.json"
    if args.plan != "auto":
        plan = load_plan(args.plan)
    elif args.resume and saved.is_file():
        plan = load_plan(saved)
    else:
        plan = plan_dataset(args.data, device=args.device)
    return config_from_plan(plan, **options)


def run(args: argparse.Namespace) -> int:
    """``attnunet train``: train, then print where the checkpoints and the model are."""
    result = train(config_from_args(args))
    if result.run_id is not None or int(os.environ.get("RANK", "0")) == 0:
        print(
            f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}; "
            f"checkpoints in {result.best_checkpoint.parent}"
        )
        if result.run_id:
            print(f"MLflow run {result.run_id} in {result.tracking_uri}; model: {result.model_uri}")
    return 0
