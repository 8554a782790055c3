"""DICOM SEG out and in (transforms.dicom_seg, dicom_seg_read) on the real series of ../shared/data/dicom.

Frames are checked against the source files independently of our reader: the label map is a threshold
of the series as SimpleITKReader reads it, and each SEG frame, found by its source SOPInstanceUID,
must equal the same threshold of that file's own pixels read by pydicom. dcmqi's SEGs must give the
label map of dcmqi's own NRRD. Data is read in place or linked/rewritten under ``tmp_path``, never
copied into the repository.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_dataset
from monai.data import MetaTensor
from pydicom.pixels import apply_modality_lut
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from attnunet.transforms.dicom_seg import write_dicom_seg
from attnunet.transforms.dicom_seg_read import read_dicom_seg
from attnunet.transforms.readers import SimpleITKReader, sitk_affine

CT3 = "ct_3slices_with_seg"
OBLIQUE = "mr_brain_t1post_oblique"
SIEMENS = "ct_20slices_siemens"
NAMES = {"0": "background", "1": "bright", "2": "brightest"}


def real(name: str) -> Path:
    return shared_dataset("dicom", name)


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The series as the inference pipeline reads it: (x, y, z) array and RAS affine."""
    reader = SimpleITKReader()
    array, meta = reader.get_data(reader.read(folder))
    return array, meta["affine"]


def two_classes(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """A label map from the pixels themselves: 1 above ``low``, 2 above ``high``."""
    return (array > low).astype(np.uint8) + (array > high)


def thresholds(array: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(array, 80)), float(np.percentile(array, 97))


def series_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


def assert_frames_on_their_slices(seg_path: Path, folder: Path, low: float, high: float) -> None:
    """Each source file's frame in the SEG equals the threshold of that file's own pixels."""
    seg = hd.seg.segread(seg_path)
    for source in series_files(folder):
        expected = two_classes(apply_modality_lut(source.pixel_array, source), low, high)
        frame = seg.get_pixels_by_source_instance(
            [source.SOPInstanceUID],
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
        )[0]
        np.testing.assert_array_equal(frame, expected, err_msg=f"frame of {source.filename}")


def assert_references(seg_path: Path, folder: Path) -> None:
    """pydicom sees a SEG of this series: study, series, instances and frame of reference."""
    seg = pydicom.dcmread(seg_path)
    sources = series_files(folder)
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    instances = {source.SOPInstanceUID for source in sources}
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == instances
    frame_sources = {
        item.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for item in frame.DerivationImageSequence[0].SourceImageSequence
    }
    assert frame_sources <= instances


def assert_geometry(seg_path: Path, folder: Path) -> None:
    """Every frame has its source image's position, orientation and pixel spacing."""
    seg = pydicom.dcmread(seg_path)
    sources = {source.SOPInstanceUID: source for source in series_files(folder)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    any_source = next(iter(sources.values()))
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in any_source.ImageOrientationPatient],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
        [float(v) for v in any_source.PixelSpacing],
    )
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in sources[uid].ImagePositionPatient],
            atol=1e-4,
        )


@pytest.fixture(scope="module")
def oblique_seg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, tuple[float, float]]:
    """The oblique MR's two-class threshold, written once: (SEG path, label map, thresholds)."""
    folder = real(OBLIQUE)
    array, affine = read_series(folder)
    low, high = thresholds(array)
    labels = two_classes(array, low, high)
    path = write_dicom_seg(labels, folder, tmp_path_factory.mktemp("seg") / "mr.dcm", NAMES, affine=affine)
    return path, labels, (low, high)


def test_oblique_frames_land_on_their_source_slices(oblique_seg):
    path, _, (low, high) = oblique_seg
    assert_frames_on_their_slices(path, real(OBLIQUE), low, high)


def test_oblique_seg_references_its_series_with_its_geometry(oblique_seg):
    path, _, _ = oblique_seg
    assert_references(path, real(OBLIQUE))
    assert_geometry(path, real(OBLIQUE))


def test_segments_are_named_coded_and_attributed(oblique_seg):
    seg = hd.seg.segread(oblique_seg[0])
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [
        "bright",
        "brightest",
    ]
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        assert description.segmented_property_category == codes.SCT.Tissue
        assert description.segmented_property_type == codes.SCT.Tissue
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == "attnunet"
        assert algorithm.AlgorithmVersion == importlib.metadata.version("attnunet")


