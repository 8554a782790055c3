"""nnU-Net's post-processing rule, chosen on out-of-fold predictions: per foreground class, keep only its
largest connected component when that raises the class's mean Dice over the cases.

Removing a class's other components turns their voxels into background, so each class's Dice with the
rule depends on that class alone, and every class is decided in one pass over the cases (MONAI's
:class:`~monai.transforms.KeepLargestConnectedComponent`, each class on its own).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent, LoadImage

import attnunet.transforms.readers  # noqa: F401  (registers SimpleITKReader: NRRD/MHA labels load too)
from attnunet.pipelines.evaluation.reports import statistics

__all__ = ["LargestComponentChoice", "choose_largest_component", "class_dice"]


@dataclass
class LargestComponentChoice:
    """The classes whose largest component is kept, and each class's Dice per case without and with it
    (NaN where the class is in neither prediction nor label)."""

    classes: list[int]
    dice: dict[int, list[float]]
    dice_largest: dict[int, list[float]]

    def statistics(self, with_rule: bool) -> dict[int, dict[str, float | int | None]]:
        """Mean, std and count of finite values per class, without or with the rule."""
        table = self.dice_largest if with_rule else self.dice
        return {c: statistics(values) for c, values in table.items()}


def class_dice(prediction: np.ndarray, label: np.ndarray, value: int) -> float:
    """Dice of one class value; NaN when it is absent from both (left out of means, as MONAI's metric)."""
    p, t = prediction == value, label == value
    total = int(p.sum()) + int(t.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def choose_largest_component(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], classes: Sequence[int]
) -> LargestComponentChoice:
    """Decide the rule per class from ``(prediction, label)`` files on the same grid.

    Args:
        pairs: each case's predicted and reference label maps.
        classes: the foreground label values to decide for.

    Returns:
        the classes whose mean Dice rises (strictly) with only their largest component kept, and the Dice
        of every case without and with it.
    """
    load = LoadImage(image_only=True)
    keep = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False, independent=True)
    dice: dict[int, list[float]] = {c: [] for c in classes}
    dice_largest: dict[int, list[float]] = {c: [] for c in classes}
    for prediction_file, label_file in pairs:
        label = np.asarray(load(str(label_file))).astype(np.int64)
        prediction = np.asarray(load(str(prediction_file))).astype(np.int64)
        while prediction.ndim > label.ndim and prediction.shape[-1] == 1:
            prediction = prediction[..., 0]  # infer writes a 2D map as (X, Y, 1)
        kept = np.asarray(keep(torch.tensor(prediction)[None])[0])  # a copy: the transform works in place
        for c in classes:
            dice[c].append(class_dice(prediction, label, c))
            dice_largest[c].append(class_dice(kept, label, c))
    chosen = [c for c in classes if _mean(dice_largest[c]) > _mean(dice[c])]
    return LargestComponentChoice(chosen, dice, dice_largest)
