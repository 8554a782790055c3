"""Where a cross-validation keeps its folds, declared once for the training that writes them and for the
loading that reads them back as an ensemble."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FOLD_CHECKPOINT", "POSTPROCESSING_FILE", "SPLITS_FILE", "fold_dir", "fold_number"]

SPLITS_FILE = "splits.json"  # nnU-Net's splits_final.json format
POSTPROCESSING_FILE = "postprocessing.json"  # {"largest_component": [label values]}
FOLD_CHECKPOINT = Path("checkpoints") / "best.pt"  # inside a fold's folder
_FOLD_PREFIX = "fold_"


def fold_dir(output: str | os.PathLike, fold: int) -> Path:
    """``OUTPUT/fold_K``, fold ``K``'s training folder."""
    return Path(output) / f"{_FOLD_PREFIX}{fold}"


def fold_number(folder: Path) -> int | None:
    """``K`` of a ``fold_K`` folder; None for any other name.

    Example:
        >>> fold_number(Path("run/fold_3")), fold_number(Path("run/fold_x"))
        (3, None)
    """
    number = folder.name.removeprefix(_FOLD_PREFIX)
    return int(number) if folder.name.startswith(_FOLD_PREFIX) and number.isdigit() else None
