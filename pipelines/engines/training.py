"""Training with MONAI's engines, tracked in MLflow: :func:`train`.

The loop is MONAI's :class:`~monai.engines.SupervisedTrainer` with a
:class:`~monai.engines.SupervisedEvaluator` run by :class:`~monai.handlers.ValidationHandler`, built by
the factories of :mod:`attnunet.pipelines.engines.components` (which the bundle's ``train.json``
references too). What this module adds is the run around them:

- checkpoints in the project's format (:mod:`attnunet.checkpoints`: the model spec and resolved config
  beside the weights, written atomically), ``best.pt`` when the key metric improves and ``last.pt``
  after every epoch with the optimiser, scheduler, AMP scaler, engine state and the MLflow run id, so
  ``--resume`` continues the same run and a SIGKILL loses at most one epoch;
- every epoch's record written to ``metrics.jsonl`` beside the checkpoints, then the checkpoints, then
  the record sent to MLflow through :class:`~attnunet.pipelines.tracking.mlflow_runs.RunTracker`, from
  rank 0 only; a tracking store that goes away mid-run gets one warning and the training goes on
  (the records stay on disk and are sent when the store is back, or later by ``attnunet sync``);
- every check that can refuse a run (:mod:`attnunet.pipelines.engines.checks`: files, dimensions and
  channels, a resumed checkpoint's network, an oversized patch clamped) before its MLflow run exists;
- DDP under ``torchrun``: MONAI's ``partition_dataset`` splits the cases, the metrics are reduced
  across ranks by MONAI's cumulative metrics, rank 0 writes checkpoints and logs.

Example:
    >>> from attnunet.pipelines.engines.config import TrainConfig
    >>> config = TrainConfig(data="Task09_Spleen", output="runs/spleen", roi_size=(96, 96, 96))
    >>> result = train(config)  # doctest: +SKIP
    >>> result.best_metric, result.model_uri  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events
from monai.data import DataLoader, partition_dataset
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.utils import set_determinism
from torch.utils.data import RandomSampler

from attnunet.atomic import atomic_output
from attnunet.checkpoints import load_checkpoint
from attnunet.pipelines.data.datasets import make_dataset, split_items
from attnunet.pipelines.data.splits import case_ids, fold_items
from attnunet.pipelines.distributed import leave_distributed, setup_distributed
from attnunet.pipelines.engines.checks import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    PreparedRun,
    check_output,
    prepare_run,
)
from attnunet.pipelines.engines.components import (
    create_evaluator,
    create_loss,
    create_optimizer,
    create_scheduler,
    create_trainer,
)
from attnunet.pipelines.engines.config import TrainConfig, TrainResult
from attnunet.pipelines.engines.finish import finish_run
from attnunet.pipelines.engines.handlers import (
    EpochRecorder,
    EpochStatistics,
    TimeBudget,
    validate_at_the_end,
)
from attnunet.pipelines.planning.plan import save_plan
from attnunet.pipelines.tracking.mlflow_runs import RunTracker
from attnunet.pipelines.tracking.store import check_tracking_server, resolve_tracking_uri
from attnunet.spec import ModelSpec
from attnunet.transforms.presets import build_transforms

if TYPE_CHECKING:
    from attnunet.pipelines.engines.cv import CVResult

__all__ = ["CHECKPOINT_DIR", "CONFIG_FILE", "METRICS_FILE", "train"]

logger = logging.getLogger(__name__)

BUDGET_EPOCH_STEPS = 50  # the fewest optimiser steps in an epoch of a time-budgeted run


def train(
    config: TrainConfig,
    *,
    split: Mapping[str, Sequence[str]] | None = None,
    parent_run_id: str | None = None,
) -> TrainResult | CVResult:
    """Train a segmentation network as ``config`` says, with checkpoints and MLflow tracking.

    With ``config.folds`` or ``config.fold`` set this is a cross-validation
    (:func:`attnunet.pipelines.engines.cv.cross_validate`, which trains each fold by this function with
    its ``split``), returning its :class:`~attnunet.pipelines.engines.cv.CVResult`.

    Steps: check the tracking store (fails before any training), discover and validate the data and fit
    the patch (:func:`~attnunet.pipelines.engines.checks.prepare_run`), split it, build cached datasets,
    the network, ``DiceCELoss`` (or ``BCEWithLogitsLoss`` for one binary output), Adam and the scheduler,
    then run MONAI's trainer with validation every ``val_every`` epochs. At the end rank 0 logs the best
    checkpoint, the config and an overlay PNG, logs the model and registers it when ``config.register``
    is set.

    Args:
        config: the options (see :class:`TrainConfig`).
        split: a fold, ``{"train": [case ids], "val": [case ids]}`` (ids as
            :func:`~attnunet.pipelines.data.splits.case_ids` names them); None: the split by
            ``val_fraction`` and ``seed``.
        parent_run_id: the MLflow run this one is a child of (a fold's cross-validation run).

    Returns:
        a :class:`TrainResult`.

    Raises:
        FileNotFoundError: ``data`` does not exist, or ``resume`` without a last checkpoint.
        FileExistsError: ``output`` already holds a run and ``resume`` is not set.
        ValueError: bad data (see :func:`attnunet.pipelines.data.validation.validate_items`) or options.
        ConnectionError: the MLflow tracking store cannot be reached when the run starts.
        DiskFullError: (an ``OSError``) a checkpoint or record could not be written for lack of room;
            the earlier checkpoints are left as they were.

    Example:
        >>> config = TrainConfig(data="demo", output="runs/a", roi_size=(64, 64, 32), epochs=2)
        >>> result = train(config)  # doctest: +SKIP
    """
    if split is None and (config.folds is not None or config.fold is not None):
        from attnunet.pipelines.engines.cv import cross_validate

        return cross_validate(config)
    rank, world, device = setup_distributed(config.device)
    try:
        return _train(config, rank, world, device, split, parent_run_id)
    finally:
        leave_distributed(world)


def _train(
    config: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
    split: Mapping[str, Sequence[str]] | None,
    parent_run_id: str | None,
) -> TrainResult:
    started = time.perf_counter()  # the time budget counts from here: data checks and caching included
    if not Path(config.data).exists():
        raise FileNotFoundError(f"--data {config.data} does not exist")
    last_path = check_output(Path(config.output), config.resume)
    resumed = load_checkpoint(last_path) if config.resume else None
    if resumed is not None and int(resumed["epoch"]) >= config.epochs:
        raise ValueError(
            f"--resume: {last_path} already finished epoch {resumed['epoch']}; raise --epochs to train more"
        )
    if config.track and rank == 0:  # fail fast, before the (slow) data validation
        check_tracking_server(resolve_tracking_uri(config.tracking_uri))
    # Everything that can refuse the run happens before its MLflow run is created or resumed: a refused
    # --resume leaves the earlier run as it was.
    prepared = prepare_run(config, resumed, rank)
    config = prepared.config
    splits = _split(prepared.items, config, split)
    if world > 1 and len(splits[1]) < world:
        raise ValueError(
            f"{len(splits[1])} validation cases cannot be shared by {world} processes; raise --val-fraction"
        )
    tracker = None
    if config.track and rank == 0:
        output = Path(config.output)
        tracker = RunTracker(
            config.tracking_uri,
            experiment=config.experiment,
            run_name=config.run_name,
            run_id=resumed.get("mlflow_run_id") if resumed else None,
            artifact_location=config.artifact_location,
            force_alias=config.force_alias,
            parent_run_id=parent_run_id,
            kept_on_disk=f"every epoch's metrics are kept in {output / METRICS_FILE}, the checkpoints in "
            f"{output / CHECKPOINT_DIR}",
        )
    try:
        return _fit(prepared, rank, world, device, splits, resumed, tracker, started)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise


def _split(
    items: list[dict], config: TrainConfig, split: Mapping[str, Sequence[str]] | None
) -> tuple[list[dict], list[dict]]:
    """Training and validation cases: a fold's by case id (no further split), else the seeded split by
    ``val_fraction``."""
    if split is None:
        return split_items(items, val_fraction=config.val_fraction, seed=config.seed)
    return fold_items(items, case_ids(items), {side: list(split[side]) for side in ("train", "val")})


def _datasets(
    config: TrainConfig, num_classes: int, splits: tuple[list[dict], list[dict]], rank: int, world: int
) -> tuple:
    """Cached training and validation datasets of this rank's share of the cases."""
    train_items, val_items = splits
    preset_args = dict(config.preset_kwargs, pixdim=config.pixdim)
    train_transform = build_transforms(
        config.preset, "train", roi_size=config.roi_size, num_samples=config.num_samples,
        num_classes=num_classes, **preset_args,
    )  # fmt: skip
    val_transform = build_transforms(config.preset, "val", **preset_args)
    if world > 1:  # MONAI's partitioning: every rank gets the same number of training cases
        train_items = partition_dataset(
            train_items, num_partitions=world, shuffle=True, seed=config.seed, even_divisible=True
        )[rank]
        val_items = partition_dataset(val_items, num_partitions=world, shuffle=False)[rank]
    cache_dir = Path(config.cache_dir) if config.cache_dir else Path(config.output) / "cache"
    cache_args = {"cache": config.cache, "cache_memory_gb": config.cache_memory_gb}
    # Separate disk caches: the two chains' cached heads differ, and MONAI keys the cache by item only.
    train_ds = make_dataset(train_items, train_transform, cache_dir=cache_dir / "train", **cache_args)
    val_ds = make_dataset(val_items, val_transform, cache_dir=cache_dir / "val", **cache_args)
    return train_ds, val_ds


class _Run:
    """The engines of one run and what they act on (network, optimiser, schedule)."""

    def __init__(self, prepared: PreparedRun, device: torch.device, world: int, datasets) -> None:
        config, spec = prepared.config, prepared.spec
        self.network = prepared.network.to(device)
        model = self.network
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[device.index] if device.type == "cuda" else None
            )
        loss = create_loss(config.loss, spec.out_channels, spec.regions)
        self.optimizer = create_optimizer(self.network.parameters(), config.lr, config.weight_decay)
        self.scheduler = create_scheduler(self.optimizer, config.scheduler, config.epochs)
        amp = config.amp and device.type == "cuda"
        train_ds, val_ds = datasets
        train_loader = DataLoader(
            train_ds, batch_size=config.batch_size, num_workers=config.num_workers,
            sampler=RandomSampler(train_ds, num_samples=_epoch_cases(config, len(train_ds))),
        )  # fmt: skip
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=config.num_workers)
        self.evaluator = create_evaluator(
            model, val_loader, loss, spec=spec, roi_size=config.roi_size,
            sw_batch_size=config.sw_batch_size, overlap=config.overlap, device=device, amp=amp,
        )  # fmt: skip
        self.trainer = create_trainer(
            model, train_loader, loss, self.optimizer, epochs=config.epochs, device=device, amp=amp
        )
        # One line per epoch from EpochRecorder replaces MONAI's StatsHandler (whose logger setup
        # would also silence this module's logger) and ignite's per-epoch INFO lines.
        for engine in (self.trainer, self.evaluator):
            engine.logger.setLevel(logging.WARNING)

    def restore(self, resumed: dict[str, Any], epochs: int) -> None:
        """Weights, optimiser moments, scaler and engine state of a ``last.pt``; the optimiser's settings
        and the schedule are this run's options (``--lr``, ``--weight-decay``, ``--scheduler``, and the
        cosine's length from ``--epochs``), at the checkpoint's epoch."""
        self.network.load_state_dict(resumed["model"])
        chosen = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(resumed["optimizer"])  # also brings back the old lr and settings
        for group, settings in zip(self.optimizer.param_groups, chosen, strict=True):
            group.update(settings)
        # Not the saved schedule: it would keep the old length (a longer run's lr back up after reaching 0)
        # and the old lr. The new one, placed at the checkpoint's epoch, anneals to 0 at the new last epoch.
        with warnings.catch_warnings():  # stepped before any optimiser step, on purpose
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            for _ in range(int(resumed["epoch"])):
                self.scheduler.step()
        if self.trainer.scaler is not None and resumed.get("scaler"):
            self.trainer.scaler.load_state_dict(resumed["scaler"])
        # ignite's engine state: the next run() starts at the epoch after the checkpointed one.
        length = len(self.trainer.data_loader)
        self.trainer.load_state_dict(
            {"epoch": int(resumed["epoch"]), "max_epochs": epochs, "epoch_length": length}
        )
        self.evaluator.state.best_metric = float(resumed["best_metric"])
        self.evaluator.state.best_metric_epoch = int(resumed["best_epoch"])

    def checkpoint(
        self, spec: ModelSpec, resolved: dict[str, Any], tracker: RunTracker | None
    ) -> dict[str, Any]:
        """Everything ``last.pt`` holds at this moment."""
        trainer, evaluator = self.trainer, self.evaluator
        return {
            "spec": spec.to_dict(),
            "model": self.network.state_dict(),
            "config": resolved,
            "epoch": trainer.state.epoch,
            "best_metric": float(evaluator.state.best_metric),
            "best_epoch": int(evaluator.state.best_metric_epoch),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
            "mlflow_run_id": tracker.run_id if tracker is not None else None,
        }


