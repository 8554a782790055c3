"""DICOM series in a folder: list them, and check that one forms a regular volume before it is stacked.

ITK stacks whatever files a series has, logging a warning and guessing one spacing when slices are
missing, duplicated or unevenly spaced; :func:`check_dicom_series` refuses those series (headers only,
read by pydicom) with a one-line error that names the folder, the files and what to do.
:class:`~attnunet.transforms.readers.SimpleITKReader` checks every series folder with it before reading.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from monai.config import PathLike
from monai.utils import optional_import

# SimpleITK (GDCM's series listing) is optional where only NIfTI and 2D files are read, e.g. the
# GPU check: its first use raises an error saying to install it.
sitk, _ = optional_import("SimpleITK")
get_volume_positions, _ = optional_import("highdicom.spatial", name="get_volume_positions")

__all__ = ["DicomSeries", "DicomGeometry", "list_dicom_series", "check_dicom_series", "subfolders"]

_DICOM_SERIES_DESCRIPTION = "0008|103e"
# A step between neighbouring slices may differ from the series' usual step by this fraction; a scanner's
# rounding stays far below it, a missing slice (twice the step) or a misplaced one far above.
_SPACING_TOLERANCE = 0.1
# Slices closer than this (mm) along the slice normal are at the same position (a duplicated file).
_SAME_POSITION_MM = 0.01
# The line from the first slice to any other may leave the slice normal by this much (1 - |cosine|, about
# 2.6 degrees); a tilted gantry's CT leaves it by its tilt, which ITK would not shear into the volume.
_PERPENDICULAR_TOLERANCE = 1e-3
# Direction cosines further apart than this are different orientations (about 0.06 degrees); the values
# are written with at least 4 decimals, and one series writes the same ones into every file.
_ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder.

    Attributes:
        uid: the SeriesInstanceUID (0020,000E).
        description: the SeriesDescription (0008,103E), "" when absent.
        files: the slice files, sorted by GDCM along the slice normal (ImagePositionPatient).
    """

    uid: str
    description: str
    files: tuple[str, ...]

    @property
    def num_slices(self) -> int:
        """Number of files (slices) in the series."""
        return len(self.files)

    def __str__(self) -> str:
        # Real exports can leave the UID empty; series_uid="" still selects such a series, so show ''.
        uid = self.uid or "''"
        return f"{uid} ({self.description or 'no description'}, {self.num_slices} slices)"


@dataclass(frozen=True)
class DicomGeometry:
    """A DICOM series whose slices passed :func:`check_dicom_series`: one orientation, one regular step.

    Attributes:
        series: the series, its files sorted along the slice normal (ImagePositionPatient).
        slice_step: the LPS vector (mm) from one slice's position to the next, ``(last - first) / (n - 1)``
            as ITK computes the slice spacing; ``None`` for a one-file series (one slice, or a multi-frame
            file), whose geometry is all in that file.
    """

    series: DicomSeries
    slice_step: tuple[float, float, float] | None

    @property
    def slice_spacing(self) -> float | None:
        """Distance between neighbouring slices in mm; ``None`` for a one-file series."""
        return None if self.slice_step is None else float(np.linalg.norm(self.slice_step))


def subfolders(parent: PathLike) -> list[Path]:
    """The visible folders directly in ``parent``, sorted; none when ``parent`` is not a folder. Where
    DICOM series folders are looked for (a dataset's image folder, the folders beside a DICOM SEG).

    Example:
        >>> subfolders("dataset/images")  # doctest: +SKIP
        [PosixPath('dataset/images/case1'), PosixPath('dataset/images/case2')]
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(path for path in parent.iterdir() if path.is_dir() and not path.name.startswith("."))


def list_dicom_series(folder: PathLike) -> list[DicomSeries]:
    """List the DICOM series in ``folder`` (not its subfolders), via GDCM in SimpleITK.

    Args:
        folder: a folder of DICOM files.

    Returns:
        One :class:`DicomSeries` per SeriesInstanceUID, in GDCM's order; empty when the folder holds
        no DICOM series.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.

    Example:
        >>> for series in list_dicom_series("scans/patient1"):  # doctest: +SKIP
        ...     print(series.uid, series.description, series.num_slices)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder of DICOM files")
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.LoadPrivateTagsOff()
        header.ReadImageInformation()
        description = (
            header.GetMetaData(_DICOM_SERIES_DESCRIPTION).strip()
            if header.HasMetaDataKey(_DICOM_SERIES_DESCRIPTION)
            else ""
        )
        found.append(DicomSeries(uid=uid, description=description, files=files))
    return found


