"""attnunet.transforms: image readers and MONAI dictionary-transform presets.

Importing it registers :class:`SimpleITKReader` with MONAI, so ``LoadImaged(keys, reader="SimpleITKReader")``
works and DICOM series folders, NRRD and MetaImage files load through MONAI's automatic reader choice.
"""

from attnunet.transforms.headers import ImageHeader, read_header
from attnunet.transforms.presets import build_transforms, ct_transforms, image2d_transforms, mr_transforms
from attnunet.transforms.readers import DicomSeries, SimpleITKReader, list_dicom_series

__all__ = [
    "SimpleITKReader",
    "DicomSeries",
    "list_dicom_series",
    "ImageHeader",
    "read_header",
    "build_transforms",
    "ct_transforms",
    "mr_transforms",
    "image2d_transforms",
]
