"""DICOM SEG input: one label map on the grid of its source DICOM series, via highdicom.

The array contract is :mod:`attnunet.transforms.dicom_seg`'s: ``(x, y, z)`` on the series as
:class:`~attnunet.transforms.readers.SimpleITKReader` reads it, with that reader's RAS affine.

Segments are combined into one label map. Overlapping segments are refused, naming the overlapping
pairs: a label map holds one class per voxel and no precedence rule is right for every SEG;
``segments=`` selects segments that do not overlap (read several times for nested structures).

A SEG as a training or evaluation label: a SEG names its series by UID only, so reading it needs the
series' folder. The transform chains take it from the case (``LoadImageLabeld``: the case's image);
what gets a label's path alone (``read_header``, ``loader_for``: the dataset checks, the planner,
``attnunet evaluate``) finds it with :func:`find_source_series`, beside the SEG.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from monai.utils import optional_import
from pydicom.errors import InvalidDicomError

from attnunet.transforms.dicom_seg import SEGMENTATION_TYPES, ClassNames, class_name_table, read_source_series
from attnunet.transforms.dicom_series import subfolders
from attnunet.transforms.readers import sitk_affine

# highdicom and SimpleITK are needed only when a DICOM SEG is read or written, not on the GPU
# check's inference path (which carries neither); their first use says to install them.
hd, _ = optional_import("highdicom")
sitk, _ = optional_import("SimpleITK")

__all__ = ["read_dicom_seg", "DicomSegLabels", "is_dicom_seg", "segment_labels", "find_source_series"]

# The SEG's grid must sit on the series' voxels to this fraction of a voxel (DS strings round
# positions and direction cosines, more so for oblique series).
_GRID_TOL = 1e-2
_SERIES_UID_TAG = "0020|000e"
_FRAME_OF_REFERENCE_TAG = "0020|0052"


class DicomSegLabels(NamedTuple):
    """A label map read from a DICOM SEG.

    Attributes:
        labels: unsigned integer array ``(x, y, z)`` on the series' grid (see the module's contract);
            0 is background.
        affine: the series' 4 x 4 RAS affine, as ``SimpleITKReader`` gives it.
        names: label value -> the SEG's segment label, for the segments read.
    """

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]


def read_dicom_seg(
    seg_path: str | os.PathLike,
    series_folder: str | os.PathLike,
    *,
    class_names: ClassNames | None = None,
    segments: Sequence[int | str] | None = None,
    series_uid: str | None = None,
) -> DicomSegLabels:
    """Read a DICOM SEG as one integer label map on the grid of its source series.

    Args:
        seg_path: a BINARY or LABELMAP DICOM SEG file.
        series_folder: the folder of the series the SEG references.
        class_names: name of each label value (see :data:`ClassNames`); each segment gets the value
            whose name equals its segment label (case-insensitive). Without it, a segment's value is
            its segment number (what ``write_dicom_seg`` gives classes 1..K).
        segments: the segments to read, by number or label; default all. Overlapping segments are
            refused, so pick ones that do not overlap.
        series_uid: the series to use when the folder holds several; defaults to the one the SEG
            references.

    Returns:
        The label map, the series' affine and the names of the segments read.

    Raises:
        ValueError: the file is not a SEG or is fractional; a segment is unknown or has no class name;
            the selected segments overlap; the SEG references another series or frame of reference,
            or its frames are not on the series' grid; or the folder does not hold the series.

    Example:
        >>> labels, affine, names = read_dicom_seg(
        ...     "case1/liver.dcm", "case1/image", class_names={"0": "background", "1": "liver"}
        ... )  # doctest: +SKIP
    """
    try:
        seg = hd.seg.segread(seg_path)
    except ValueError as error:  # highdicom's message ("Dataset is not a Segmentation.") names no file
        raise ValueError(f"{seg_path} cannot be read as a DICOM SEG: {error}") from None
    if seg.segmentation_type.value not in SEGMENTATION_TYPES:
        raise ValueError(
            f"{seg_path} is a {seg.segmentation_type.value} SEG; "
            f"only {SEGMENTATION_TYPES} SEGs are label maps"
        )
    numbers = _segment_numbers(seg, segments, seg_path)
    values = _segment_values(seg, numbers, class_names, seg_path)
    referenced = [item.SeriesInstanceUID for item in seg.get("ReferencedSeriesSequence", [])]
    if series_uid is None and len(referenced) == 1 and not _only_blank_uid_series(series_folder):
        # (a series whose files have no UID is referenced by a derived one, see dicom_seg: the folder's
        # one series is then checked by its frame of reference and grid alone)
        series_uid = referenced[0]
    image = read_source_series(series_folder, series_uid)
    _check_same_series(seg, referenced, image, seg_path, series_folder)
    volume = _combined_volume(seg, numbers, seg_path)
    try:
        # highdicom's volume of a SimpleITK image is indexed (x, y, z), as the contract.
        matched = volume.match_geometry(hd.Volume.from_simpleitk(image), tol=_GRID_TOL)
    except RuntimeError as error:
        raise ValueError(f"{seg_path} is not on the grid of the series in {series_folder}: {error}") from None
    lookup = np.zeros(max(numbers) + 1, dtype=np.min_scalar_type(max(values.values())))
    lookup[list(values)] = list(values.values())
    names = {values[number]: seg.get_segment_description(number).segment_label for number in numbers}
    return DicomSegLabels(lookup[matched.array], sitk_affine(image), names)


def _segment_numbers(
    seg: hd.seg.Segmentation, segments: Sequence[int | str] | None, seg_path: str | os.PathLike
) -> list[int]:
    """The selected segment numbers (all by default); a string selects by segment label."""
    available = {number: seg.get_segment_description(number).segment_label for number in seg.segment_numbers}
    if segments is None:
        return sorted(available)
    if not segments:
        raise ValueError(f"segments=[] selects none of the segments of {seg_path}")
    numbers = []
    for wanted in segments:
        found = [
            number
            for number, label in available.items()
            if (label.casefold() == wanted.casefold() if isinstance(wanted, str) else number == wanted)
        ]
        if not found:
            listing = ", ".join(f"{number} {label!r}" for number, label in available.items())
            raise ValueError(f"{seg_path} has no segment {wanted!r}; its segments are {listing}")
        numbers.extend(found)
    return sorted(set(numbers))


def _segment_values(
    seg: hd.seg.Segmentation,
    numbers: Sequence[int],
    class_names: ClassNames | None,
    seg_path: str | os.PathLike,
) -> dict[int, int]:
    """Segment number -> label value: the class whose name is the segment's label, else the number."""
    if class_names is None:
        return {number: number for number in numbers}
    by_name = {name.casefold(): value for value, name in class_name_table(class_names).items()}
    values = {}
    for number in numbers:
        label = seg.get_segment_description(number).segment_label
        if label.casefold() not in by_name:
            raise ValueError(
                f"{seg_path}: segment {number} {label!r} has no class in class_names "
                f"{sorted(by_name)}; select segments with segments=[...]"
            )
        values[number] = by_name[label.casefold()]
    return values


