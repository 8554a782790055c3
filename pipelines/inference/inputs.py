"""What to segment: image files, folders, DICOM series folders and CSV lists, as named cases."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnunet.pipelines.data.files import CHANNEL_SUFFIX, case_name, channel_groups, list_images
from attnunet.transforms.dicom_series import check_dicom_series, list_dicom_series
from attnunet.transforms.formats import IMAGE_SUFFIXES

__all__ = ["InferenceCase", "discover_inputs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceCase:
    """One scan to segment.

    Attributes:
        name: the case name; outputs are ``<name>.nii.gz``.
        image: an image file, a DICOM series folder, or one file per channel (nnU-Net's
            ``CASE_0000``, ``CASE_0001`` ...), stacked as channels when read.
        series_uid: the DICOM series to read from ``image`` (a folder), else None.
    """

    name: str
    image: str | tuple[str, ...]
    series_uid: str | None = None


def _file_cases(images: Sequence[Path], channels: int) -> list[InferenceCase]:
    """One case per file, or, where every file is named ``CASE_XXXX`` and the model takes several channels
    (or every suffix is ``_0000``), one case per group of channel files, named ``CASE`` as nnU-Net does."""
    names = [case_name(path) for path in images]
    suffixed = all(CHANNEL_SUFFIX.fullmatch(name) for name in names)
    if suffixed and (channels > 1 or all(name.endswith("_0000") for name in names)):
        groups = channel_groups(images, channels)
        return [
            InferenceCase(case, str(files[0]) if len(files) == 1 else tuple(map(str, files)))
            for case, files in groups.items()
        ]
    return [InferenceCase(name, str(path)) for name, path in zip(names, images, strict=True)]


def _folder_cases(folder: Path, suffixes: Sequence[str], channels: int) -> list[InferenceCase]:
    images = list_images(folder, suffixes)
    if images:
        return _file_cases(images, channels)
    series = list_dicom_series(folder)
    if not series:
        raise FileNotFoundError(f"folder {folder} holds no images ({', '.join(suffixes)}) or DICOM series")
    # Each series is checked before any is segmented (gaps, duplicated slices, mixed orientations stop
    # the run with one line); several series in one folder are several cases, each read by its own UID.
    for item in series:
        check_dicom_series(folder, item.uid)
    if len(series) == 1:
        return [InferenceCase(folder.name, str(folder), series[0].uid)]
    logger.info(
        "%s holds %d DICOM series, each one case: %s", folder, len(series), "; ".join(map(str, series))
    )
    return [InferenceCase(f"{folder.name}_{item.uid}", str(folder), item.uid) for item in series]


def _csv_cases(path: Path, suffixes: Sequence[str], channels: int) -> list[InferenceCase]:
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"CSV {path} needs an 'image' column with one scan per row")
    cases = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if not row["image"]:
            raise ValueError(f"CSV {path} line {number}: the image column is empty")
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.exists():
            raise FileNotFoundError(f"CSV {path} line {number}: image {image} does not exist")
        cases.extend(_path_cases(image, suffixes, channels))
    return cases


def _path_cases(path: Path, suffixes: Sequence[str], channels: int) -> list[InferenceCase]:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        return _folder_cases(path, suffixes, channels)
    if path.name.lower().endswith(".csv"):
        return _csv_cases(path, suffixes, channels)
    if path.name.lower().endswith(tuple(suffixes)):
        return [InferenceCase(case_name(path), str(path))]
    raise ValueError(f"input {path} is not an image ({', '.join(suffixes)}), a folder or a .csv file")


def discover_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    channels: int = 1,
) -> list[InferenceCase]:
    """Turn files, folders, DICOM series folders and CSV files into the cases to segment.

    Args:
        inputs: one path or a list of them: an image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``,
            ``.mhd``), a folder of image files (nnU-Net's ``CASE_0000``, ``CASE_0001`` ... grouped per
            case, see ``channels``), a DICOM series folder (one case per series, named
            after the folder, ``<folder>_<SeriesInstanceUID>`` when it holds several), or a ``.csv``
            with an ``image`` column (relative paths start at the CSV's folder).
        suffixes: the file extensions that count as images; default: the volume formats
            (``IMAGE2D_SUFFIXES`` are added for a 2D model).
        channels: the channels the model takes. Files of a folder all named ``CASE_XXXX`` are grouped
            into one case ``CASE`` when it takes several, or when every suffix is ``_0000``.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no images and no DICOM series.
        ValueError: an unsupported file type, a CSV without an ``image`` column, two inputs with
            the same case name (their outputs would collide), or a case missing a channel file.

    Example:
        >>> [case.name for case in discover_inputs("data/imagesTs")]  # doctest: +SKIP
        ['case_004', 'case_005']
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError("no inputs given")
    cases = [case for path in paths for case in _path_cases(Path(path), suffixes, channels)]
    seen: dict[str, str] = {}
    for case in cases:
        if case.name in seen:
            raise ValueError(
                f"two inputs have the case name {case.name!r} ({seen[case.name]} and {case.image}); "
                "their predictions would overwrite each other, rename one"
            )
        seen[case.name] = case.image
    return cases
