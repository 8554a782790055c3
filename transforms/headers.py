"""Image headers without the pixel data: shape, channels, geometry and type, read the way the presets read.

Dataset checks (:mod:`attnunet.pipelines.validation`) and cache sizing (:mod:`attnunet.pipelines.datasets`)
need every file's shape and geometry before anything is decoded. nibabel reads NIfTI headers,
SimpleITK's ``ReadImageInformation`` the other volume formats, PIL the 2D formats; a DICOM series folder
is listed with :func:`~attnunet.transforms.readers.list_dicom_series` and its first slice read.
Affines are in RAS, as ``LoadImaged`` returns them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from attnunet.transforms.readers import list_dicom_series, sitk_affine
from nibabel.filebasedimages import ImageFileError
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageHeader", "read_header", "IMAGE2D_SUFFIXES", "NIFTI_SUFFIXES"]

IMAGE2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about its image.

    Attributes:
        path: the file (or DICOM series folder).
        spatial_shape: voxels per spatial axis in the reader's (x, y, z) order.
        channels: channels per voxel (components, a 4th NIfTI dimension or RGB bands); 1 for scalar images.
        affine: (rank + 1)-square RAS affine; identity for 2D images, which carry no geometry.
        dtype: the stored pixel type, as a numpy dtype.
    """

    path: Path
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray
    dtype: np.dtype

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each axis (mm for volumes)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:-1, :-1], axis=0))

    @property
    def nbytes_float32(self) -> int:
        """Bytes of the decoded image as float32 (what ``LoadImaged`` produces)."""
        return 4 * self.channels * int(np.prod(self.spatial_shape))


def _nifti_header(path: Path) -> ImageHeader:
    image = nib.load(path)
    shape = image.shape
    scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
    return ImageHeader(
        path=path,
        spatial_shape=tuple(int(n) for n in shape[:3]),
        channels=int(np.prod(shape[3:], dtype=int)),
        affine=np.asarray(image.affine, dtype=float),
        dtype=np.dtype(np.float64) if scaled else np.dtype(image.get_data_dtype()).newbyteorder("="),
    )


def _sitk_header(path: Path) -> ImageHeader:
    if path.is_dir():
        series = list_dicom_series(path)
        if not series:
            raise FileNotFoundError(f"{path} holds no DICOM series")
        files, slices = series[0].files[0], series[0].num_slices
    else:
        files, slices = str(path), 1
    reader = sitk.ImageFileReader()
    reader.SetFileName(files)
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    if path.is_dir():  # a slice file reports one plane; the series stacks them
        size = [*size[:2], slices]
    rank = min(reader.GetDimension(), 3)
    extra = int(np.prod(size[3:], dtype=int))
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())).dtype
    return ImageHeader(
        path=path,
        spatial_shape=tuple(int(n) for n in size[:rank]),
        channels=extra * reader.GetNumberOfComponents(),
        affine=sitk_affine(reader, spatial_rank=rank),
        dtype=np.dtype(dtype),
    )


def _pil_header(path: Path) -> ImageHeader:
    with Image.open(path) as image:
        width, height = image.size
        channels = len(image.getbands())
        dtype = np.asarray(image.crop((0, 0, 1, 1))).dtype
    return ImageHeader(
        path=path, spatial_shape=(width, height), channels=channels, affine=np.eye(3), dtype=dtype
    )


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Read the header of a NIfTI, NRRD, MetaImage, PNG/TIFF/JPEG/BMP file or a DICOM series folder.

    Args:
        path: the file or folder.

    Returns:
        An :class:`ImageHeader`; ``spatial_shape`` is in the order ``LoadImaged`` returns
        (PNG/TIFF: width, height).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no DICOM series.
        ValueError: the header cannot be read (not an image, truncated header, unknown format).

    Example:
        >>> read_header("imagesTr/case_001.nii.gz").spatial_shape  # doctest: +SKIP
        (64, 64, 32)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            return _nifti_header(path)
        if name.endswith(IMAGE2D_SUFFIXES):
            return _pil_header(path)
        return _sitk_header(path)
    except FileNotFoundError:
        raise
    except (ImageFileError, UnidentifiedImageError, RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path}: the header cannot be read (not an image, or truncated): {reason}"
        ) from None
