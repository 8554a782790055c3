"""Cross-validation folds as nnU-Net makes and stores them (``splits_final.json``).

A split file is a list with one entry per fold, ``{"train": [case ids], "val": [case ids]}``. Case ids are
nnU-Net's: the case name without the channel suffix and the file ending (``imagesTr/la_003_0000.nii.gz``
-> ``la_003``), so nnU-Net's own ``splits_final.json`` of a dataset can be given to ``attnunet train
--splits`` and ours read by nnU-Net.

Folds are made as nnU-Net's ``generate_crossval_split``: ``KFold(n_splits, shuffle=True,
random_state=12345)`` over the sorted case ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnunet.pipelines.data.files import CHANNEL_SUFFIX, case_name

__all__ = ["SPLIT_SEED", "case_ids", "check_splits", "fold_items", "kfold_splits", "read_splits"]

SPLIT_SEED = 12345  # nnU-Net's seed of its 5-fold split

Split = dict[str, list[str]]


def _item_name(path: str | list[str]) -> str:
    """A case's name from its image (or label) file: nnU-Net's channel suffix dropped for channel files."""
    if isinstance(path, (list, tuple)):
        match = CHANNEL_SUFFIX.fullmatch(case_name(path[0]))
        return match[1] if match else case_name(path[0])
    return case_name(path)


def case_ids(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each case's id, in the items' order: its image's case name, or its label's where two images share
    a name (a CSV of one folder per case with the same file names); else the folder holding the image.

    Raises:
        ValueError: two cases have the same id however named (folds name cases by id).

    Example:
        >>> case_ids([{"image": ["/d/a_0000.nii.gz", "/d/a_0001.nii.gz"]}, {"image": "/d/b.nii.gz"}])
        ['a', 'b']
    """
    namings = (
        lambda item: _item_name(item["image"]),
        lambda item: _item_name(item["label"]) if "label" in item else "",
        lambda item: Path(item["image"][0] if isinstance(item["image"], list) else item["image"]).parent.name,
    )
    for name in namings:
        ids = [name(item) for item in items]
        if all(ids) and len(set(ids)) == len(ids):
            return ids
    first = [_item_name(item["image"]) for item in items]
    twice = sorted({n for n in first if first.count(n) > 1})
    raise ValueError(f"cross-validation names each case, but case name(s) {', '.join(twice[:3])} occur twice")


def kfold_splits(ids: Sequence[str], n_splits: int = 5, seed: int = SPLIT_SEED) -> list[Split]:
    """nnU-Net's folds: ``sklearn.model_selection.KFold(n_splits, shuffle=True, random_state=seed)`` over
    the sorted ids, each side in sorted order.

    scikit-learn is not a dependency: this is KFold's permutation reproduced with numpy (its
    ``RandomState(seed).shuffle`` of ``arange(n)``, then consecutive folds, the first ``n % n_splits`` of
    them one case larger), which gives the same folds as nnU-Net for the same case ids.

    Raises:
        ValueError: fewer cases than folds, or fewer than 2 folds.

    Example:
        >>> [fold["val"] for fold in kfold_splits(["a", "b", "c", "d"], n_splits=2)]
        [['a', 'd'], ['b', 'c']]
    """
    ordered = sorted(ids)
    if n_splits < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_splits}")
    if len(ordered) < n_splits:
        raise ValueError(f"{len(ordered)} cases cannot be split into {n_splits} folds; use fewer folds")
    order = np.arange(len(ordered))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_splits, len(ordered) // n_splits)
    sizes[: len(ordered) % n_splits] += 1
    splits, start = [], 0
    for size in sizes:
        val = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [c for i, c in enumerate(ordered) if i not in val],
                "val": [c for i, c in enumerate(ordered) if i in val],
            }
        )
    return splits


def check_splits(splits: Any, ids: Sequence[str], source: str | os.PathLike) -> list[Split]:
    """``splits`` as a list of folds, checked against the dataset's case ids: every fold a ``train`` and a
    ``val`` list of known cases, no case in both sides of a fold or in two folds' ``val``, every case in
    one ``val``, no empty side.

    Raises:
        ValueError: one line naming ``source`` and the first problem found.
    """
    known = set(ids)

    def refuse(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}")

    if not isinstance(splits, list) or len(splits) < 2:
        raise refuse("expected a list of at least 2 folds, each {'train': [case ids], 'val': [case ids]}")
    checked: list[Split] = []
    validated: dict[str, int] = {}
    for k, fold in enumerate(splits):
        sides = fold if isinstance(fold, dict) else {}
        lists = (
            isinstance(sides.get(s), list) and all(isinstance(c, str) for c in sides[s])
            for s in ("train", "val")
        )
        if not all(lists):
            raise refuse(f"fold {k} is not {{'train': [case ids], 'val': [case ids]}}")
        train, val = list(sides["train"]), list(sides["val"])
        if not train or not val:
            raise refuse(f"fold {k} has no {'training' if not train else 'validation'} case")
        unknown = [c for c in train + val if c not in known]
        if unknown:
            raise refuse(f"fold {k} names {len(unknown)} case(s) the data does not have: {_few(unknown)}")
        both = sorted(set(train) & set(val))
        if both:
            raise refuse(f"fold {k} trains and validates on {_few(both)}")
        for case in val:
            if case in validated:
                raise refuse(f"folds {validated[case]} and {k} overlap: both validate on {case}")
            validated[case] = k
        checked.append({"train": train, "val": val})
    never = [c for c in ids if c not in validated]
    if never:
        raise refuse(f"the folds do not cover the data: no fold validates on {_few(never)}")
    return checked


def read_splits(path: str | os.PathLike, ids: Sequence[str]) -> list[Split]:
    """The checked folds of the split file ``path`` (:func:`check_splits`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not JSON, or a split :func:`check_splits` refuses (one line naming ``path``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        splits = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON split file ({error})") from None
    return check_splits(splits, ids, path)


def fold_items(
    items: Sequence[dict[str, Any]], ids: Sequence[str], split: Split
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, val)`` items of one fold, each in the items' order."""
    train, val = set(split["train"]), set(split["val"])
    return (
        [item for item, case in zip(items, ids, strict=True) if case in train],
        [item for item, case in zip(items, ids, strict=True) if case in val],
    )


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
