"""Find the cases of a dataset, split them reproducibly and wrap them in MONAI's (cached) datasets.

:func:`discover_dataset` recognises these layouts:

- a Medical Segmentation Decathlon folder: ``dataset.json`` (``labels``, ``modality``, ``training``),
  ``imagesTr/``, ``labelsTr/``, one (4D for several channels) image per case;
- nnU-Net's raw layout, v2 (``dataset.json`` with ``channel_names``, ``labels`` as ``{"name": value}``,
  ``numTraining``, ``file_ending``; no case list) and v1 (MSD's ``dataset.json`` whose ``training``
  entries name ``CASE.nii.gz`` while ``imagesTr/`` holds ``CASE_0000.nii.gz`` ...): one file per channel,
  ``imagesTr/CASE_XXXX<file_ending>``, grouped per case into one multi-channel image in suffix order,
  ``labelsTr/CASE<file_ending>``, unlabelled ``imagesTs/`` grouped the same way;
- a folder with an image folder and a label folder (see ``IMAGE_FOLDERS`` and ``LABEL_FOLDERS``:
  ``imagesTr``/``images``/``input``/... and ``labelsTr``/``labels``/``masks``/...), volumes matched by
  case name; images named ``CASE_0000``, ``CASE_0001`` ... beside a label ``CASE`` are one case's
  channels, as in nnU-Net's layout;
- a CSV file with an ``image`` and a ``label`` column (paths relative to the CSV's folder or absolute);
  several image columns (``image_flair``, ``image_t1c`` ...: every column whose name starts with
  ``image``) are one case's channels, in column order;
- DICOM: the image folder holds one DICOM series folder per case (``images/case1/``) and the label
  folder a DICOM SEG (``labels/case1.dcm``) or a label volume per case, named after the series folder;
  a CSV may also pair series folders with DICOM SEG files. A SEG label is read onto its image's series
  (:class:`~attnunet.transforms.loading.LoadImageLabeld`), so its image must be that series' folder;
- the same two-folder layout with 2D PNG/TIFF/JPEG/BMP/GIF images and masks, an
  ``{'input', 'label'}`` dataset, loaded under the keys ``image``/``label`` (a mask may add ``_mask``,
  ``_seg``, ``_label`` or ``_gt`` to the image's name, or share only its leading token: DRIVE's
  ``21_training.tif`` and ``1st_manual/21_manual1.gif``); a ``mask/`` or ``fov/`` folder beside a
  different label folder holds field-of-view masks (DRIVE's ``mask/21_training_mask.gif``), given as
  ``item["fov"]``.

Class names come from ``dataset.json``; nnU-Net v2's regions there (``labels`` entries that list several
values, with ``regions_class_order``) are kept as :class:`~attnunet.regions.Regions`, their label values
named after a region of that one value or ``class_<k>``. Otherwise a DICOM SEG label's values are its
segment numbers and its classes are named after its segments (the same number must have the same name in
every SEG), other volumes get ``class_<k>`` for each value found in the labels, and 2D masks are binary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset, load_decathlon_datalist
from monai.utils import look_up_option

from attnunet.pipelines.data.files import CHANNEL_SUFFIX, case_name, channel_groups, match_by_leading_token
from attnunet.pipelines.data.label_classes import classes_from_labels
from attnunet.pipelines.data.validation import DataValidationError
from attnunet.regions import Regions
from attnunet.transforms.dicom_series import subfolders
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES
from attnunet.transforms.headers import read_header

__all__ = [
    "DatasetIndex",
    "discover_dataset",
    "split_items",
    "make_dataset",
    "CACHE_MODES",
    "cache_memory_bytes",
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
            unlabelled cases), in a stable order; ``image`` is a list of paths, one per channel, for
            a case stored as one file per channel (MONAI's ``LoadImaged`` stacks them as channels).
        labels: class index (as str) -> class name, background at ``"0"``.
        modality: the declared channel names joined by ``+`` (``"CT"``, ``"bSSFP+LGE+T2"``),
            ``"image2d"`` for 2D images, ``""`` if unknown.
        root: the dataset folder (the CSV's folder for a CSV).
        layout: ``"msd"``, ``"nnunet"``, ``"pairs"`` (DICOM series folders included), ``"csv"`` or
            ``"image2d"``.
        test_items: unlabelled test cases (``{"image": ...}``) an MSD ``dataset.json`` lists or an
            nnU-Net ``imagesTs/`` holds.
        regions: the regions its ``dataset.json`` declares (nnU-Net's region-based training), else None;
            ``labels`` then names every value 0 .. the largest a region names.
    """

    items: list[dict[str, Any]]
    labels: dict[str, str]
    modality: str
    root: Path
    layout: str = "pairs"
    test_items: list[dict[str, Any]] = field(default_factory=list)
    regions: Regions | None = None


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
        return _from_description(path)
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
    for name, image in _image_cases(images, labels_by_name, is_2d):
        candidates = [name + s for s in MASK_SUFFIXES] if is_2d else [name]
        label = next((labels_by_name[c] for c in candidates if c in labels_by_name), None)
        if label is None and is_2d:
            label = match_by_leading_token(name, labels_by_name)
        if label is None:
            raise DataValidationError(
                f"image {image} has no label in {label_dir} (looked for {', '.join(candidates)} with an "
                "image extension); add it or move the image out of the training folder"
            )
        item = {"image": image, "label": str(label)}
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


