"""Ignite handlers of a training run that no MONAI handler provides.

- :class:`EpochStatistics`: the epoch's mean loss (ignite's ``Average``), throughput, learning rate and
  the share of time spent waiting for the loader (ignite's ``Timer``), averaged over DDP ranks.
- :class:`TimeBudget`: re-sizes the number of epochs (and the cosine schedule) after every epoch so the
  run ends in its budget, and ends an epoch early when the budget runs out in it; MONAI's
  ``LrScheduleHandler``, attached after it, steps the schedule.
- :class:`EpochRecorder`: one record per epoch, written to ``metrics.jsonl`` and the checkpoints first and
  only then logged (and sent to MLflow), so a finished epoch is on disk whatever the tracking store does.
  MONAI's
  ``CheckpointSaver`` is not used: it saves ``state_dict``s only, where our checkpoints also carry
  the model spec and the resolved config that rebuild the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from ignite.metrics import Average

from attnunet.atomic import atomic_output
from attnunet.checkpoints import save_checkpoint
from attnunet.pipelines.distributed import all_mean

__all__ = ["EpochRecorder", "EpochStatistics", "TimeBudget", "further_epochs", "validate_at_the_end"]

logger = logging.getLogger(__name__)


class EpochStatistics:
    """Per-epoch ``train_loss`` (ignite's ``Average``, over every rank), ``throughput_samples_per_s``,
    ``lr`` (the epoch's own, read before MONAI's ``LrScheduleHandler`` steps the schedule) and
    ``data_wait_share`` (ignite's ``Timer`` around the loader)."""

    def __init__(self, optimizer: torch.optim.Optimizer, world: int) -> None:
        self.optimizer, self.world = optimizer, world
        self.values: dict[str, float] = {}
        self.started = 0.0
        self._samples = 0
        self._loss = Average(output_transform=lambda output: output["loss"].detach())
        self._data_timer = Timer(average=False)  # time waiting for batches from the loader

    def attach(self, trainer: Engine) -> None:
        self._data_timer.attach(
            trainer,
            start=Events.EPOCH_STARTED,
            resume=Events.GET_BATCH_STARTED,
            pause=Events.GET_BATCH_COMPLETED,
        )
        self._loss.attach(trainer, "train_loss")  # computed at the epoch's end, before _finish reads it
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _start(self, _: Engine) -> None:
        self.started = time.perf_counter()
        self._samples = 0

    def _count(self, engine: Engine) -> None:
        self._samples += int(engine.state.output["image"].shape[0])

    def _finish(self, engine: Engine) -> None:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.values = {
            "train_loss": float(engine.state.metrics["train_loss"]),
            "lr": self.optimizer.param_groups[0]["lr"],
            "throughput_samples_per_s": all_mean(self._samples, self.world) * self.world / seconds,
            "data_wait_share": all_mean(self._data_timer.value() / seconds, self.world),
        }


def validate_at_the_end(trainer: Engine, evaluator: Engine) -> None:
    """Validate after the last epoch when ``ValidationHandler``'s interval skipped it."""

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and evaluator.state.epoch != epoch:
            evaluator.run(epoch)


def further_epochs(
    budget_seconds: float,
    spent: float,
    epoch_seconds: Sequence[float],
    validation_seconds: float,
    val_every: int,
) -> int:
    """How many more epochs end within ``budget_seconds``.

    ``spent`` seconds have passed (setup and the epochs run so far, with their validations); every
    further epoch costs the median of the last three ``epoch_seconds`` (the epochs' own times, oldest
    first: one slow epoch, other work for a moment, does not swing the choice; a lasting change moves
    it within two epochs) plus a validation every ``val_every`` epochs. Kept in reserve: one more
    validation (after the last epoch), the same again for logging the model, and 5% of the budget for
    the jitter of the epoch time.

    Example:
        >>> further_epochs(600, spent=70, epoch_seconds=[50], validation_seconds=10, val_every=1)
        8
        >>> further_epochs(600, spent=190, epoch_seconds=[50, 50, 150], validation_seconds=10, val_every=1)
        6
    """
    reserve = 2 * validation_seconds + 0.05 * budget_seconds
    per_epoch = max(median(epoch_seconds[-3:]) + validation_seconds / val_every, 1e-6)
    return max(0, int((budget_seconds - spent - reserve) // per_epoch))


class TimeBudget:
    """Sets the trainer's ``max_epochs`` (and the cosine schedule's length) after every epoch; MONAI's
    ``LrScheduleHandler``, attached after it, then steps the schedule along the new length.

    Sized by :func:`further_epochs` from the epochs' own times (the median of the last three); the mean
    over ranks keeps DDP in step. ``choice`` records what it chose.

    An epoch still running when only the last validation's time is left (a budget shorter than one epoch,
    or setup that took it all) ends after its current step, with a warning: it is then validated and
    checkpointed as the run's last, instead of running its remaining steps past the budget.
    """

    def __init__(
        self,
        minutes: float,
        started: float,
        statistics: EpochStatistics,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        val_every: int,
        world: int,
    ) -> None:
        self.budget_seconds, self.started = 60 * minutes, started
        self.statistics, self.scheduler = statistics, scheduler
        self.val_every, self.world = val_every, world
        self.choice: dict[str, float] = {}
        self._validation_started, self._validation_seconds = 0.0, 0.0
        self._epoch_seconds: list[float] = []

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.STARTED, self._start_validation)
        evaluator.add_event_handler(Events.COMPLETED, self._finish_validation)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_spent)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._validate_first, evaluator)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._resize, evaluator)

    def _stop_when_spent(self, trainer: Engine) -> None:
        """End the epoch after this step when the budget, less one validation, is spent (on every rank)."""
        spent = time.perf_counter() - self.started + self._validation_seconds
        if all_mean(float(spent >= self.budget_seconds), self.world) == 0.0:
            return
        state = trainer.state
        step, steps = state.iteration - (state.epoch - 1) * state.epoch_length, state.epoch_length
        logger.warning(
            "time budget %.2f min spent in epoch %d after %d of its %d steps: the run ends with this epoch, "
            "validated and checkpointed; give a larger --time-budget to train longer",
            self.budget_seconds / 60, state.epoch, step, steps,
        )  # fmt: skip
        trainer.terminate_epoch()

    def _validate_first(self, trainer: Engine, evaluator: Engine) -> None:
        """Validate after epoch 1 when the interval skips it: the first choice counts a validation's time."""
        if trainer.state.epoch == 1 and evaluator.state.epoch != 1:
            evaluator.run(1)

    def _start_validation(self, _: Engine) -> None:
        self._validation_started = time.perf_counter()

    def _finish_validation(self, _: Engine) -> None:
        self._validation_seconds = time.perf_counter() - self._validation_started

    def _resize(self, trainer: Engine, evaluator: Engine) -> None:
        now, epoch, validation = time.perf_counter(), trainer.state.epoch, self._validation_seconds
        validated = evaluator.state.epoch == epoch
        self._epoch_seconds.append(now - self.statistics.started - (validation if validated else 0.0))
        more = further_epochs(
            self.budget_seconds, now - self.started, self._epoch_seconds, validation, self.val_every
        )
        epochs = epoch + int(all_mean(float(more), self.world))
        trainer.state.max_epochs = epochs
        if isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = epochs  # anneals to 0 at the chosen last epoch
        if epoch == 1:
            logger.info(
                "time budget %.1f min: setup and epoch 1 took %.0f s (validation %.0f s) -> %d epochs",
                self.budget_seconds / 60, now - self.started, validation, epochs,
            )  # fmt: skip
        self.choice.update(
            epochs=epochs,
            epoch_steps=trainer.state.epoch_length,
            first_epoch_seconds=self.choice.get("first_epoch_seconds", round(now - self.started, 3)),
            epoch_seconds=round(median(self._epoch_seconds[-3:]), 3),
            validation_seconds=round(validation, 3),
        )


