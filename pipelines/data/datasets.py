"""Find the cases of a dataset, split them reproducibly and wrap them in MONAI's (cached) datasets.

:func:`discover_dataset` recognises these layouts:

- a Medical Segmentation Decathlon folder: ``dataset.json`` (``labels``, ``modality``, ``training``),
  ``imagesTr/``, ``labelsTr/``;
- a folder with an image folder and a label folder (see ``IMAGE_FOLDERS`` and ``LABEL_FOLDERS``:
  ``imagesTr``/``images``/``input``/... and ``labelsTr``/``labels``/``masks``/...), volumes matched by
  case name (nnU-Net's ``case_0000.nii.gz`` channel suffix is understood);
- a CSV file with ``image`` and ``label`` columns (paths relative to the CSV's folder or absolute);
- DICOM: the image folder holds one DICOM series folder per case (``images/case1/``) and the label
  folder a DICOM SEG (``labels/case1.dcm``) or a label volume per case, named after the series folder;
  a CSV may also pair series folders with DICOM SEG files. A SEG label is read onto its image's series
  (:class:`~attnunet.transforms.loading.LoadImageLabeld`), so its image must be that series' folder;
- the same two-folder layout with 2D PNG/TIFF/JPEG/BMP/GIF images and masks, the reference document's
  ``{'input', 'label'}`` dataset, loaded under the keys ``image``/``label`` (a mask may add ``_mask``,
  ``_seg``, ``_label`` or ``_gt`` to the image's name, or share only its leading token: DRIVE's
  ``21_training.tif`` and ``1st_manual/21_manual1.gif``); a ``mask/`` or ``fov/`` folder beside a
  different label folder holds field-of-view masks (DRIVE's ``mask/21_training_mask.gif``), given as
  ``item["fov"]``.

Class names come from ``dataset.json``; otherwise a DICOM SEG label's values are its segment numbers and
its classes are named after its segments (the same number must have the same name in every SEG),
other volumes get ``class_<k>`` for each value found in the labels, and 2D masks are binary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset, load_decathlon_datalist
from monai.utils import look_up_option

from attnunet.pipelines.data.files import case_name, match_by_leading_token
from attnunet.pipelines.data.label_classes import classes_from_labels
from attnunet.pipelines.data.validation import DataValidationError
from attnunet.transforms.dicom_series import subfolders
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES
from attnunet.transforms.headers import read_header

__all__ = [
    "DatasetIndex",
    "discover_dataset",
    "split_items",
    "make_dataset",
    "CACHE_MODES",
    "memory_budget_bytes",
]

CACHE_MODES = ("auto", "memory", "disk", "none")
IMAGE_FOLDERS = ("imagesTr", "images", "image", "img", "imgs", "input", "inputs")
# DRIVE's "1st_manual" (the first annotator's vessels) before "mask", which DRIVE uses for its
# field-of-view masks
LABEL_FOLDERS = ("labelsTr", "labels", "label", "1st_manual", "masks", "mask", "segmentations")
FOV_FOLDERS = ("mask", "fov")  # 2D field-of-view masks beside the labels (DRIVE), as item["fov"]
MASK_SUFFIXES = ("", "_mask", "_seg", "_label", "_gt")
BINARY_LABELS = {"0": "background", "1": "foreground"}
_logger = logging.getLogger(__name__)


@dataclass
class DatasetIndex:
    """The cases of a dataset and what is known about them.

    Attributes:
        items: one dict per case, ``{"image": str, "label": str}`` (absolute paths; ``label`` absent for
            unlabelled cases), in a stable order.
        labels: class index (as str) -> class name, background at ``"0"``.
        modality: ``"CT"``, ``"MR"``, ... as declared (MSD), ``"image2d"`` for 2D images, ``""`` if unknown.
        root: the dataset folder (the CSV's folder for a CSV).
        layout: ``"msd"``, ``"pairs"`` (DICOM series folders included), ``"csv"`` or ``"image2d"``.
        test_items: unlabelled test cases an MSD ``dataset.json`` lists (``{"image": str}``).
    """

    items: list[dict[str, str]]
    labels: dict[str, str]
    modality: str
    root: Path
    layout: str = "pairs"
    test_items: list[dict[str, str]] = field(default_factory=list)


def discover_dataset(path: str | os.PathLike) -> DatasetIndex:
    """Index the dataset at ``path`` (an MSD folder, an image/label folder pair, a CSV or 2D images + masks).

    Nothing is decoded except, when no class names are declared, the volume labels (to list their values).
    Check the result with :func:`attnunet.pipelines.data.validation.validate_items` before training.

    Args:
        path: the dataset folder or CSV file.

    Returns:
        A :class:`DatasetIndex`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataValidationError: (a ``ValueError``) the folder is empty or in no known layout, ``dataset.json``
            or the CSV is malformed, or an image has no label.

    Example:
        >>> index = discover_dataset("Task09_Spleen")  # doctest: +SKIP
        >>> index.labels, len(index.items)  # doctest: +SKIP
        ({'0': 'background', '1': 'spleen'}, 41)
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataValidationError(f"{path}: a dataset file must be a CSV with image,label columns")
        return _from_csv(path)
    if (path / "dataset.json").is_file():
        return _from_msd(path)
    if not any(path.iterdir()):
        raise DataValidationError(f"dataset folder {path} is empty; put the images and labels there")
    image_dir = next((path / n for n in IMAGE_FOLDERS if (path / n).is_dir()), None)
    label_dir = next((path / n for n in LABEL_FOLDERS if (path / n).is_dir()), None)
    if image_dir is None or label_dir is None:
        raise DataValidationError(
            f"{path} has no dataset.json and no image/label folder pair (one of {IMAGE_FOLDERS} and one of "
            f"{LABEL_FOLDERS}); see attnunet.pipelines.data.datasets for the layouts understood"
        )
    return _from_pairs(path, image_dir, label_dir)


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
    )