def test_oblique_seg_reads_back_to_the_same_label_map(oblique_seg):
    path, labels, _ = oblique_seg
    back = read_dicom_seg(path, real(OBLIQUE))
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.affine, read_series(real(OBLIQUE))[1])
    assert back.names == {1: "bright", 2: "brightest"}


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_round_trip_keeps_class_values_with_gaps(tmp_path, segmentation_type):
    folder = real(CT3) / "image"
    array, affine = read_series(folder)
    labels = two_classes(array, *thresholds(array)) * 2  # classes 0, 2 and 4
    names = {"0": "background", "2": "soft", "4": "bone", "5": "absent"}  # no 1 or 3; 5 is not in labels
    path = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", names, segmentation_type=segmentation_type)
    seg = hd.seg.segread(path)
    assert seg.segmentation_type.value == segmentation_type
    # Segment numbers run 1..3 in class order; an absent class keeps its (empty) segment.
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [
        "soft",
        "bone",
        "absent",
    ]
    back = read_dicom_seg(path, folder, class_names=names)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.affine, affine)
    assert back.names == {2: "soft", 4: "bone", 5: "absent"}
    # Without class names a value is its segment number.
    np.testing.assert_array_equal(read_dicom_seg(path, folder).labels, labels // 2)


def test_writes_a_channel_first_float_metatensor_prediction(tmp_path):
    """What the inference pipeline holds after Invertd and AsDiscrete(argmax=True)."""
    folder = real(CT3) / "image"
    array, affine = read_series(folder)
    labels = two_classes(array, *thresholds(array))
    prediction = MetaTensor(labels[None].astype(np.float32), affine=affine)
    path = write_dicom_seg(prediction, folder, tmp_path / "seg.dcm", NAMES)
    np.testing.assert_array_equal(read_dicom_seg(path, folder).labels, labels)


def test_an_empty_label_map_is_written_with_empty_segments(tmp_path):
    folder = real(CT3) / "image"
    labels = np.zeros(read_series(folder)[0].shape, np.uint8)
    path = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", NAMES)
    assert hd.seg.segread(path).segment_numbers == [1, 2]
    back = read_dicom_seg(path, folder)
    assert not back.labels.any() and back.labels.shape == labels.shape


def test_siemens_series_with_blank_uids_gets_a_seg_of_its_instances(tmp_path, caplog):
    """TotalSegmentator's anonymised CT keeps only its frame of reference: the SOP UIDs come from the
    file meta, the study and series UIDs are derived (the same for every SEG of the series)."""
    folder = real(SIEMENS)
    array, affine = read_series(folder)
    low, high = thresholds(array)
    labels = two_classes(array, low, high)
    with caplog.at_level(logging.WARNING, logger="attnunet.transforms.dicom_seg"):
        first = write_dicom_seg(labels, folder, tmp_path / "a.dcm", NAMES, affine=affine)
    assert "ct_20slices_siemens: the series' files have no SeriesInstanceUID" in caplog.text
    second = write_dicom_seg(labels, folder, tmp_path / "b.dcm", NAMES, affine=affine)
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.iterdir())]
    seg, again = pydicom.dcmread(first), pydicom.dcmread(second)
    (referenced,) = seg.ReferencedSeriesSequence
    instances = {source.file_meta.MediaStorageSOPInstanceUID for source in sources}
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == instances
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert referenced.SeriesInstanceUID and seg.StudyInstanceUID, "type 1 UIDs may not be blank"
    assert again.ReferencedSeriesSequence[0].SeriesInstanceUID == referenced.SeriesInstanceUID
    assert again.StudyInstanceUID == seg.StudyInstanceUID and again.SOPInstanceUID != seg.SOPInstanceUID
    np.testing.assert_array_equal(read_dicom_seg(first, folder).labels, labels)