def _image_cases(
    images: Sequence[Path], labels_by_name: dict[str, Path], is_2d: bool
) -> list[tuple[str, str | list[str]]]:
    """``(case name, image entry)`` per case: one per file, or, where every volume is named ``CASE_XXXX``
    and the labels are named ``CASE`` (nnU-Net's channel files), one per group of channel files."""
    names = [path.stem if is_2d else case_name(path) for path in images]
    suffixed = not is_2d and all(CHANNEL_SUFFIX.fullmatch(name) for name in names)
    if suffixed and not all(name in labels_by_name for name in names):
        try:
            groups = channel_groups(images)
        except ValueError as error:
            raise DataValidationError(str(error)) from None
        return [(case, _channel_image(files)) for case, files in groups.items()]
    return [(name, str(path)) for name, path in zip(names, images, strict=True)]


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


def _channel_image(files: Sequence[Path]) -> str | list[str]:
    """A case's ``image`` entry: its one file, or its channel files in channel order."""
    paths = [str(f) for f in files]
    return paths[0] if len(paths) == 1 else paths


def _class_names(description_file: Path, raw_labels: dict) -> dict[str, str]:
    """Class index (as str) -> name, from MSD's ``{"0": "background"}`` or nnU-Net v2's
    ``{"background": 0}`` (a one-value list ``[1]`` is that value, as nnU-Net reads it)."""
    raw_labels = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in raw_labels.items()}
    try:
        if all(isinstance(v, int) for v in raw_labels.values()):
            return {str(v): str(k) for k, v in sorted(raw_labels.items(), key=lambda kv: kv[1])}
        return {str(int(k)): str(v) for k, v in sorted(raw_labels.items(), key=lambda kv: int(kv[0]))}
    except (TypeError, ValueError):
        raise DataValidationError(
            f'{description_file}: \'labels\' must be {{"0": "background", ...}} (MSD) or '
            f'{{"background": 0, ...}} (nnU-Net v2), got {raw_labels!r}'
        ) from None


def _regions(description_file: Path, description: dict) -> Regions | None:
    """nnU-Net v2's regions: every non-background ``labels`` entry, in the file's order, when one of them
    lists several label values; None for plain labels."""
    raw = description["labels"]
    if not any(isinstance(value, list) and len(value) > 1 for value in raw.values()):
        return None
    entries = {name: value if isinstance(value, list) else [value] for name, value in raw.items()}
    if not all(type(v) is int and v >= 0 for values in entries.values() for v in values):
        raise DataValidationError(
            f"{description_file}: region labels must be label values or lists of them "
            f'({{"background": 0, "whole_tumor": [1, 2, 3], "enhancing_tumor": 3}}), got {raw!r}'
        )
    foreground = {name: values for name, values in entries.items() if values != [0]}
    order = description.get("regions_class_order")
    if order is None:
        raise DataValidationError(
            f"{description_file}: labels {list(foreground)} are regions (lists of label values); add "
            f"'regions_class_order', the label value written for each of them in that order (nnU-Net's "
            "BraTS: [1, 2, 3])"
        )
    if not isinstance(order, list) or len(order) != len(foreground) or any(type(v) is not int for v in order):
        raise DataValidationError(
            f"{description_file}: 'regions_class_order' must list one label value per region "
            f"({len(foreground)}: {', '.join(foreground)}), got {order!r}"
        )
    return Regions(tuple(foreground), tuple(tuple(values) for values in foreground.values()), tuple(order))