def _fit(
    prepared: PreparedRun,
    rank: int,
    world: int,
    device: torch.device,
    splits: tuple[list[dict], list[dict]],
    resumed: dict[str, Any] | None,
    tracker: RunTracker | None,
    started: float,
) -> TrainResult:
    """Build datasets, engines and handlers, and run the trainer (rank-0 side effects only)."""
    config, resolved, spec, labels = prepared.config, prepared.resolved, prepared.spec, prepared.labels
    output = Path(config.output)
    set_determinism(seed=config.seed)
    # crops are balanced over label values: a region dataset's labels name every value its regions hold
    train_ds, val_ds = _datasets(config, len(spec.labels), splits, rank, world)
    run = _Run(prepared, device, world, (train_ds, val_ds))
    if resumed is not None:
        run.restore(resumed, config.epochs)
        logger.info(
            "resuming %s after epoch %d (best %.4f)", output, resumed["epoch"], resumed["best_metric"]
        )
    budget = _attach_handlers(config, run, rank, world, started)
    recorder = EpochRecorder(
        output / CHECKPOINT_DIR,
        lambda: run.checkpoint(spec, resolved, tracker),
        budget.statistics if isinstance(budget, TimeBudget) else budget,
        (  # the validation Dice's names: a region model's regions, else the foreground classes
            list(spec.regions.names)
            if spec.regions
            else [labels[k] for k in sorted(labels, key=int) if k != "0"]
        ),
        metrics_file=output / METRICS_FILE,
        resumed_epoch=int(resumed["epoch"]) if resumed is not None else 0,
        log_metrics=(lambda metrics, step: tracker.log_metrics(metrics, step=step)) if tracker else None,
        rank=rank,
        budgeted=isinstance(budget, TimeBudget),
    )
    recorder.attach(run.trainer, run.evaluator)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        if config.applied_plan is not None:
            save_plan(config.applied_plan, output / "plan.json")
            if tracker is not None:
                tracker.log_dict(config.applied_plan, "plan/plan.json")
        _write_config(output, resolved, tracker)
    run.trainer.run()
    if isinstance(budget, TimeBudget) and budget.choice:
        resolved.update(epochs=int(run.trainer.state.epoch), time_budget_choice=dict(budget.choice))
        if rank == 0:  # what the budget chose, beside the run and (as new parameters) in MLflow
            _write_config(output, resolved, tracker)
    result = TrainResult(
        output=output,
        best_checkpoint=recorder.best_path,
        last_checkpoint=recorder.last_path,
        best_metric=float(run.evaluator.state.best_metric),
        best_epoch=int(run.evaluator.state.best_metric_epoch),
        epochs=int(run.trainer.state.epoch),
        history=recorder.history,
        config=resolved,
    )
    if tracker is not None:
        finish_run(result, tracker, val_ds[0], config)
    return result