def _check_same_series(
    seg: hd.seg.Segmentation,
    referenced: Sequence[str],
    image: sitk.Image,
    seg_path: str | os.PathLike,
    folder: str | os.PathLike,
) -> None:
    """Refuse a SEG made for another series (a pairing mistake), before comparing grids."""
    uid = image.GetMetaData(_SERIES_UID_TAG).strip("\x00 ")
    if referenced and uid and uid not in referenced:
        raise ValueError(f"{seg_path} references series {referenced}, not series {uid!r} in {folder}")
    frame_of_reference = image.GetMetaData(_FRAME_OF_REFERENCE_TAG).strip("\x00 ")
    if seg.FrameOfReferenceUID != frame_of_reference:
        raise ValueError(
            f"{seg_path} is in frame of reference {seg.FrameOfReferenceUID}, the series in {folder} "
            f"in {frame_of_reference}"
        )


def _combined_volume(
    seg: hd.seg.Segmentation, numbers: Sequence[int], seg_path: str | os.PathLike
) -> hd.Volume:
    """The selected segments as one volume of segment numbers; overlaps are refused, by name."""
    try:
        return seg.get_volume(segment_numbers=numbers, combine_segments=True, relabel=False)
    except RuntimeError:
        # Read afresh: after this error highdicom 0.28 leaves the SEG's frame table locked
        # ("database table is locked" on the next get_volume).
        overlaps = _overlaps(hd.seg.segread(seg_path), numbers)
        if not overlaps:
            raise
        raise ValueError(
            f"{seg_path}: segments overlap ({'; '.join(overlaps)}) and a label map holds one class per "
            "voxel; pick segments that do not overlap with segments=[...] (read_dicom_seg, LoadDicomSeg), "
            "or export the structures that overlap to separate SEG files"
        ) from None