class EpochRecorder:
    """After each epoch (and its validation): the record into ``history`` and ``metrics_file``, ``best.pt``
    when the key metric improved and ``last.pt`` always, then the log line and ``log_metrics(record, step)``.

    The metrics file (one JSON record per line, rewritten atomically) comes before the checkpoints: a crash
    between the two leaves a record of an epoch whose checkpoint is missing, which a resume drops and
    writes again, rather than a checkpointed epoch without its record.

    Args:
        checkpoint: called with no argument, returns the checkpoint dict of this moment (weights, spec,
            config, optimiser...); ``best.pt`` drops the resume-only keys.
        class_names: foreground class names, in the order of the evaluator's per-class Dice.
        metrics_file: the run's ``metrics.jsonl``.
        resumed_epoch: the epoch a resumed run continues after: the file's records up to it are kept,
            later ones (written before a crash lost their checkpoint) dropped; 0 for a new run.
        log_metrics: where the records go after the checkpoint is on disk (MLflow), or None.
        rank: only rank 0 writes and logs.
    """

    RESUME_ONLY = ("optimizer", "scheduler", "scaler", "mlflow_run_id")

    def __init__(
        self,
        folder: Path,
        checkpoint: Callable[[], dict[str, Any]],
        statistics: EpochStatistics,
        class_names: Sequence[str],
        *,
        metrics_file: Path,
        resumed_epoch: int,
        log_metrics: Callable[[dict[str, float], int], None] | None,
        rank: int,
        budgeted: bool,
    ) -> None:
        self.best_path, self.last_path = folder / "best.pt", folder / "last.pt"
        self.checkpoint, self.statistics, self.class_names = checkpoint, statistics, list(class_names)
        self.metrics_file, self.log_metrics = metrics_file, log_metrics
        self.rank, self.budgeted = rank, budgeted
        self.history: list[dict[str, float]] = []
        self._records = _records_until(metrics_file, resumed_epoch) if rank == 0 else []

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        # after validation: ignite runs an event's handlers in the order they were added
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._record, evaluator)

    def _record(self, trainer: Engine, evaluator: Engine) -> None:
        epoch = trainer.state.epoch
        record: dict[str, float] = {"epoch": epoch, **self.statistics.values}
        if self.budgeted:  # the budget's current choice, as a metric per epoch
            record["planned_epochs"] = trainer.state.max_epochs
        validated = evaluator.state.epoch == epoch
        if validated:
            metrics = evaluator.state.metrics
            record.update(val_loss=float(metrics["val_loss"]), val_mean_dice=float(metrics["val_mean_dice"]))
            per_class = torch.as_tensor(metrics["val_dice"]).flatten().tolist()
            record.update(
                {f"val_dice_{n}": float(v) for n, v in zip(self.class_names, per_class, strict=True)}
            )
        self.history.append(record)
        if self.rank != 0:
            return
        self._records.append(record)
        with atomic_output(self.metrics_file) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self._records))
        checkpoint = self.checkpoint()
        # Not ignite's Checkpoint + DiskSaver(atomic=True): saving again under a fixed name (last.pt, best.pt
        # through filename_pattern="{name}.{ext}") first unlinks the previous file and only then writes, so a
        # crash in between leaves no checkpoint to resume from; and it saves objects' state_dict()s, not a
        # dict like this one (format, spec, config) that load_checkpoint checks.
        if validated and evaluator.state.best_metric_epoch == epoch:
            save_checkpoint(
                self.best_path, {k: v for k, v in checkpoint.items() if k not in self.RESUME_ONLY}
            )
        save_checkpoint(self.last_path, checkpoint)
        logger.info(
            "epoch %d: %s", epoch, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        )
        if self.log_metrics is not None:
            self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, epoch)


def _records_until(path: Path, epoch: int) -> list[dict[str, float]]:
    """The records of ``path`` up to ``epoch`` (none for a new run, ``epoch`` 0)."""
    if epoch == 0 or not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {number} is not a JSON record ({error}); move the file away to resume"
            ) from None
        if record["epoch"] <= epoch:
            records.append(record)
    return records
