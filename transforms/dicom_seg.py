"""DICOM SEG output: label maps on the grid of their source DICOM series, via highdicom.

Array contract, shared with :mod:`attnunet.transforms.dicom_seg_read` (the same as
:class:`~attnunet.transforms.readers.SimpleITKReader` reading the series folder): a label map is indexed
``(x, y, z)`` = (column, row, slice), where slice ``k`` is the ``k``-th file of the series sorted along
the slice normal (by ``check_dicom_series``), i.e. the transpose of ``SimpleITK.GetArrayFromImage`` of
the series. Its affine is that reader's 4 x 4 RAS affine. An inference prediction inverted to its
input's grid (``Invertd``) is in exactly this layout, so it is written without resampling;
``read_dicom_seg`` returns the same layout, so ``read_dicom_seg(write_dicom_seg(x, ...), ...).labels == x``.

Writing: one segment per foreground class named in ``class_names`` (segment numbers 1..K in
ascending class value, so classes 1..K keep their numbers), named after the class. Classes absent
from the label map are kept as empty segments, so every SEG of one model lists the same segments.
Every segment has the generic segmented property category and type SCT 85756007 "Tissue" (what
dcmqi uses for an unspecified tissue), unless ``segment_codes`` gives a class its own pair, e.g.
``(codes.SCT.Organ, codes.SCT.Liver)``; the algorithm is identified as "attnunet" (family DCM 123110
"Artificial Intelligence") with the installed package's version. An empty label map is written (a
SEG whose segments are all empty): "nothing found" is a valid result of inference, and refusing it
would stop a pipeline on a negative case. The source images are the series' own files read by
pydicom, so highdicom takes the patient, study, frame of reference, referenced series and instances
and each frame's plane position and orientation (oblique included) from them.

Anonymised series can have UIDs blanked (TotalSegmentator's Siemens CT keeps only the frame of
reference). A blank SOP Class or Instance UID is taken from the file's meta header, which by the
standard holds the same value. A blank Study or Series Instance UID cannot be recovered: one is derived
from the series' SOP Instance UIDs (the same series gives the same UID every time), with a warning,
and the SEG still references every source instance by its own UID and the series' frame of
reference. A series without SOP Instance UIDs or a frame of reference is refused.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.config import NdarrayOrTensor
from monai.utils import convert_to_numpy, optional_import
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from attnunet.atomic import atomic_output
from attnunet.transforms.dicom_series import check_dicom_series
from attnunet.transforms.readers import SimpleITKReader, sitk_affine

# highdicom and SimpleITK are needed only when a DICOM SEG is read or written, not on the GPU
# check's inference path (which carries neither); their first use says to install them.
hd, _ = optional_import("highdicom")
sitk, _ = optional_import("SimpleITK")

__all__ = [
    "write_dicom_seg",
    "ClassNames",
    "DEFAULT_CATEGORY",
    "DEFAULT_TYPE",
    "SEGMENTATION_TYPES",
]

logger = logging.getLogger(__name__)

ClassNames = Mapping[int | str, str] | Sequence[str]
"""Class names by label value: a mapping such as dataset.json's ``{"0": "background", "1": "liver"}``,
or a list whose index is the label value."""

DEFAULT_CATEGORY: Code = codes.SCT.Tissue
DEFAULT_TYPE: Code = codes.SCT.Tissue
SEGMENTATION_TYPES = ("BINARY", "LABELMAP")

# A label map's affine (after inference and Invertd, float round-off) must match the series' to this,
# in mm; any real mismatch (another grid, LPS instead of RAS) is far larger.
_AFFINE_ATOL = 1e-3
# UIDs the SEG references; blanks are filled from the file meta or derived (module docstring).
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID")
_FILE_META_UIDS = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}
_DERIVABLE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID")


def write_dicom_seg(
    labels: NdarrayOrTensor,
    series_folder: str | os.PathLike,
    output_path: str | os.PathLike,
    class_names: ClassNames,
    *,
    affine: NdarrayOrTensor | None = None,
    series_uid: str | None = None,
    segmentation_type: str = "BINARY",
    segment_codes: Mapping[int, tuple[Code, Code]] | None = None,
    series_number: int = 300,
    series_description: str = "attnunet segmentation",
) -> Path:
    """Write an integer label map on the grid of a DICOM series as one DICOM SEG.

    Args:
        labels: label map ``(x, y, z)`` or channel-first ``(1, x, y, z)`` in the series' own voxel
            order (see the module's contract); a numpy array, tensor or MetaTensor, integer or
            integer-valued float (as ``AsDiscrete(argmax=True)`` gives).
        series_folder: the source DICOM series folder (single-frame files).
        output_path: the SEG file to create; never replaced.
        class_names: name of each label value (see :data:`ClassNames`); 0 is background and gets no
            segment.
        affine: the labels' 4 x 4 RAS affine, checked against the series'; defaults to
            ``labels.affine`` for a MetaTensor, unchecked for a plain array.
        series_uid: the series to use when the folder holds several.
        segmentation_type: ``"BINARY"`` (opened by most viewers) or ``"LABELMAP"`` (DICOM 2024).
        segment_codes: per class value, its (segmented property category, type) codes; the other
            classes get (:data:`DEFAULT_CATEGORY`, :data:`DEFAULT_TYPE`).
        series_number: the SEG's SeriesNumber.
        series_description: the SEG's SeriesDescription.

    Returns:
        ``output_path``.

    Raises:
        FileExistsError: ``output_path`` exists.
        ValueError: the labels do not match the series (shape, affine), are not integers, hold a value
            without a class name; no foreground class is named; the series is multi-frame, its files
            lack SOP Instance UIDs or a frame of reference (see above) or disagree with the reader's
            slice order; or the folder does not hold one readable series (see ``SimpleITKReader``).

    Example:
        >>> write_dicom_seg(
        ...     prediction[0], "scans/ct1", "out/ct1_seg.dcm", {"0": "background", "1": "liver"}
        ... )  # doctest: +SKIP
        PosixPath('out/ct1_seg.dcm')
    """
    output_path = Path(output_path)
    if output_path.exists():
        raise FileExistsError(f"{output_path} already exists; a DICOM SEG is never replaced")
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}")
    names = class_name_table(class_names)
    foreground = sorted(value for value in names if value != 0)
    if not foreground:
        raise ValueError(f"class_names {dict(names)} names no foreground class (a value other than 0)")
    image = read_source_series(series_folder, series_uid)
    array = _label_array(labels, affine, image, series_folder, names)
    seg = hd.seg.Segmentation(
        source_images=_source_datasets(series_folder, series_uid, image),
        pixel_array=_frames(array, foreground),
        segmentation_type=segmentation_type,
        segment_descriptions=_segment_descriptions(foreground, names, segment_codes or {}),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="attnunet",
        manufacturer_model_name="attnunet",
        software_versions=_version(),
        device_serial_number="0",  # required (type 1) and meaningless for software
        series_description=series_description,
    )
    with atomic_output(output_path) as tmp:
        seg.save_as(tmp)
    return output_path


def class_name_table(class_names: ClassNames) -> dict[int, str]:
    """``class_names`` as {label value: name}; string keys (dataset.json's) must be integers."""
    items = class_names.items() if isinstance(class_names, Mapping) else enumerate(class_names)
    names = {}
    for key, name in items:
        try:
            names[int(key)] = str(name)
        except ValueError:
            raise ValueError(f"class_names key {key!r} is not an integer label value") from None
    return names


def read_source_series(folder: str | os.PathLike, series_uid: str | None) -> sitk.Image:
    """The series as the inference pipeline reads it: its grid defines the label map's."""
    if not Path(folder).is_dir():
        raise ValueError(
            f"{folder} is not a folder: a DICOM SEG lies on the grid of a DICOM series, so give the series' "
            "folder"
        )
    return SimpleITKReader(series_uid=series_uid).read(folder)


def _label_array(
    labels: NdarrayOrTensor,
    affine: NdarrayOrTensor | None,
    image: sitk.Image,
    folder: str | os.PathLike,
    names: Mapping[int, str],
) -> np.ndarray:
    """``labels`` as an integer (x, y, z) array, checked against the series' shape and affine and the
    class names."""
    array = convert_to_numpy(labels)
    if array.ndim == 4 and array.shape[0] == 1:  # MONAI's channel-first prediction
        array = array[0]
    if array.shape != image.GetSize():
        raise ValueError(
            f"labels have shape {array.shape}, the series in {folder} has {image.GetSize()} (x, y, z): "
            "labels must be in the series' own grid and voxel order"
        )
    affine = getattr(labels, "affine", None) if affine is None else affine
    if affine is not None:
        difference = np.abs(convert_to_numpy(affine) - sitk_affine(image)).max()
        if not difference <= _AFFINE_ATOL:
            raise ValueError(
                f"the labels' affine differs from the series' in {folder} by up to {difference:.4g} mm: "
                "labels must be in the series' own grid (RAS affine, inverted to the input's grid)"
            )
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise ValueError("labels have fractional values; pass a label map (argmax or threshold)")
        array = array.astype(np.int64)
    unnamed = sorted(set(np.unique(array).tolist()) - set(names) - {0})
    if unnamed:
        raise ValueError(f"labels hold values {unnamed} that class_names {dict(names)} does not name")
    return array


def _frames(array: np.ndarray, foreground: Sequence[int]) -> np.ndarray:
    """The label map as highdicom's (frame, row, column) array of segment numbers 1..K."""
    # Segment numbers must run 1..K: class values map to them in ascending order.
    lookup = np.zeros(max(foreground) + 1, dtype=np.min_scalar_type(len(foreground)))
    lookup[list(foreground)] = np.arange(1, len(foreground) + 1)
    # (x, y, z) -> (frame, row, column): frame k is the k-th sorted file, its source image.
    return lookup[array].transpose(2, 1, 0)


# Type 2 attributes of the Patient and General Study modules that highdicom reads from the source.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _source_datasets(
    folder: str | os.PathLike, series_uid: str | None, image: sitk.Image
) -> list[pydicom.Dataset]:
    """The series' files as highdicom's source images, file ``k`` being slice ``k`` of ``image``."""
    # The same files in the same order as SimpleITKReader stacked them into ``image``.
    series = check_dicom_series(folder, series_uid).series
    if series.num_slices != image.GetDepth():
        raise ValueError(
            f"{folder}: series {series} has {series.num_slices} files for {image.GetDepth()} slices; "
            "only series of single-frame files are supported"
        )
    datasets = [pydicom.dcmread(name, stop_before_pixels=True) for name in series.files]
    _fill_blank_uids(folder, datasets)
    _check_slice_order(folder, datasets, image)
    for ds in datasets:
        # An empty SpecificCharacterSet means the default repertoire, but highdicom rejects the value.
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        # Patient and study attributes of type 2 may be empty but must be present; highdicom copies
        # them from the source, and some anonymised series leave them out.
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def _fill_blank_uids(folder: str | os.PathLike, datasets: Sequence[pydicom.Dataset]) -> None:
    """Fill blank SOP UIDs from the file meta and derive blank study/series UIDs (module docstring)."""
    for ds in datasets:
        meta = getattr(ds, "file_meta", pydicom.Dataset())
        for keyword, meta_keyword in _FILE_META_UIDS.items():
            if not ds.get(keyword) and meta.get(meta_keyword):
                setattr(ds, keyword, meta.get(meta_keyword))
    missing = sorted({key for ds in datasets for key in _REQUIRED_UIDS if not ds.get(key)})
    if missing:
        raise ValueError(
            f"{folder}: the series' files lack {', '.join(missing)} (anonymised without UIDs?); "
            "a DICOM SEG must reference its source images by them"
        )
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for keyword in _DERIVABLE_UIDS:
        if any(not ds.get(keyword) for ds in datasets):
            uid = generate_uid(entropy_srcs=[keyword, *instances])
            logger.warning(
                "%s: the series' files have no %s; the DICOM SEG refers to it as %s (derived from the "
                "series' SOP Instance UIDs) and to every source instance by its own UID",
                folder,
                keyword,
                uid,
            )
            for ds in datasets:
                setattr(ds, keyword, uid)


def _check_slice_order(
    folder: str | os.PathLike, datasets: Sequence[pydicom.Dataset], image: sitk.Image
) -> None:
    """Refuse to write when file ``k`` is not slice ``k`` of the image: frames would land on wrong slices."""
    for k, ds in enumerate(datasets):
        distance = np.linalg.norm(
            np.asarray(ds.ImagePositionPatient, dtype=float) - image.TransformIndexToPhysicalPoint((0, 0, k))
        )
        if distance > image.GetSpacing()[2] / 2:
            raise ValueError(
                f"{folder}: file {ds.filename} is {distance:.3g} mm away from slice {k} of the series as "
                "read; the reader's slice order and the files' do not agree"
            )


def _segment_descriptions(
    foreground: Sequence[int], names: Mapping[int, str], segment_codes: Mapping[int, tuple[Code, Code]]
) -> list[hd.seg.SegmentDescription]:
    """One automatic segment per foreground class, numbered 1..K in ``foreground`` order."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="attnunet", family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions = []
    for number, value in enumerate(foreground, start=1):
        category, property_type = segment_codes.get(value, (DEFAULT_CATEGORY, DEFAULT_TYPE))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value],
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    return descriptions


def _version() -> str:
    return importlib.metadata.version("attnunet")
