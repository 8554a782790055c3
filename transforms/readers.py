"""A SimpleITK image reader for MONAI's ``LoadImage``/``LoadImaged``: NIfTI, NRRD, MetaImage and DICOM series.

MONAI's own ``ITKReader`` needs the ``itk`` package (hundreds of MB); SimpleITK is lighter and is
what this project depends on, so this reader fills that gap. Importing this module registers the
reader in :data:`monai.transforms.io.array.SUPPORTED_READERS` (MONAI's documented place for custom
readers) under ``"simpleitkreader"``, so that ``LoadImaged(keys, reader="SimpleITKReader")`` resolves
it by name. In MONAI's automatic reader selection it ranks below NibabelReader, PILReader and
NumpyReader (NIfTI and PNG keep their readers) and above the DICOM readers that accept any path:
a DICOM series folder, ``.nrrd``/``.nhdr`` and ``.mha``/``.mhd`` then load through it, and single
``.dcm`` files and multi-frame DICOM stay with MONAI's ``PydicomReader``. A DICOM series folder is
checked first by :func:`~attnunet.transforms.dicom_series.check_dicom_series`, which refuses what ITK
would stack into a wrong volume.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.transforms.io.array import SUPPORTED_READERS
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple, optional_import

from attnunet.transforms.dicom_series import check_dicom_series
from attnunet.transforms.formats import SIMPLEITK_SUFFIXES

# SimpleITK (NRRD, MHA, DICOM series) is optional where only NIfTI and 2D files are read, e.g. the
# GPU check: its first use raises an error saying to install it.
sitk, _ = optional_import("SimpleITK")

__all__ = ["SimpleITKReader", "sitk_affine"]


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
            checked by :func:`~attnunet.transforms.dicom_series.check_dicom_series` first (missing,
            duplicated or unevenly spaced slices, mixed orientations are refused).
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
        """True for folders (DICOM series) and volume files of the format table
        (:data:`~attnunet.transforms.formats.SIMPLEITK_SUFFIXES`)."""
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
            ValueError: a file cannot be read, or
                :func:`~attnunet.transforms.dicom_series.check_dicom_series` refuses a folder (several
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


def _quiet_missing_gpu_decoder() -> None:
    """Keep MONAI's "nvImageCodec is not available" notices (a warning and a log line) out of the output.

    MONAI prints them every time a DICOM reader is built, several times per command, when its optional
    GPU JPEG decoder is not installed; reading falls back to pydicom's decoders and nothing is wrong.
    Done at import so that ``attnunet`` commands and ``python -m monai.bundle run`` are both quiet.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


_register()
_quiet_missing_gpu_decoder()
