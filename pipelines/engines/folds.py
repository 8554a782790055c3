"""The folds of a cross-validation on disk: ``OUTPUT/splits.json`` and one training folder per fold.

``OUTPUT/splits.json`` is written once, in nnU-Net's ``splits_final.json`` format
(:mod:`attnunet.pipelines.data.splits`), and read by every later run into ``OUTPUT``: folds trained by
``attnunet train --fold K`` in separate processes agree on their cases. Fold ``K`` trains into
``OUTPUT/fold_K`` (a normal training folder) and then segments its validation cases into
``OUTPUT/fold_K/validation/<case id>.nii.gz`` by :func:`~attnunet.pipelines.inference.predict.infer`, the
same path ``attnunet infer`` takes; a fold is finished when every one of them is there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnunet.atomic import atomic_output
from attnunet.checkpoints import load_checkpoint
from attnunet.cv_layout import SPLITS_FILE, fold_dir
from attnunet.pipelines.data.files import case_name
from attnunet.pipelines.data.splits import Split, kfold_splits, read_splits
from attnunet.pipelines.engines.checks import CHECKPOINT_DIR, CONFIG_FILE
from attnunet.pipelines.engines.config import TrainConfig
from attnunet.pipelines.inference.predict import infer

__all__ = [
    "DEFAULT_FOLDS",
    "SPLITS_FILE",
    "VALIDATION_DIR",
    "fold_dir",
    "fold_finished",
    "predict_validation",
    "settle_splits",
    "training_finished",
]

logger = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
DEFAULT_FOLDS = 5  # nnU-Net's
PREDICTION_ENDING = ".nii.gz"  # what infer writes


def validation_files(output: str | os.PathLike, fold: int, split: Split) -> dict[str, Path]:
    """Case id -> where fold ``fold`` writes its prediction of that validation case."""
    folder = fold_dir(output, fold) / VALIDATION_DIR
    return {case: folder / f"{case}{PREDICTION_ENDING}" for case in split["val"]}


def fold_finished(output: str | os.PathLike, fold: int, split: Split) -> bool:
    """Whether fold ``fold`` has its best checkpoint and a prediction of each of its validation cases."""
    best = fold_dir(output, fold) / CHECKPOINT_DIR / "best.pt"
    return best.is_file() and all(path.is_file() for path in validation_files(output, fold, split).values())


def training_finished(output: str | os.PathLike, fold: int) -> bool:
    """Whether fold ``fold``'s training ran to its last epoch (its ``last.pt`` is at the epochs its config
    settled on), so that only its validation predictions may be missing."""
    folder = fold_dir(output, fold)
    last, best = folder / CHECKPOINT_DIR / "last.pt", folder / CHECKPOINT_DIR / "best.pt"
    if not (last.is_file() and best.is_file() and (folder / CONFIG_FILE).is_file()):
        return False
    try:
        epochs = int(json.loads((folder / CONFIG_FILE).read_text())["epochs"])
        return int(load_checkpoint(last)["epoch"]) >= epochs
    except (OSError, ValueError, KeyError, TypeError):
        return False


def settle_splits(
    output: str | os.PathLike, ids: Sequence[str], folds: int | None, splits_file: str | None
) -> list[Split]:
    """The folds of ``output``: ``splits_file``'s, else those ``OUTPUT/splits.json`` already holds, else
    nnU-Net's ``folds`` (default 5) over ``ids``; written to ``OUTPUT/splits.json`` when it is new.

    Raises:
        FileNotFoundError: ``splits_file`` does not exist.
        ValueError: a split file that names unknown cases, whose folds overlap or do not cover the
            cases, that differs from the one ``output`` holds, or whose fold count is not ``folds``.
    """
    saved = Path(output) / SPLITS_FILE
    source: Path | None = Path(splits_file) if splits_file else (saved if saved.is_file() else None)
    if source is None:
        splits = kfold_splits(ids, folds or DEFAULT_FOLDS)
    else:
        splits = read_splits(source, ids)
        if source != saved and saved.is_file() and read_splits(saved, ids) != splits:
            raise ValueError(
                f"{source}: its folds differ from those {saved} holds, which this output's folds were "
                "trained on; choose another --output"
            )
    if folds is not None and len(splits) != folds:
        raise ValueError(f"{source}: holds {len(splits)} folds, not the {folds} of --folds")
    if not saved.is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(saved) as tmp:  # two processes write the same folds: either rename is right
            tmp.write_text(json.dumps(splits, indent=2))
        logger.info("%d folds written to %s", len(splits), saved)
    return splits


def _infer_devices(device: str | None) -> dict[str, str]:
    """``infer``'s devices for the training's ``device`` option."""
    if device is None:
        return {"device": "auto", "sw_device": "auto"}
    if device == "cpu":
        return {"device": "cpu", "sw_device": "cpu"}
    return {"device": "auto", "sw_device": device}


def predict_validation(
    config: TrainConfig,
    split: Split,
    items: Sequence[dict[str, Any]],
    ids: Sequence[str],
    checkpoint: str | os.PathLike,
) -> list[Path]:
    """Segment a fold's validation cases with its ``checkpoint`` as ``attnunet infer`` does, into
    ``validation/<case id>.nii.gz`` in the fold's folder (``config.output``: the fold's options).

    The cases are given to ``infer`` as links named ``<case id>_0000...`` (one per channel file; a DICOM
    series folder as ``<case id>/``), so each prediction is named by its case id whatever the layout
    named its files.
    """
    by_id = dict(zip(ids, items, strict=True))
    folder = Path(config.output) / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cases-", dir=config.output) as links:
        files, series = Path(links) / "files", Path(links) / "series"
        files.mkdir()
        series.mkdir()
        inputs: list[Path] = []
        for case in split["val"]:
            image = by_id[case]["image"]
            channels = image if isinstance(image, list) else [image]
            if Path(channels[0]).is_dir():
                (series / case).symlink_to(Path(channels[0]).resolve(), target_is_directory=True)
                inputs.append(series / case)
                continue
            for c, path in enumerate(channels):
                ending = Path(path).name[len(case_name(path)) :]
                (files / f"{case}_{c:04d}{ending}").symlink_to(Path(path).resolve())
        if any(files.iterdir()):
            inputs.insert(0, files)
        infer(
            [str(path) for path in inputs],
            folder,
            model=str(checkpoint),
            overwrite=True,
            progress=config.progress,
            **_infer_devices(config.device),
        )
    return [folder / f"{case}{PREDICTION_ENDING}" for case in split["val"]]