def _overlaps(seg: hd.seg.Segmentation, numbers: Sequence[int]) -> list[str]:
    """Each overlapping pair of the selected segments, with its voxel count."""
    masks = seg.get_volume(segment_numbers=numbers, combine_segments=False).array.astype(bool)
    overlaps = []
    for (i, first), (j, second) in itertools.combinations(enumerate(numbers), 2):
        count = int(np.count_nonzero(masks[..., i] & masks[..., j]))
        if count:
            first_label = seg.get_segment_description(first).segment_label
            second_label = seg.get_segment_description(second).segment_label
            overlaps.append(f"{first} {first_label!r} and {second} {second_label!r}: {count} voxels")
    return overlaps


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOM SEG file (Modality SEG), from its header; False for folders, other
    files and missing paths.

    Example:
        >>> is_dicom_seg("case1/liver.dcm"), is_dicom_seg("case1/image")  # doctest: +SKIP
        (True, False)
    """
    return isinstance(path, (str, os.PathLike)) and Path(path).is_file() and _seg_header(path) is not None


def segment_labels(seg_path: str | os.PathLike) -> dict[int, str]:
    """Segment number -> segment label of a DICOM SEG, from its header (no pixel data).

    Raises:
        ValueError: the file is not a DICOM SEG.

    Example:
        >>> segment_labels("case1/liver.dcm")  # doctest: +SKIP
        {1: 'Liver'}
    """
    header = _seg_header(seg_path, "SegmentSequence")
    if header is None:
        raise ValueError(f"{seg_path} is not a DICOM SEG (a DICOM file with Modality SEG)")
    return {int(item.SegmentNumber): str(item.SegmentLabel) for item in header.get("SegmentSequence", [])}


def find_source_series(seg_path: str | os.PathLike) -> tuple[Path, str]:
    """The folder and SeriesInstanceUID of the DICOM series a SEG was made from, looked for beside the SEG.

    Looked for, in this order: ``<SEG's folder>/<SEG's name>/``; ``<each folder beside the SEG's
    folder>/<SEG's name>/`` (``labels/case1.dcm`` and ``images/case1/``); every other folder in the SEG's
    folder (``case1/liver.dcm`` and ``case1/image/``). The first that holds a series the SEG references
    (ReferencedSeriesSequence) is it. Each folder's series are listed once per process (until the
    folder changes), so a dataset's SEGs beside many series folders are matched in one pass.

    Raises:
        ValueError: the file is not a DICOM SEG, references no series, or none of those folders holds it.

    Example:
        >>> folder, uid = find_source_series("ct_3slices_with_seg/liver.dcm")  # doctest: +SKIP
        >>> folder  # doctest: +SKIP
        PosixPath('ct_3slices_with_seg/image')
    """
    seg_path = Path(seg_path)
    header = _seg_header(seg_path, "ReferencedSeriesSequence")
    if header is None:
        raise ValueError(f"{seg_path} is not a DICOM SEG (a DICOM file with Modality SEG)")
    wanted = {str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])}
    if not wanted:
        raise ValueError(
            f"{seg_path} references no DICOM series (no ReferencedSeriesSequence); export it again"
        )
    here, name = seg_path.parent, seg_path.stem
    beside = [folder / name for folder in subfolders(here.parent) if folder != here]
    for folder in dict.fromkeys([here / name, *beside, *subfolders(here)]):  # in order, each once
        found = wanted & _series_uids(str(folder), folder.stat().st_mtime_ns) if folder.is_dir() else None
        if found:
            return folder, min(found)  # one, the same each time, when a folder holds several referenced
    raise ValueError(
        f"{seg_path}: the DICOM series it references ({', '.join(sorted(wanted))}) is in no folder beside "
        "it; keep each SEG beside its series: case/<name>.dcm with case/<series>/, or labels/<case>.dcm "
        "with images/<case>/"
    )


def _seg_header(path: str | os.PathLike, *tags: str) -> pydicom.Dataset | None:
    """The file's Modality and ``tags`` when it is a DICOM SEG, else None."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", *tags])
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None  # not DICOM, or unreadable: the image readers report unreadable files by name
    return header if header.get("Modality") == "SEG" else None


def _only_blank_uid_series(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds one DICOM series, whose files have no SeriesInstanceUID."""
    folder = Path(folder)
    return folder.is_dir() and _series_uids(str(folder), folder.stat().st_mtime_ns) == frozenset({""})


@functools.lru_cache(maxsize=4096)
def _series_uids(folder: str, modified_ns: int) -> frozenset[str]:
    """The SeriesInstanceUIDs in ``folder``; ``modified_ns`` (the folder's mtime) keys the cache, so a
    changed folder is listed again."""
    return frozenset(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
