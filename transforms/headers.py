"""Image headers without the pixel data: shape, channels, geometry and type, read the way the presets read.

Dataset checks (:mod:`attnunet.pipelines.data.validation`) and cache sizing
(:mod:`attnunet.pipelines.data.datasets`)
need every file's shape and geometry before anything is decoded. nibabel reads NIfTI headers,
SimpleITK's ``ReadImageInformation`` the other volume formats, PIL the 2D formats; a DICOM series folder
is checked with :func:`~attnunet.transforms.dicom_series.check_dicom_series` (the reader's own check) and its
first slice read. A DICOM SEG label has the header of the series it is read onto, found beside it.
Affines are in RAS, as ``LoadImaged`` returns them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, PILReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage
from monai.utils import optional_import
from nibabel.filebasedimages import ImageFileError
from PIL import Image, UnidentifiedImageError

from attnunet.transforms.dicom_seg_read import find_source_series, is_dicom_seg
from attnunet.transforms.dicom_series import check_dicom_series
from attnunet.transforms.formats import file_format
from attnunet.transforms.loading import LoadDicomSeg
from attnunet.transforms.readers import sitk_affine

# SimpleITK (NRRD, MHA, DICOM series) is optional where only NIfTI and 2D files are read, e.g. the
# GPU check: its first use raises an error saying to install it.
sitk, _ = optional_import("SimpleITK")

__all__ = [
    "ImageHeader",
    "read_header",
    "loader_for",
    "grayscale",
    "binary_mask",
]


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

    def oriented(self) -> ImageHeader:
        """The header of the image as ``Orientationd(axcodes="RAS")`` leaves it: each voxel axis moved to
        the RAS axis it is closest to (oblique scans: a short-axis cardiac MR's slice axis may become the
        second). 2D headers are returned as they are."""
        if len(self.spatial_shape) != 3:
            return self
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(self.affine), nib.orientations.axcodes2ornt("RAS")
        )
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(transform):
            shape[int(target)] = self.spatial_shape[axis]
        affine = self.affine @ nib.orientations.inv_ornt_aff(transform, self.spatial_shape)
        return replace(self, spatial_shape=tuple(shape), affine=affine)

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


def _unreadable(path: str | os.PathLike, error: Exception) -> str:
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return f"{path}: the header cannot be read (not an image, or truncated): {reason}"


def _file_information(name: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(_unreadable(name, error)) from None
    return reader


def _pixel_dtype(reader: sitk.ImageFileReader) -> np.dtype:
    return sitk.GetArrayViewFromImage(sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())).dtype


def _sitk_header(path: Path) -> ImageHeader:
    reader = _file_information(str(path))
    size = reader.GetSize()
    rank = min(reader.GetDimension(), 3)
    return ImageHeader(
        path=path,
        spatial_shape=tuple(int(n) for n in size[:rank]),
        channels=int(np.prod(size[3:], dtype=int)) * reader.GetNumberOfComponents(),
        affine=sitk_affine(reader, spatial_rank=rank),
        dtype=_pixel_dtype(reader),
    )


def _dicom_series_header(folder: Path, series_uid: str | None = None) -> ImageHeader:
    """The series' geometry as the reader stacks it: the first slice's plane, then the checked slice step
    (a folder that the reader would refuse is refused here too, before any training)."""
    geometry = check_dicom_series(folder, series_uid)
    files = geometry.series.files
    first = _file_information(files[0])
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(first.GetDirection()).reshape(3, 3) @ np.diag(first.GetSpacing())
    lps[:3, 3] = first.GetOrigin()
    if geometry.slice_step is not None:
        lps[:3, 2] = geometry.slice_step
    return ImageHeader(
        path=folder,
        spatial_shape=(*(int(n) for n in first.GetSize()[:2]), len(files)),
        channels=first.GetNumberOfComponents(),
        affine=orientation_ras_lps(lps),
        dtype=_pixel_dtype(first),
    )


def _dicom_seg_header(path: Path) -> ImageHeader:
    """The header of the series the SEG is read onto (see :func:`read_header`)."""
    header = _dicom_series_header(*find_source_series(path))
    return replace(header, path=path, channels=1, dtype=np.dtype(np.uint8))


def _pil_header(path: Path) -> ImageHeader:
    with Image.open(path) as image:
        width, height = image.size
        channels = len(image.getbands())
        dtype = np.asarray(image.crop((0, 0, 1, 1))).dtype
    return ImageHeader(
        path=path, spatial_shape=(width, height), channels=channels, affine=np.eye(3), dtype=dtype
    )


def grayscale(image: Image.Image) -> Image.Image:
    """PIL converter for 2D masks: one channel whatever the file stores (RGB or palette masks included)."""
    return image.convert("L")


def binary_mask(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A 2D mask as 0/1 (uint8): foreground from half of 1 up, the 2D preset's ``AsDiscreted(threshold=0.5)``,
    so 0/1 and 0/255 masks both work."""
    return (mask >= 0.5).astype(np.uint8) if isinstance(mask, np.ndarray) else (mask >= 0.5).to(torch.uint8)