def _attach_handlers(
    config: TrainConfig, run: _Run, rank: int, world: int, started: float
) -> EpochStatistics | TimeBudget:
    """Statistics, progress bar, validation, time budget, in the order ignite must run them; returns
    the budget when there is one, else the statistics."""
    statistics = EpochStatistics(run.optimizer, world)
    statistics.attach(run.trainer)
    schedule = LrScheduleHandler(run.scheduler, print_lr=False)
    if config.time_budget is None:  # stepped before validation, so the checkpoint has the next lr
        schedule.attach(run.trainer)
    if rank == 0:
        run.trainer.add_event_handler(Events.EPOCH_STARTED, _log_epoch_start)
    if config.progress and rank == 0:
        ProgressBar(persist=False).attach(
            run.trainer, output_transform=lambda out: {"loss": out["loss"].item()}
        )
    ValidationHandler(validator=run.evaluator, interval=config.val_every, epoch_level=True).attach(
        run.trainer
    )
    budget = None
    if config.time_budget is not None:
        budget = TimeBudget(config.time_budget, started, statistics, run.scheduler, config.val_every, world)
        budget.attach(run.trainer, run.evaluator)
        schedule.attach(run.trainer)  # after the budget has set the schedule's length
    validate_at_the_end(run.trainer, run.evaluator)
    return budget or statistics


def _epoch_cases(config: TrainConfig, cases: int) -> int:
    """Cases one epoch draws: every case once, and for a time-budgeted run enough shuffled passes to make
    :data:`BUDGET_EPOCH_STEPS` steps (as nnU-Net fixes an epoch at 250 steps): with a handful of cases
    (DRIVE: 12 steps) the first validations came after too few steps to find the smaller class, and
    each epoch's validation and loader restart took a large share of the budget."""
    if config.time_budget is None:
        return cases
    passes = -(-BUDGET_EPOCH_STEPS * config.batch_size // cases)  # ceiling division: at least one pass
    return passes * cases


def _log_epoch_start(engine: Engine) -> None:
    logger.info("epoch %d/%d started", engine.state.epoch, engine.state.max_epochs)


def _write_config(output: Path, resolved: dict[str, Any], tracker: RunTracker | None) -> None:
    """Write the resolved config beside the checkpoints (and log it to MLflow when tracking)."""
    with atomic_output(output / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True))
    if tracker is not None:
        tracker.log_config(resolved)