def _from_pairs(root: Path, image_dir: Path, label_dir: Path) -> DatasetIndex:
    volumes, pictures = _files(image_dir, IMAGE_SUFFIXES), _files(image_dir, IMAGE2D_SUFFIXES)
    if not volumes and not pictures and subfolders(image_dir):
        return _from_series(root, image_dir, label_dir)
    if not volumes and not pictures:
        raise DataValidationError(
            f"image folder {image_dir} is empty (no {', '.join(IMAGE_SUFFIXES + IMAGE2D_SUFFIXES)} files, "
            "no DICOM series folders)"
        )
    is_2d = not volumes
    images = pictures if is_2d else volumes
    labels_by_name: dict[str, Path] = {}
    for label in _files(label_dir, IMAGE2D_SUFFIXES if is_2d else IMAGE_SUFFIXES):
        labels_by_name[case_name(label) if not is_2d else label.stem] = label
    fov_dir = next(
        (root / n for n in FOV_FOLDERS if is_2d and (root / n).is_dir() and root / n != label_dir), None
    )
    fovs_by_name = {p.stem: p for p in _files(fov_dir, IMAGE2D_SUFFIXES)} if fov_dir else {}
    items = []
    for image in images:
        name = image.stem if is_2d else case_name(image)
        channel = re.fullmatch(r"(.+)_\d{4}", name)  # nnU-Net's case_0000 (channel 0) -> case
        candidates = (
            [name + s for s in MASK_SUFFIXES] if is_2d else [name] + ([channel[1]] if channel else [])
        )
        label = next((labels_by_name[c] for c in candidates if c in labels_by_name), None)
        if label is None and is_2d:
            label = match_by_leading_token(name, labels_by_name)
        if label is None:
            raise DataValidationError(
                f"image {image} has no label in {label_dir} (looked for {', '.join(candidates)} with an "
                "image extension); add it or move the image out of the training folder"
            )
        item = {"image": str(image), "label": str(label)}
        fov = next((fovs_by_name[c] for c in candidates if c in fovs_by_name), None)
        if fov is None and fovs_by_name:
            fov = match_by_leading_token(name, fovs_by_name)
        if fov_dir is not None and fov is None:
            raise DataValidationError(
                f"image {image} has no field-of-view mask in {fov_dir} (looked for "
                f"{', '.join(candidates)}); add it or remove the folder"
            )
        if fov is not None:
            item["fov"] = str(fov)
        items.append(item)
    if is_2d:
        return DatasetIndex(items, dict(BINARY_LABELS), "image2d", root, layout="image2d")
    return DatasetIndex(items, classes_from_labels(items), "", root, layout="pairs")