def _region_label_names(raw_labels: dict, regions: Regions) -> dict[str, str]:
    """Every label value a region dataset's cases may hold, named after the region of that one value, the
    background entry, or ``class_<k>`` (value 1 of BraTS's nested regions is whole tumour minus core)."""
    named = {
        region[0]: name
        for name, region in zip(regions.names, regions.values, strict=True)
        if len(region) == 1
    }
    named[0] = next((name for name, value in raw_labels.items() if value in (0, [0])), "background")
    return {str(v): named.get(v, f"class_{v}") for v in range(regions.num_classes)}


def _description(description_file: Path) -> dict:
    """A ``dataset.json``'s content, with a ``labels`` mapping."""
    try:
        description = json.loads(description_file.read_text())
    except ValueError as error:
        raise DataValidationError(f"{description_file} is not JSON: {error}") from None
    if not isinstance(description, dict) or "labels" not in description:
        raise DataValidationError(
            f"{description_file} has no 'labels'; an MSD dataset.json has 'labels', 'modality' and "
            "'training', an nnU-Net v2 one 'labels', 'channel_names', 'numTraining' and 'file_ending'"
        )
    if not isinstance(description["labels"], dict) or not description["labels"]:
        raise DataValidationError(
            f"{description_file}: 'labels' must map class values to names, got {description['labels']!r}"
        )
    return description


def _from_description(root: Path) -> DatasetIndex:
    """An MSD, nnU-Net v1 or nnU-Net v2 folder, told apart by its ``dataset.json``."""
    description_file = root / "dataset.json"
    description = _description(description_file)
    regions = _regions(description_file, description)
    if regions is None:
        labels = _class_names(description_file, description["labels"])
    else:
        labels = _region_label_names(description["labels"], regions)
    declared = description.get("channel_names") or description.get("modality") or {}
    try:
        channels = [str(declared[k]) for k in sorted(declared, key=int)]
    except (TypeError, ValueError, AttributeError):
        raise DataValidationError(
            f'{description_file}: channels must map channel numbers to names ({{"0": "T1", "1": "T2"}}), got '
            f"{declared!r}"
        ) from None
    if "training" in description:
        index = _from_msd(root, description, labels, channels)
    elif not channels:
        raise DataValidationError(
            f"{description_file} has no 'training' list (MSD) and no 'channel_names' (nnU-Net v2); add "
            "the one its layout needs"
        )
    else:
        index = _from_nnunet(root, description, labels, channels)
    index.regions = regions
    return index


def _from_msd(root: Path, description: dict, labels: dict[str, str], channels: list[str]) -> DatasetIndex:
    description_file = root / "dataset.json"
    training = description["training"]
    if not isinstance(training, list):
        raise DataValidationError(f"{description_file}: 'training' must be a list of cases, got {training!r}")
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
        {key: _resolved(case[key]) for key in ("image", "label") if entry.get(key)}
        for entry, case in zip(training, loaded, strict=True)
    ]
    tests = description.get("test") or []
    loaded = load_decathlon_datalist(description_file, True, "test", root) if tests else []
    test_items = [{"image": _resolved(case["image"])} for case in loaded]
    # nnU-Net v1 lists imagesTr/CASE.nii.gz where the folder holds CASE_0000.nii.gz, CASE_0001.nii.gz ...
    for item in (*items, *test_items):
        if isinstance(item["image"], str):
            item["image"] = _v1_channels(Path(item["image"]), len(channels) or None)
    modality = "+".join(channels)
    return DatasetIndex(items, labels, modality, root, layout="msd", test_items=test_items)


def _resolved(path: str | list[str]) -> str | list[str]:
    """An absolute path, or a list of them (a case's channel files listed in a ``dataset.json``)."""
    return [str(Path(p).resolve()) for p in path] if isinstance(path, list) else str(Path(path).resolve())


def _v1_channels(image: Path, channels: int | None) -> str | list[str]:
    """``image`` itself, or, where only nnU-Net v1's channel files ``CASE_XXXX`` exist, those files."""
    name = case_name(image)
    first = image.with_name(f"{name}_0000{image.name[len(name) :]}")
    if image.exists() or not first.exists():
        return str(image)  # a missing file is reported by the validation, with the others
    own = [
        p
        for p in image.parent.iterdir()
        if (match := CHANNEL_SUFFIX.fullmatch(case_name(p))) is not None and match[1] == name
    ]
    try:
        files = channel_groups(own, channels)[name]
    except ValueError as error:
        raise DataValidationError(str(error)) from None
    return _channel_image(files)


