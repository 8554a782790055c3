"""The one table of image file formats: each suffix, the library that reads its header, and whether it
holds a 2D picture (pixels read by MONAI's ``PILReader``, given explicitly since MONAI picks no reader for
TIFF or GIF) or a volume (pixels read by the reader MONAI's ``LoadImage`` picks by suffix: nibabel for
NIfTI, :class:`~attnunet.transforms.readers.SimpleITKReader` for the rest).

Every list of suffixes in attnunet (dataset discovery, inference inputs, evaluation, the readers and
the header code) is derived from :data:`FILE_FORMATS`; a new format is one row here. DICOM is not a file
suffix: a series is a folder (:class:`~attnunet.transforms.readers.SimpleITKReader`) and a DICOM SEG a
``.dcm`` label (:mod:`~attnunet.transforms.dicom_seg_read`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "FILE_FORMATS",
    "IMAGE2D_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SIMPLEITK_SUFFIXES",
    "FileFormat",
    "file_format",
]


@dataclass(frozen=True)
class FileFormat:
    """One image file format.

    Attributes:
        name: what users call it.
        suffixes: lower-case file name endings, longest first (``.nii.gz`` before ``.nii``).
        header: the library :func:`~attnunet.transforms.headers.read_header` reads the header with,
            without decoding the pixels: ``"nibabel"``, ``"simpleitk"`` or ``"pil"``.
        picture: a 2D picture (RGB or grayscale, no geometry) rather than a volume.
    """

    name: str
    suffixes: tuple[str, ...]
    header: str
    picture: bool = False


FILE_FORMATS: tuple[FileFormat, ...] = (
    FileFormat("NIfTI", (".nii.gz", ".nii"), header="nibabel"),
    FileFormat("NRRD", (".nrrd", ".nhdr"), header="simpleitk"),
    FileFormat("MetaImage", (".mha", ".mhd"), header="simpleitk"),
    FileFormat("PNG", (".png",), header="pil", picture=True),
    FileFormat("TIFF", (".tif", ".tiff"), header="pil", picture=True),
    FileFormat("JPEG", (".jpg", ".jpeg"), header="pil", picture=True),
    FileFormat("BMP", (".bmp",), header="pil", picture=True),
    FileFormat("GIF", (".gif",), header="pil", picture=True),  # DRIVE's masks
)

# Volume suffixes (nibabel or SimpleITK), longest first so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES = tuple(s for f in FILE_FORMATS if not f.picture for s in f.suffixes)
# 2D picture suffixes, read by PIL.
IMAGE2D_SUFFIXES = tuple(s for f in FILE_FORMATS if f.picture for s in f.suffixes)
# Suffixes whose header nibabel reads.
NIFTI_SUFFIXES = tuple(s for f in FILE_FORMATS if f.header == "nibabel" for s in f.suffixes)
# What SimpleITK reads, in MONAI's ``is_supported_format`` spelling (no leading dot): every volume.
SIMPLEITK_SUFFIXES = tuple(s[1:] for s in IMAGE_SUFFIXES)


def file_format(path: str | os.PathLike) -> FileFormat | None:
    """The format of ``path`` by its suffix (any case), or None for none in the table.

    Example:
        >>> file_format("case_001.NII.GZ").name, file_format("21_training.gif").picture
        ('NIfTI', True)
    """
    name = os.fspath(path).lower()
    return next((f for f in FILE_FORMATS if name.endswith(f.suffixes)), None)
