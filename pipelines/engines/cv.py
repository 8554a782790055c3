"""Cross-validation as nnU-Net does it: :func:`cross_validate` (``attnunet train --folds N`` or
``--fold K``).

Every fold trains in turn into ``OUTPUT/fold_K`` (:mod:`attnunet.pipelines.engines.folds`), its split's
``val`` cases its validation set, as a child MLflow run of one parent run per output folder
(:mod:`attnunet.pipelines.tracking.cv_run`); then it segments those cases. A fold that fails is logged and
its run marked FAILED, and the others go on; the end summarises the finished folds
(:func:`~attnunet.pipelines.engines.cv_summary.summarise_folds`) and names the missing ones. ``--fold K``
trains that fold alone (folds spread over machines, ``attnunet cv OUTPUT`` summarises them).

A time budget covers all the folds this call trains: each fold gets an equal share of what is left when it
starts, so time a fold spends beyond its share (its validation predictions) comes out of the later ones.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.splits import case_ids
from attnunet.pipelines.engines.checks import CHECKPOINT_DIR
from attnunet.pipelines.engines.config import TrainConfig, TrainResult
from attnunet.pipelines.engines.cv_summary import CVSummary, summarise_folds
from attnunet.pipelines.engines.folds import (
    SPLITS_FILE,
    fold_dir,
    fold_finished,
    predict_validation,
    settle_splits,
    training_finished,
)
from attnunet.pipelines.tracking.cv_run import mark_run, open_parent_run

__all__ = ["CVResult", "cross_validate"]

logger = logging.getLogger(__name__)

SHORTEST_SHARE_MINUTES = 1 / 60  # a fold whose share is used up still runs one (short) epoch


@dataclass
class CVResult:
    """What :func:`cross_validate` did.

    Attributes:
        output: the cross-validation's folder.
        trained: fold -> its training result, for the folds this call trained.
        failed: fold -> the error's first line, for the folds that failed.
        skipped: folds already finished before this call.
        predicted: folds whose training had finished before this call, segmented now.
        summary: the summary of every finished fold (None for ``--fold K``: ``attnunet cv`` makes it).
        run_id: the parent MLflow run (None without tracking).
    """

    output: Path
    trained: dict[int, TrainResult] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    summary: CVSummary | None = None
    run_id: str | None = None


def _share(config: TrainConfig, started: float, folds_left: int) -> float | None:
    """This fold's minutes of the time budget: an equal share of what is left."""
    if config.time_budget is None:
        return None
    left = config.time_budget - (time.monotonic() - started) / 60
    return max(left / folds_left, SHORTEST_SHARE_MINUTES)


def _fold_config(config: TrainConfig, fold: int, folds: int, budget: float | None) -> TrainConfig:
    """The options of fold ``fold``: its folder, its share of the budget, resumed only where it has a run."""
    folder = fold_dir(config.output, fold)
    return dataclasses.replace(
        config,
        output=str(folder),
        fold=fold,
        folds=folds,
        splits=str(Path(config.output) / SPLITS_FILE),
        time_budget=budget,
        resume=config.resume and (folder / CHECKPOINT_DIR / "last.pt").is_file(),
        run_name=f"{config.run_name or Path(config.output).name}-fold_{fold}",
    )


def cross_validate(config: TrainConfig) -> CVResult:
    """Train the folds ``config`` asks for (all with ``folds``, one with ``fold``) and, for all of them,
    summarise the finished ones.

    Folds already finished in ``OUTPUT`` are kept, not trained again (a second ``--folds N`` run trains the
    missing ones). With ``fold``, the fold's error is the call's; with ``folds``, a failed fold is listed
    in :attr:`CVResult.failed` and the others go on.

    Raises:
        FileNotFoundError: ``data`` or ``splits`` does not exist.
        ValueError: a bad split file (named), fewer cases than folds, or a fold outside the split.
        ConnectionError: the MLflow store cannot be reached when the parent run starts.
    """
    started = time.monotonic()
    if config.register:
        raise ValueError(
            f"--register {config.register}: a cross-validation trains one model per fold; register one "
            "fold's run, or the folds' ensemble (attnunet.pipelines.inference.mlflow_model)"
        )
    if not Path(config.data).exists():
        raise FileNotFoundError(f"--data {config.data} does not exist")
    output = Path(config.output)
    items = discover_dataset(config.data).items
    ids = case_ids(items)
    splits = settle_splits(output, ids, config.folds, config.splits)
    if config.fold is not None and config.fold >= len(splits):
        raise ValueError(f"--fold {config.fold}: {output / SPLITS_FILE} holds folds 0 .. {len(splits) - 1}")
    result = CVResult(output)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if config.track and rank0:
        result.run_id = open_parent_run(
            output, config.tracking_uri, experiment=config.experiment, run_name=config.run_name,
            artifact_location=config.artifact_location,
            params={"cv.folds": len(splits), "cv.splits": str(output / SPLITS_FILE), "data": config.data},
        )  # fmt: skip
    todo = [config.fold] if config.fold is not None else list(range(len(splits)))
    for position, k in enumerate(todo):
        if fold_finished(output, k, splits[k]):
            logger.info("fold %d is finished in %s; kept", k, fold_dir(output, k))
            result.skipped.append(k)
            continue
        fold_config = _fold_config(config, k, len(splits), _share(config, started, len(todo) - position))
        logger.info("fold %d of %d: %d training, %d validation cases", k, len(splits),
                    len(splits[k]["train"]), len(splits[k]["val"]))  # fmt: skip
        trained = None
        try:
            if training_finished(output, k):  # stopped while segmenting its validation cases
                best = fold_dir(output, k) / CHECKPOINT_DIR / "best.pt"
                predict_validation(fold_config, splits[k], items, ids, best)
                result.predicted.append(k)
                continue
            trained = _train_fold(fold_config, splits[k], result.run_id)
            predict_validation(fold_config, splits[k], items, ids, trained.best_checkpoint)
        except Exception as error:
            if trained is not None and trained.run_id is not None:  # its training ended the run FINISHED
                mark_run(trained.tracking_uri, trained.run_id, "FAILED")
            if config.fold is not None:
                raise
            result.failed[k] = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.error("fold %d failed: %s; the other folds go on", k, result.failed[k])
            continue
        result.trained[k] = trained
    if config.fold is None and rank0:
        result.summary = summarise_folds(output, progress=config.progress)
    return result


def _train_fold(config: TrainConfig, split: dict[str, list[str]], parent_run_id: str | None) -> TrainResult:
    from attnunet.pipelines.engines.training import train  # training dispatches here: imported on use

    return train(config, split=split, parent_run_id=parent_run_id)