def _from_series(root: Path, image_dir: Path, label_dir: Path) -> DatasetIndex:
    """One DICOM series folder per case in ``image_dir``, its label (a SEG or a volume) named after it."""
    labels_by_name = {case_name(label): label for label in _files(label_dir, (*IMAGE_SUFFIXES, ".dcm"))}
    items = []
    for folder in subfolders(image_dir):
        if folder.name not in labels_by_name:
            raise DataValidationError(
                f"series {folder} has no label in {label_dir} (looked for {folder.name}.dcm, a DICOM SEG, or "
                f"{folder.name} with an image extension); add it or move the series out of {image_dir}"
            )
        items.append({"image": str(folder), "label": str(labels_by_name[folder.name])})
    return DatasetIndex(items, classes_from_labels(items), "", root, layout="pairs")


def _from_msd(root: Path) -> DatasetIndex:
    description_file = root / "dataset.json"
    try:
        description = json.loads(description_file.read_text())
        training = description["training"]
        raw_labels = description["labels"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataValidationError(
            f"{description_file} is not an MSD dataset.json (needs 'labels' and 'training'): {error!r}"
        ) from None
    # MSD writes {"0": "background"}; nnU-Net v2 writes {"background": 0}: accept both.
    if all(isinstance(v, int) for v in raw_labels.values()):
        labels = {str(v): str(k) for k, v in sorted(raw_labels.items(), key=lambda kv: kv[1])}
    else:
        labels = {str(k): str(v) for k, v in sorted(raw_labels.items(), key=lambda kv: int(kv[0]))}
    channels = description.get("modality") or description.get("channel_names") or {}
    modality = "+".join(str(channels[k]) for k in sorted(channels, key=int)) if channels else ""
    for position, case in enumerate(training):
        if not isinstance(case, dict) or "image" not in case:
            raise DataValidationError(
                f"{description_file}: training entry {position} has no 'image': {case!r}"
            )
    if not training:
        raise DataValidationError(f"{description_file} lists no training cases")
    # MONAI joins the paths to the folder; resolved as every other layout's paths are.
    loaded = load_decathlon_datalist(description_file, is_segmentation=True, base_dir=root)
    items = [
        {key: str(Path(case[key]).resolve()) for key in ("image", "label") if entry.get(key)}
        for entry, case in zip(training, loaded, strict=True)
    ]
    tests = description.get("test") or []
    loaded = load_decathlon_datalist(description_file, True, "test", root) if tests else []
    test_items = [{"image": str(Path(case["image"]).resolve())} for case in loaded]
    return DatasetIndex(items, labels, modality, root, layout="msd", test_items=test_items)


def _from_csv(path: Path) -> DatasetIndex:
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or "image" not in rows[0]:
        raise DataValidationError(
            f"CSV {path} needs a header with 'image' and 'label' columns, then one row per case"
        )
    items = []
    for line, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise DataValidationError(f"CSV {path}, line {line}: the 'image' column is empty")
        item = {"image": str((path.parent / row["image"].strip()).resolve())}
        if row.get("label"):
            item["label"] = str((path.parent / row["label"].strip()).resolve())
        items.append(item)
    is_2d = all(item["image"].lower().endswith(IMAGE2D_SUFFIXES) for item in items)
    if is_2d:
        return DatasetIndex(items, dict(BINARY_LABELS), "image2d", path.parent, layout="csv")
    return DatasetIndex(items, classes_from_labels(items), "", path.parent, layout="csv")


def split_items(
    items: Sequence[dict], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split cases into training and validation sets, the same way for the same seed and items.

    At least one case goes to each side when ``val_fraction > 0``. Each side keeps the input order.

    Args:
        items: the cases (e.g. ``DatasetIndex.items``).
        val_fraction: share of cases for validation, in [0, 1); 0 gives an empty validation set.
        seed: seed of the shuffle (numpy's PCG64, stable across numpy versions).

    Returns:
        ``(train, val)`` lists.

    Raises:
        ValueError: ``val_fraction`` is outside [0, 1), or there are too few cases to split.

    Example:
        >>> train, val = split_items([{"image": f"{i}.nii.gz"} for i in range(10)], val_fraction=0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(items)
    if val_fraction == 0.0:
        return items, []
    if len(items) < 2:
        raise ValueError(f"{len(items)} case(s) cannot be split into training and validation; add cases")
    n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(items))[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in chosen]
    val = [item for i, item in enumerate(items) if i in chosen]
    return train, val


def memory_budget_bytes(memory_budget_gb: float | None = None) -> int:
    """The cache budget: ``memory_budget_gb`` GiB, or half of the memory now available.

    Available memory is read with ``os.sysconf`` (no psutil needed); where that is unavailable the
    budget is 2 GiB.
    """
    if memory_budget_gb is not None:
        if memory_budget_gb < 0:
            raise ValueError(f"memory_budget_gb must be >= 0, got {memory_budget_gb}")
        return int(memory_budget_gb * 2**30)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


def _decoded_bytes(items: Sequence[dict]) -> int:
    """Float32 size of every image and label, from the headers."""
    return sum(
        read_header(item[key]).nbytes_float32 for item in items for key in ("image", "label") if item.get(key)
    )


def make_dataset(
    items: Sequence[dict],
    transform: Callable,
    *,
    cache: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    memory_budget_gb: float | None = None,
    num_workers: int = 0,
) -> Dataset:
    """Wrap cases in a MONAI dataset, cached in memory or on disk.

    The deterministic head of ``transform`` (up to its first random transform) is cached; the random
    tail runs every epoch.

    Args:
        items: the cases (dicts of paths).
        transform: a MONAI transform chain (e.g. :func:`attnunet.transforms.presets.build_transforms`).
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` in ``cache_dir``),
            ``"none"`` (``Dataset``) or ``"auto"``: memory when the decoded float32 size (from the
            headers) fits ``memory_budget_gb``, else disk (or none without ``cache_dir``).
        cache_dir: folder of the disk cache (created if missing); needed by ``"disk"``.
        memory_budget_gb: the in-memory budget in GiB; None: half of the memory available now.
        num_workers: threads that fill the memory cache (values below 1 mean one).

    Returns:
        A ``monai.data.Dataset`` (or subclass).

    Raises:
        ValueError: unknown ``cache``, or ``"disk"`` without ``cache_dir``.

    Example:
        >>> chain = build_transforms("ct", "val")  # doctest: +SKIP
        >>> dataset = make_dataset(index.items, chain, cache="memory")  # doctest: +SKIP
    """
    cache = look_up_option(cache, CACHE_MODES)
    items = list(items)
    if cache == "auto":
        needed, budget = _decoded_bytes(items), memory_budget_bytes(memory_budget_gb)
        cache = "memory" if needed <= budget else ("disk" if cache_dir is not None else "none")
        _logger.info(
            "cache=auto: %.2f GiB decoded vs %.2f GiB budget -> %s", needed / 2**30, budget / 2**30, cache
        )
        if cache == "none":
            _logger.warning(
                "the dataset does not fit the memory budget and no cache_dir is given: not cached"
            )
    if cache == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=num_workers, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir, the folder to keep the preprocessed cases in")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=Path(cache_dir))
    return Dataset(items, transform)