def loader_for(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    mask: bool = False,
    ensure_channel_first: bool = False,
) -> Callable[[str | os.PathLike], MetaTensor]:
    """A loader (``path`` -> array-only ``MetaTensor``) the way the presets read ``path``: PIL for the 2D
    formats, the only reader tried (MONAI picks none for TIFF or GIF by itself; a ``mask`` is read as
    one grayscale channel); a DICOM SEG onto the series found beside it
    (:class:`~attnunet.transforms.loading.LoadDicomSeg`); MONAI's choice by suffix otherwise. A list of
    channel files is stacked by MONAI into one image, channels first."""
    if not isinstance(path, (str, os.PathLike)):
        return LoadImage(image_only=True, ensure_channel_first=ensure_channel_first)
    if getattr(file_format(path), "picture", False):
        reader = PILReader(converter=grayscale) if mask else PILReader()
        # Given at call time, the reader is the only one tried: no other reader's guess replaces its error.
        return functools.partial(
            LoadImage(image_only=True, ensure_channel_first=ensure_channel_first), reader=reader
        )
    if is_dicom_seg(path):
        return LoadDicomSeg(ensure_channel_first=ensure_channel_first)
    return LoadImage(image_only=True, ensure_channel_first=ensure_channel_first)


def _channels_header(paths: Sequence[str | os.PathLike]) -> ImageHeader:
    """One case stored as one file per channel: the first file's grid, the channels of all of them."""
    headers = [read_header(p) for p in paths]
    first = headers[0]
    for channel, header in enumerate(headers[1:], start=1):
        if header.spatial_shape != first.spatial_shape:
            raise ValueError(
                f"{header.path}: channel {channel} has shape {header.spatial_shape} but channel 0 "
                f"{first.path.name} has {first.spatial_shape}; every channel of a case must be on one grid"
            )
        if not np.allclose(header.affine, first.affine, rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"{header.path}: channel {channel} has another geometry (spacing, origin or direction) than "
                f"channel 0 {first.path.name}; resample every channel of a case onto one grid"
            )
    return replace(first, channels=sum(h.channels for h in headers))


def read_header(path: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageHeader:
    """Read the header of a NIfTI, NRRD, MetaImage, PNG/TIFF/JPEG/BMP file, a DICOM series folder or a
    DICOM SEG label, or of one case's channel files (a list of paths, one image on one grid).

    A DICOM SEG gives the header of the grid it is read onto: the series it references, found beside it
    (:func:`~attnunet.transforms.dicom_seg_read.find_source_series`), with ``path`` the SEG, one channel
    and ``uint8`` (a label map's values). The transform chains read a SEG label onto the case's image
    instead; both are the same series when the SEG lies beside its series.

    Args:
        path: the file or folder, or a list of channel files.

    Returns:
        An :class:`ImageHeader`; ``spatial_shape`` is in the order ``LoadImaged`` returns
        (PNG/TIFF: width, height). For channel files: the first file's path and grid, the channels of all.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder holds no DICOM series.
        ValueError: the header cannot be read (not an image, truncated header, unknown format), channel
            files of one case differ in shape or geometry,
            :func:`~attnunet.transforms.dicom_series.check_dicom_series` refuses a DICOM series folder, or
            a DICOM SEG's series is not found beside it.

    Example:
        >>> read_header("imagesTr/case_001.nii.gz").spatial_shape  # doctest: +SKIP
        (64, 64, 32)
    """
    if not isinstance(path, (str, os.PathLike)):
        return _channels_header(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        return _dicom_series_header(path)  # SimpleITK's errors are reported per file by _file_information
    if is_dicom_seg(path):
        return _dicom_seg_header(path)
    header = getattr(file_format(name), "header", "simpleitk")  # SimpleITK names what it cannot read
    if header == "simpleitk":
        return _sitk_header(path)
    try:
        return _nifti_header(path) if header == "nibabel" else _pil_header(path)
    except (ImageFileError, UnidentifiedImageError, OSError, EOFError, ValueError) as error:
        raise ValueError(_unreadable(path, error)) from None