def test_a_series_without_a_frame_of_reference_is_refused(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    for source in sorted((real(CT3) / "image").iterdir()):
        dataset = pydicom.dcmread(source)
        dataset.FrameOfReferenceUID = ""
        dataset.save_as(folder / source.name)
    labels = np.zeros(read_series(folder)[0].shape, np.uint8)
    with pytest.raises(ValueError, match=r"ct: the series' files lack FrameOfReferenceUID"):
        write_dicom_seg(labels, folder, tmp_path / "seg.dcm", NAMES)
    assert not (tmp_path / "seg.dcm").exists()


def test_siemens_series_with_uids_added(tmp_path):
    """The same Siemens CT (JPEG 2000 files) rewritten under tmp_path with the UIDs a SEG references."""
    folder = tmp_path / "ct"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for source in sorted(real(SIEMENS).iterdir()):
        dataset = pydicom.dcmread(source)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.save_as(folder / source.name)
    array, affine = read_series(folder)
    low, high = thresholds(array)
    labels = two_classes(array, low, high)
    path = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", NAMES, affine=affine)
    assert_frames_on_their_slices(path, folder, low, high)
    assert_references(path, folder)
    assert_geometry(path, folder)
    np.testing.assert_array_equal(read_dicom_seg(path, folder).labels, labels)


def test_dcmqi_liver_seg_equals_its_nrrd():
    liver = sitk.ReadImage(real(CT3) / "liver_seg.nrrd")
    back = read_dicom_seg(real(CT3) / "liver.dcm", real(CT3) / "image", class_names=["background", "liver"])
    np.testing.assert_array_equal(back.labels, sitk.GetArrayFromImage(liver).T)  # NRRD's (z, y, x)
    np.testing.assert_allclose(back.affine, sitk_affine(liver), atol=1e-4)
    assert back.names == {1: "Liver"}  # the SEG's label; matched to "liver" case-insensitively


def test_overlapping_segments_are_refused_by_name():
    seg_path = real(CT3) / "partial_overlaps.dcm"
    with pytest.raises(
        ValueError, match=r"segments overlap \(1 'GREEN' and 2 'ORANGE': \d+ voxels;.*segments="
    ):
        read_dicom_seg(seg_path, real(CT3) / "image")


def test_segments_that_do_not_overlap_can_be_selected():
    seg_path = real(CT3) / "partial_overlaps.dcm"
    back = read_dicom_seg(seg_path, real(CT3) / "image", segments=["green", 4, 5])
    assert back.names == {1: "GREEN", 4: "LIGHT_BLUE", 5: "DARK_BLUE"}
    # Each segment alone, from highdicom on the SEG's own grid, matched onto the series' grid.
    image = SimpleITKReader().read(real(CT3) / "image")
    masks = (
        hd.seg.segread(seg_path)
        .get_volume(segment_numbers=[1, 4, 5])
        .match_geometry(hd.Volume.from_simpleitk(image))
        .array
    )
    for channel, number in enumerate([1, 4, 5]):
        np.testing.assert_array_equal(back.labels == number, masks[..., channel].astype(bool))


def test_unknown_segment_and_class_are_refused():
    seg_path, folder = real(CT3) / "partial_overlaps.dcm", real(CT3) / "image"
    with pytest.raises(ValueError, match=r"has no segment 'spleen'; its segments are 1 'GREEN', 2 'ORANGE'"):
        read_dicom_seg(seg_path, folder, segments=["spleen"])
    with pytest.raises(ValueError, match=r"segment 1 'GREEN' has no class in class_names"):
        read_dicom_seg(seg_path, folder, segments=[1], class_names={"0": "background", "1": "liver"})


def test_a_file_that_is_not_a_seg_is_refused():
    source = sorted((real(CT3) / "image").iterdir())[0]
    with pytest.raises(
        ValueError, match=r"01\.dcm cannot be read as a DICOM SEG: Dataset is not a Segmentation"
    ):
        read_dicom_seg(source, real(CT3) / "image")


def test_a_series_folder_is_needed(tmp_path, ct3_labels):
    folder, labels, _ = ct3_labels
    one_file = sorted(folder.iterdir())[0]
    with pytest.raises(ValueError, match=r"01\.dcm is not a folder: .*give the series' folder"):
        read_dicom_seg(real(CT3) / "liver.dcm", one_file)
    with pytest.raises(ValueError, match=r"01\.dcm is not a folder"):
        write_dicom_seg(labels, one_file, tmp_path / "seg.dcm", NAMES)


def test_a_seg_of_another_series_is_refused():
    with pytest.raises(ValueError, match=r"mr_brain_t1post_oblique has no DICOM series '1\.2\.392"):
        read_dicom_seg(real(CT3) / "liver.dcm", real(OBLIQUE))


@pytest.fixture
def ct3_labels() -> tuple[Path, np.ndarray, np.ndarray]:
    folder = real(CT3) / "image"
    array, affine = read_series(folder)
    return folder, two_classes(array, *thresholds(array)), affine


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda labels, affine: (labels.transpose(2, 1, 0), {}),
            r"labels have shape \(3, 512, 512\), the series",
        ),
        (lambda labels, affine: (labels, {"affine": np.diag([1.0, 1, 1, 1])}), r"the labels' affine differs"),
        (lambda labels, affine: (labels * 3, {}), r"labels hold values \[3, 6\] that class_names"),
        (lambda labels, affine: (labels / 2, {}), r"labels have fractional values"),
        (lambda labels, affine: (labels, {"segmentation_type": "FRACTIONAL"}), r"segmentation_type must be"),
    ],
    ids=["shape", "affine", "unnamed", "fractional", "type"],
)
def test_bad_labels_are_refused(tmp_path, ct3_labels, change, message):
    folder, labels, affine = ct3_labels
    bad, options = change(labels, affine)
    with pytest.raises(ValueError, match=message):
        write_dicom_seg(bad, folder, tmp_path / "seg.dcm", NAMES, **options)
    assert not list(tmp_path.iterdir())


def test_no_foreground_class_is_refused(tmp_path, ct3_labels):
    folder, labels, _ = ct3_labels
    with pytest.raises(ValueError, match=r"names no foreground class"):
        write_dicom_seg(labels, folder, tmp_path / "seg.dcm", {"0": "background"})


def test_an_existing_output_is_never_replaced(tmp_path, ct3_labels):
    folder, labels, _ = ct3_labels
    existing = tmp_path / "seg.dcm"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match=r"seg\.dcm already exists"):
        write_dicom_seg(labels, folder, existing, NAMES)
    assert existing.read_bytes() == b"keep"
