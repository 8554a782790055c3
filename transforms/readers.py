"""A SimpleITK image reader for MONAI's ``LoadImage``/``LoadImaged``: NIfTI, NRRD, MetaImage and DICOM series.

MONAI's own ``ITKReader`` needs the ``itk`` package (hundreds of MB); SimpleITK is lighter and is
what this project depends on, so this reader fills that gap. Importing this module registers the
reader in :data:`monai.transforms.io.array.SUPPORTED_READERS` (MONAI's documented place for custom
readers) under ``"simpleitkreader"``, so that ``LoadImaged(keys, reader="SimpleITKReader")`` resolves
it by name. In MONAI's automatic reader selection it ranks below NibabelReader, PILReader and
NumpyReader (NIfTI and PNG keep their readers) and above the DICOM readers that accept any path:
a DICOM series folder, ``.nrrd``/``.nhdr`` and ``.mha``/``.mhd`` then load through it, and single
``.dcm`` files and multi-frame DICOM stay with MONAI's ``PydicomReader``. A DICOM series folder is
checked first by :func:`check_dicom_series`, which refuses what ITK would stack into a wrong volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.transforms.io.array import SUPPORTED_READERS
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple, optional_import

# SimpleITK (NRRD, MHA, DICOM series) is optional where only NIfTI and 2D files are read, e.g. the
# GPU check: its first use raises an error saying to install it.
sitk, _ = optional_import("SimpleITK")

__all__ = [
    "SimpleITKReader",
    "DicomSeries",
    "DicomGeometry",
    "list_dicom_series",
    "check_dicom_series",
    "sitk_affine",
    "SIMPLEITK_SUFFIXES",
]

SIMPLEITK_SUFFIXES = ("nii", "nii.gz", "nrrd", "nhdr", "mha", "mhd")
_DICOM_SERIES_DESCRIPTION = "0008|103e"
# A step between neighbouring slices may differ from the series' usual step by this fraction; a scanner's
# rounding stays far below it, a missing slice (twice the step) or a misplaced one far above.
_SPACING_TOLERANCE = 0.1
# Slices closer than this (mm) along the slice normal are at the same position (a duplicated file).
_SAME_POSITION_MM = 0.01
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
    - any other step more than 10% away from the usual step (uneven spacing).

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
    offsets = positions @ np.cross(orientations[0, :3], orientations[0, 3:])  # mm along the slice normal
    order = np.argsort(offsets, kind="stable")
    names = [names[i] for i in order]
    _check_steps(folder, names, offsets[order])
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


def _number(value: float) -> str:
    """A value for a message: at most 3 decimals, no trailing zeros (-782.5, 2, 0.966)."""
    return f"{round(float(value), 3):g}"


def _numbers(values: np.ndarray) -> str:
    return "[" + ", ".join(_number(v) for v in values) + "]"


class SimpleITKReader(ImageReader):
    """Load NIfTI, NRRD, MetaImage files and DICOM series folders with SimpleITK, the MONAI way.

    ``get_data`` returns the array in numpy index order x, y, z (like ``NibabelReader``; multi-component
    pixels and a 4th dimension become the last axis) and a metadata dict with ``affine`` and
    ``original_affine`` (4 x 4 for 3D, in RAS like ``NibabelReader``; LPS when
    ``affine_lps_to_ras=False``), ``spatial_shape``, ``spacing``, ``original_channel_dim``
    (``nan`` for single-channel images, ``-1`` otherwise), ``space`` and the image's own metadata
    keys (``ITK_*`` keys dropped; for a DICOM series, the first slice's tags such as ``0020|000e``).
    ``LoadImage`` adds ``filename_or_obj``. For the same NIfTI file the array and affine equal
    ``NibabelReader``'s, oblique directions included; the one exception is a sheared sform, which ITK
    cannot represent (it falls back to the qform).

    Args:
        channel_dim: the channel axis of the returned array; ``None`` infers it (see above),
            ``"no_channel"`` marks the data as single-channel.
        series_uid: for a folder that holds several DICOM series, the SeriesInstanceUID to load.
            Without it such a folder stops with an error that lists the series found. Every series is
            checked by :func:`check_dicom_series` first (missing, duplicated or unevenly spaced slices,
            mixed orientations are refused).
        affine_lps_to_ras: convert ITK's LPS affine to RAS (MONAI's and nibabel's convention).

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged(["image"], reader=SimpleITKReader(series_uid="1.2.3"))  # doctest: +SKIP
        >>> load = LoadImaged(["image"], reader="SimpleITKReader")  # by name, once this module is imported
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        series_uid: str | None = None,
        affine_lps_to_ras: bool = True,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for folders (DICOM series) and files ending in one of :data:`SIMPLEITK_SUFFIXES`."""
        names = ensure_tuple(filename)
        return all(Path(name).is_dir() or is_supported_format(name, SIMPLEITK_SUFFIXES) for name in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> sitk.Image | list[sitk.Image]:
        """Read one image, or a list to be stacked as channels by ``get_data``.

        Args:
            data: file or DICOM-series folder, or a sequence of them.
            kwargs: not supported (SimpleITK takes no reading options); present for the
                ``ImageReader`` interface.

        Raises:
            FileNotFoundError: a path does not exist, or a folder holds no DICOM series.
            ValueError: a file cannot be read, or :func:`check_dicom_series` refuses a folder (several
                series and no ``series_uid``, or slices that do not form one regular volume).
        """
        if kwargs:
            raise TypeError(f"SimpleITKReader.read takes no options, got {sorted(kwargs)}")
        names = ensure_tuple(data)
        images = [self._read_one(Path(os.fspath(name))) for name in names]
        return images if len(names) > 1 else images[0]

    def _read_one(self, path: Path) -> sitk.Image:
        if path.is_dir():
            return self._read_series(path)
        if not path.exists():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            raise ValueError(
                f"{path} cannot be read by SimpleITK (unreadable or truncated): {reason}"
            ) from None

    def _read_series(self, folder: Path) -> sitk.Image:
        series = check_dicom_series(folder, self.series_uid).series
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(series.files)
        reader.MetaDataDictionaryArrayUpdateOn()
        reader.LoadPrivateTagsOff()
        try:
            image = reader.Execute()
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            raise ValueError(f"DICOM series {series} in {folder} cannot be read: {reason}") from None
        for key in reader.GetMetaDataKeys(0):  # the first slice's tags describe the series
            image.SetMetaData(key, reader.GetMetaData(0, key))
        return image

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """The array (x, y, z[, channel]) and MONAI metadata; several images are stacked as channels."""
        arrays, compatible_meta = [], {}
        # Not ensure_tuple: a SimpleITK image is itself iterable (over its pixels).
        for image in img if isinstance(img, (list, tuple)) else [img]:
            array = self._get_array(image)
            header = {
                key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if not key.startswith("ITK_")
            }
            spatial_rank = min(image.GetDimension(), 3)
            header[MetaKeys.ORIGINAL_AFFINE] = self._get_affine(image, spatial_rank)
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize()[:spatial_rank])
            header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            header["spacing"] = np.asarray(image.GetSpacing()[:spatial_rank])
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if array.ndim == spatial_rank else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            arrays.append(array)
            _copy_compatible_dict(header, compatible_meta)  # MONAI's own stacking rules, as its readers use
        return _stack_images(arrays, compatible_meta), compatible_meta

    @staticmethod
    def _get_array(image: sitk.Image) -> np.ndarray:
        # SimpleITK gives (z, y, x[, component]); MONAI's readers give (x, y, z[, channel]).
        array = sitk.GetArrayViewFromImage(image)
        if image.GetNumberOfComponentsPerPixel() == 1:
            return np.array(array.T)
        return np.array(np.moveaxis(array, -1, 0).T)

    def _get_affine(self, image: sitk.Image, spatial_rank: int) -> np.ndarray:
        return sitk_affine(image, spatial_rank=spatial_rank, lps_to_ras=self.affine_lps_to_ras)


def sitk_affine(
    image: sitk.Image | sitk.ImageFileReader, spatial_rank: int | None = None, lps_to_ras: bool = True
) -> np.ndarray:
    """The (rank + 1)-square affine of a SimpleITK image, or of a reader after ``ReadImageInformation``.

    Args:
        image: anything with ``GetDirection``, ``GetSpacing``, ``GetOrigin`` and ``GetDimension``.
        spatial_rank: spatial dimensions to keep (a 4th, time or channel dimension is dropped); defaults
            to ``min(dimension, 3)``.
        lps_to_ras: convert ITK's LPS world coordinates to RAS (MONAI's and nibabel's convention).

    Example:
        >>> sitk_affine(sitk.Image([4, 4, 4], sitk.sitkUInt8))[:3, :3].diagonal().tolist()
        [-1.0, -1.0, 1.0]
    """
    dimension = image.GetDimension()
    rank = min(dimension, 3) if spatial_rank is None else spatial_rank
    direction = np.asarray(image.GetDirection()).reshape(dimension, dimension)[:rank, :rank]
    affine = np.eye(rank + 1)
    affine[:rank, :rank] = direction @ np.diag(image.GetSpacing()[:rank])
    affine[:rank, -1] = image.GetOrigin()[:rank]
    return orientation_ras_lps(affine) if lps_to_ras else affine


def _register() -> None:
    """Add the reader to MONAI's table, ranked just after the DICOM readers (see the module docstring)."""
    if "simpleitkreader" in SUPPORTED_READERS:
        return
    entries = list(SUPPORTED_READERS.items())
    dicom_readers = {"pydicomreader", "nvimgcodecpydicomreader", "itkreader"}
    position = next((i for i, (key, _) in enumerate(entries) if key not in dicom_readers), len(entries))
    entries.insert(position, ("simpleitkreader", SimpleITKReader))
    SUPPORTED_READERS.clear()  # in place: LoadImage reads this very dict
    SUPPORTED_READERS.update(entries)


_register()
