"""attnunet.transforms: image readers, DICOM series and SEG, and MONAI dictionary-transform presets.

Importing it registers :class:`SimpleITKReader` with MONAI, so ``LoadImaged(keys, reader="SimpleITKReader")``
works and DICOM series folders, NRRD and MetaImage files load through MONAI's automatic reader choice.
"""

from attnunet.transforms.dicom_seg import write_dicom_seg
from attnunet.transforms.dicom_seg_read import (
    DicomSegLabels,
    find_source_series,
    is_dicom_seg,
    read_dicom_seg,
    segment_labels,
)
from attnunet.transforms.dicom_series import (
    DicomGeometry,
    DicomSeries,
    check_dicom_series,
    list_dicom_series,
    subfolders,
)
from attnunet.transforms.headers import ImageHeader, read_header
from attnunet.transforms.loading import LoadDicomSeg, LoadImageLabeld
from attnunet.transforms.presets import build_transforms, ct_transforms, image2d_transforms, mr_transforms
from attnunet.transforms.readers import SimpleITKReader

__all__ = [
    "SimpleITKReader",
    "DicomSeries",
    "DicomGeometry",
    "list_dicom_series",
    "check_dicom_series",
    "subfolders",
    "write_dicom_seg",
    "read_dicom_seg",
    "DicomSegLabels",
    "is_dicom_seg",
    "segment_labels",
    "find_source_series",
    "LoadDicomSeg",
    "LoadImageLabeld",
    "ImageHeader",
    "read_header",
    "build_transforms",
    "ct_transforms",
    "mr_transforms",
    "image2d_transforms",
]