def check_dicom_series(folder: PathLike, series_uid: str | None = None) -> DicomGeometry:
    """Choose the series in ``folder`` and check that its slices form one regular volume.

    Only the files' headers are read (pydicom, without pixel data). The slices are sorted by their
    ImagePositionPatient along the slice normal, as GDCM sorts them, and the series is refused when
    ITK would stack it into a wrong volume (it only logs a warning and guesses one spacing):

    - several series in the folder and no ``series_uid``;
    - files with different ImageOrientationPatient;
    - files without ImagePositionPatient or ImageOrientationPatient (no slice order or spacing);
    - two files at the same position along the normal (a duplicated slice);
    - a missing slice: a step about a whole multiple (2x, 3x...) of the usual step, which is the lower
      median of the steps. This is refused rather than resampled: a volume with a gap has no single
      spacing, and stacking or resampling it silently would put voxels in the wrong place;
    - any other step more than 10% away from the mean step (uneven spacing);
    - slices not stacked along the normal of their planes (a tilted gantry's CT): ITK would not shear them.

    Whether the positions form such a regular volume, and the slice order, come from highdicom's
    ``get_volume_positions``; when it refuses, the files at fault are found here and named.

    A one-file series (one slice, or a multi-frame file) is not checked: its geometry is in that file.

    Args:
        folder: a folder of DICOM files (its subfolders are not read).
        series_uid: the SeriesInstanceUID to check when the folder holds several series.

    Returns:
        The chosen series, its files sorted along the slice normal, and its slice step.

    Raises:
        FileNotFoundError: the folder holds no DICOM series.
        NotADirectoryError: ``folder`` is not a folder.
        ValueError: any of the cases above, as one line that names the folder, the files and what to do.

    Example:
        >>> check_dicom_series("scans/patient1").slice_spacing  # doctest: +SKIP
        2.0
    """
    folder = Path(folder)
    series = _choose_series(folder, list_dicom_series(folder), series_uid)
    if series.num_slices == 1:
        return DicomGeometry(series=series, slice_step=None)
    names = sorted(series.files)  # in name order, "the first file that differs" means something to a user
    headers = [_position_and_orientation(folder, name) for name in names]
    positions = np.array([position for position, _ in headers])
    orientations = np.array([orientation for _, orientation in headers])
    _check_orientations(folder, names, orientations)
    # highdicom decides whether the positions form one regular volume (no duplicate, missing or uneven
    # slice, stacked along the normal) and gives the slice order; "RD" orders along row x column, as GDCM.
    # Not its get_series_volume_positions: that looks up each file's SOPClassUID (a KeyError for exports
    # that leave it empty) and compares orientations without naming a file. highdicom only answers None,
    # so a refusal is explained here, naming the files.
    _, indices = get_volume_positions(
        positions,
        orientations[0],
        rtol=_SPACING_TOLERANCE,
        perpendicular_tol=_PERPENDICULAR_TOLERANCE,
        index_convention="RD",
    )
    if indices is None:
        normal = np.cross(orientations[0, :3], orientations[0, 3:])
        offsets = positions @ normal  # mm along the slice normal
        order = np.argsort(offsets, kind="stable")
        sorted_names = [names[i] for i in order]
        _check_steps(folder, sorted_names, offsets[order])
        _refuse_the_rest(folder, sorted_names, positions[order], normal, offsets[order])
    order = np.argsort(indices, kind="stable")
    names = [names[i] for i in order]
    step = (positions[order[-1]] - positions[order[0]]) / (len(names) - 1)
    return DicomGeometry(series=replace(series, files=tuple(names)), slice_step=tuple(float(v) for v in step))


def _choose_series(folder: Path, found: list[DicomSeries], series_uid: str | None) -> DicomSeries:
    if not found:
        raise FileNotFoundError(f"{folder} holds no DICOM series")
    listing = "; ".join(str(series) for series in found)
    if series_uid is not None:
        chosen = [series for series in found if series.uid == series_uid]
        if not chosen:
            raise ValueError(f"{folder} has no DICOM series {series_uid!r}; it holds: {listing}")
        return chosen[0]
    if len(found) > 1:
        raise ValueError(
            f"{folder} holds {len(found)} DICOM series; load one with SimpleITKReader(series_uid=...) "
            f"or move each series to its own folder: {listing}"
        )
    return found[0]