def _grouped(folder: Path, ending: str, channels: int) -> dict[str, list[Path]]:
    try:
        return channel_groups(_files(folder, (ending.lower(),)), channels)
    except ValueError as error:
        raise DataValidationError(str(error)) from None


def _from_nnunet(root: Path, description: dict, labels: dict[str, str], channels: list[str]) -> DatasetIndex:
    """nnU-Net v2's raw layout: ``imagesTr/CASE_XXXX<file_ending>``, ``labelsTr/CASE<file_ending>``."""
    description_file = root / "dataset.json"
    ending = str(description.get("file_ending", ".nii.gz"))
    image_dir, label_dir = root / "imagesTr", root / "labelsTr"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataValidationError(
                f"{folder} does not exist; nnU-Net's layout keeps the training cases there"
            )
    groups = _grouped(image_dir, ending, len(channels))
    groups = {case: [f.resolve() for f in files] for case, files in groups.items()}
    labelled = {p.name[: -len(ending)]: p for p in _files(label_dir, (ending.lower(),))}
    for case in sorted(set(groups) - set(labelled)):
        raise DataValidationError(
            f"case {case}: {groups[case][0]} has no label {label_dir / (case + ending)}; add it or move the "
            "case's channel files out of imagesTr"
        )
    for case in sorted(set(labelled) - set(groups)):
        raise DataValidationError(
            f"label {labelled[case]} has no image {image_dir / f'{case}_0000{ending}'}; add the case's "
            "channel files or remove the label"
        )
    if not labelled:
        raise DataValidationError(f"{label_dir} holds no {ending} labels; add the training cases")
    declared = description.get("numTraining")
    if declared is not None and declared != len(labelled):
        raise DataValidationError(
            f"{description_file}: numTraining is {declared} but {label_dir} holds {len(labelled)} labelled "
            "cases; correct numTraining or add the missing cases"
        )
    items = [
        {"image": _channel_image(groups[c]), "label": str(labelled[c].resolve())} for c in sorted(labelled)
    ]
    tests_dir = root / "imagesTs"
    tests = _grouped(tests_dir, ending, len(channels)) if tests_dir.is_dir() else {}
    test_items = [{"image": _channel_image([f.resolve() for f in tests[c]])} for c in sorted(tests)]
    return DatasetIndex(items, labels, "+".join(channels), root, layout="nnunet", test_items=test_items)


def _from_csv(path: Path) -> DatasetIndex:
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        columns = [c for c in (reader.fieldnames or []) if c.strip().startswith("image")]
    if not rows or not columns:
        raise DataValidationError(
            f"CSV {path} needs a header with an 'image' column (or one per channel: image_t1, image_t2 ...) "
            "and a 'label' column, then one row per case"
        )
    items = []
    for line, row in enumerate(rows, start=2):
        empty = [c for c in columns if not (row.get(c) or "").strip()]
        if empty:
            raise DataValidationError(f"CSV {path}, line {line}: the {empty[0]!r} column is empty")
        channels = [str((path.parent / row[c].strip()).resolve()) for c in columns]
        item: dict[str, Any] = {"image": channels[0] if len(channels) == 1 else channels}
        if row.get("label"):
            item["label"] = str((path.parent / row["label"].strip()).resolve())
        items.append(item)
    is_2d = len(columns) == 1 and all(item["image"].lower().endswith(IMAGE2D_SUFFIXES) for item in items)
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


def cache_memory_bytes(cache_memory_gb: float | None = None) -> int:
    """The RAM the ``"auto"`` cache may fill: ``cache_memory_gb`` GiB, or half of the memory now available.

    Available memory is read with ``os.sysconf`` (no psutil needed); where that is unavailable the
    budget is 2 GiB.
    """
    if cache_memory_gb is not None:
        if cache_memory_gb < 0:
            raise ValueError(f"cache_memory_gb must be >= 0, got {cache_memory_gb}")
        return int(cache_memory_gb * 2**30)
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
    cache_memory_gb: float | None = None,
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
            headers) fits ``cache_memory_gb``, else disk (or none without ``cache_dir``).
        cache_dir: folder of the disk cache (created if missing); needed by ``"disk"``.
        cache_memory_gb: the in-memory budget in GiB; None: half of the memory available now.
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
        needed, budget = _decoded_bytes(items), cache_memory_bytes(cache_memory_gb)
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