def _position_and_orientation(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """ImagePositionPatient (3) and ImageOrientationPatient (6) of one file, from its header only."""
    # force: GDCM has already listed the file as DICOM, with or without the 128-byte preamble.
    header = pydicom.dcmread(
        name,
        stop_before_pixels=True,
        force=True,
        specific_tags=["ImagePositionPatient", "ImageOrientationPatient"],
    )
    position = np.asarray(header.get("ImagePositionPatient") or [], dtype=float)
    orientation = np.asarray(header.get("ImageOrientationPatient") or [], dtype=float)
    if position.shape != (3,) or orientation.shape != (6,):
        raise ValueError(
            f"{folder}: {Path(name).name} has no valid ImagePositionPatient/ImageOrientationPatient, so "
            "the slice order and spacing are unknown; remove the file or export the series again"
        )
    return position, orientation


def _check_orientations(folder: Path, names: list[str], orientations: np.ndarray) -> None:
    differs = np.abs(orientations - orientations[0]).max(axis=1) > _ORIENTATION_TOLERANCE
    if differs.any():
        odd = int(np.flatnonzero(differs)[0])
        raise ValueError(
            f"{folder}: {Path(names[odd]).name} has ImageOrientationPatient {_numbers(orientations[odd])} "
            f"but {Path(names[0]).name} has {_numbers(orientations[0])} ({int(differs.sum())} of "
            f"{len(names)} files differ); one volume needs one orientation: move the files of each "
            "orientation to their own folder"
        )


def _check_steps(folder: Path, names: list[str], offsets: np.ndarray) -> None:
    """Refuse duplicated, missing and unevenly spaced slices; ``names`` are sorted by ``offsets`` (mm)."""
    steps = np.diff(offsets)
    same = np.flatnonzero(steps < _SAME_POSITION_MM)
    if same.size:
        first, second = (Path(names[i]).name for i in (same[0], same[0] + 1))
        raise ValueError(
            f"{folder}: {first} and {second} are at the same slice position ({_number(offsets[same[0]])} mm "
            "along the slice normal); remove the duplicated file"
        )
    usual = float(np.sort(steps)[(len(steps) - 1) // 2])  # the lower median: of two steps, the smaller
    off = np.flatnonzero(np.abs(steps - usual) > _SPACING_TOLERANCE * usual)
    if not off.size:
        return
    at = int(off[0])
    between = (
        f"between {Path(names[at]).name} and {Path(names[at + 1]).name} "
        f"(at {_number(offsets[at])} and {_number(offsets[at + 1])} mm along the slice normal)"
    )
    missing = round(steps[at] / usual) - 1
    if missing >= 1 and abs(steps[at] - (missing + 1) * usual) <= _SPACING_TOLERANCE * usual:
        raise ValueError(
            f"{folder}: {missing} slice(s) missing {between}: they are {_number(steps[at])} mm apart where "
            f"the other slices are {_number(usual)} mm apart; a volume with a gap has no single spacing: "
            "add the missing file(s), or leave this series out"
        )
    raise ValueError(
        f"{folder}: uneven slice spacing, steps of {_numbers(np.unique(steps.round(2)))} mm where "
        f"{_number(usual)} mm is usual, first {_number(steps[at])} mm {between}; a volume needs one spacing: "
        "resample the series to a regular grid with a DICOM tool, or leave it out"
    )


def _refuse_the_rest(
    folder: Path, names: list[str], positions: np.ndarray, normal: np.ndarray, offsets: np.ndarray
) -> None:
    """Raise for what highdicom refused and :func:`_check_steps` let pass (``names`` sorted by ``offsets``):
    slices off the normal, or steps spread more than 10% around their mean (highdicom's reference)."""
    spans = positions[1:] - positions[0]
    cosines = np.abs(spans @ normal) / np.linalg.norm(spans, axis=1)
    odd = int(np.argmin(cosines))
    if cosines[odd] < 1 - _PERPENDICULAR_TOLERANCE:
        raise ValueError(
            f"{folder}: {Path(names[odd + 1]).name} lies {_number(np.degrees(np.arccos(cosines[odd])))} "
            f"degrees off the slice normal through {Path(names[0]).name} (a tilted gantry?); a volume needs "
            "its slices stacked along their normal: resample the series to a regular grid with a DICOM tool, "
            "or leave it out"
        )
    steps = np.diff(offsets)
    raise ValueError(
        f"{folder}: uneven slice spacing, steps of {_numbers(np.unique(steps.round(2)))} mm around a mean "
        f"of {_number(steps.mean())} mm from {Path(names[0]).name} to {Path(names[-1]).name}; a volume "
        "needs one spacing: resample the series to a regular grid with a DICOM tool, or leave it out"
    )


def _number(value: float) -> str:
    """A value for a message: at most 3 decimals, no trailing zeros (-782.5, 2, 0.966)."""
    return f"{round(float(value), 3):g}"


def _numbers(values: np.ndarray) -> str:
    return "[" + ", ".join(_number(v) for v in values) + "]"
