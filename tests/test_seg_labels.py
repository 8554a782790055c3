"""DICOM SEG labels in training and evaluation, on ../shared/data/dicom/ct_3slices_with_seg.

dcmqi's ``liver.dcm`` (one segment, "Liver") and ``partial_overlaps.dcm`` (five overlapping segments)
of the 3-slice CT series ``image/``, with dcmqi's own label map ``liver_seg.nrrd`` as the reference.
Dataset layouts are built from links under ``tmp_path``; nothing is copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_dataset

from attnunet.cli import main
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.files import innermost_cause
from attnunet.pipelines.data.label_classes import classes_from_labels
from attnunet.pipelines.data.validation import DataValidationError, validate_items
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.transforms.dicom_seg_read import find_source_series, is_dicom_seg, segment_labels
from attnunet.transforms.headers import loader_for, read_header
from attnunet.transforms.loading import LoadDicomSeg, LoadImageLabeld
from attnunet.transforms.presets import build_transforms
from attnunet.transforms.readers import SimpleITKReader

UID = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"


@pytest.fixture(scope="module")
def ct3() -> Path:
    return shared_dataset("dicom", "ct_3slices_with_seg")


@pytest.fixture(scope="module")
def reference(ct3: Path) -> np.ndarray:
    """dcmqi's liver label map as (x, y, z), the series' own voxel order."""
    return sitk.GetArrayFromImage(sitk.ReadImage(ct3 / "liver_seg.nrrd")).T


def series_affine(folder: Path) -> np.ndarray:
    reader = SimpleITKReader()
    return reader.get_data(reader.read(folder))[1]["affine"]


def write_csv(path: Path, rows: list[tuple[Path, Path]]) -> Path:
    path.write_text("image,label\n" + "".join(f"{image},{label}\n" for image, label in rows))
    return path


@pytest.fixture
def pairs(ct3: Path, tmp_path: Path) -> Path:
    """``images/case1/`` (the series) and ``labels/case1.dcm`` (its SEG), as links."""
    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "case1").symlink_to(ct3 / "image", target_is_directory=True)
    (root / "labels" / "case1.dcm").symlink_to(ct3 / "liver.dcm")
    return root


def test_is_dicom_seg(ct3, tmp_path):
    (tmp_path / "notes.dcm").write_text("not DICOM")
    assert is_dicom_seg(ct3 / "liver.dcm") and is_dicom_seg(str(ct3 / "partial_overlaps.dcm"))
    others = [ct3 / "image", ct3 / "image" / "01.dcm", ct3 / "liver_seg.nrrd", tmp_path / "notes.dcm"]
    assert not any(is_dicom_seg(path) for path in [*others, tmp_path / "missing.dcm"])


def test_segment_labels(ct3):
    assert segment_labels(ct3 / "liver.dcm") == {1: "Liver"}
    assert list(segment_labels(ct3 / "partial_overlaps.dcm").values()) == [
        "GREEN",
        "ORANGE",
        "PURPLE",
        "LIGHT_BLUE",
        "DARK_BLUE",
    ]
    with pytest.raises(ValueError, match=r"01\.dcm is not a DICOM SEG"):
        segment_labels(ct3 / "image" / "01.dcm")


def test_the_series_is_found_in_the_segs_folder_or_beside_its_label_folder(ct3, pairs):
    assert find_source_series(ct3 / "liver.dcm") == (ct3 / "image", UID)
    assert find_source_series(pairs / "labels" / "case1.dcm") == (pairs / "images" / "case1", UID)


def test_a_seg_away_from_its_series_is_refused_in_one_line(ct3, tmp_path):
    (tmp_path / "labels").mkdir()
    away = tmp_path / "labels" / "liver.dcm"
    away.symlink_to(ct3 / "liver.dcm")
    message = rf"liver\.dcm: the DICOM series it references \({UID}\) is in no folder beside it; keep each"
    for read in (find_source_series, read_header, LoadDicomSeg()):
        with pytest.raises(ValueError, match=message):
            read(away)
    with pytest.raises(ValueError, match=r"01\.dcm is not a DICOM SEG"):
        find_source_series(ct3 / "image" / "01.dcm")


def test_a_seg_without_a_series_reference_is_refused(ct3, tmp_path):
    seg = pydicom.dcmread(ct3 / "liver.dcm")
    del seg.ReferencedSeriesSequence
    seg.save_as(tmp_path / "orphan.dcm")
    with pytest.raises(ValueError, match=r"orphan\.dcm references no DICOM series .*export it again"):
        find_source_series(tmp_path / "orphan.dcm")


def test_a_segs_header_is_its_series_header(ct3):
    seg, series = read_header(ct3 / "liver.dcm"), read_header(ct3 / "image")
    assert seg.path == ct3 / "liver.dcm" and seg.channels == 1 and seg.dtype == np.uint8
    assert seg.spatial_shape == series.spatial_shape == (512, 512, 3)
    np.testing.assert_array_equal(seg.affine, series.affine)


def test_loader_for_a_seg_reads_it_onto_the_series_beside_it(ct3, reference):
    label = loader_for(ct3 / "liver.dcm", mask=True, ensure_channel_first=True)(ct3 / "liver.dcm")
    assert label.shape == (1, *reference.shape)
    np.testing.assert_array_equal(label[0].numpy(), reference)


def test_load_dicom_seg_gives_a_label_like_load_image(ct3, reference):
    label = LoadDicomSeg()(ct3 / "liver.dcm", ct3 / "image")
    assert label.dtype.is_floating_point and label.shape == reference.shape
    np.testing.assert_array_equal(label.numpy(), reference)
    np.testing.assert_allclose(label.affine.numpy(), series_affine(ct3 / "image"), atol=1e-6)
    np.testing.assert_allclose(label.meta["spacing"], [0.810547, 0.810547, 1.0], atol=1e-5)
    assert label.meta["filename_or_obj"] == str(ct3 / "liver.dcm")
    assert label.meta["source_series"] == str(ct3 / "image")
    named = LoadDicomSeg(class_names={"0": "background", "2": "liver"})(ct3 / "liver.dcm", ct3 / "image")
    np.testing.assert_array_equal(named.numpy(), reference * 2)
    picked = LoadDicomSeg(segments=["green"])(ct3 / "partial_overlaps.dcm", ct3 / "image")
    assert set(np.unique(picked.numpy())) == {0.0, 1.0}


def test_a_seg_label_is_read_onto_an_image_loaded_before(ct3, reference):
    case = LoadImageLabeld("image")({"image": str(ct3 / "image"), "label": str(ct3 / "liver.dcm")})
    label = LoadImageLabeld("label")(case)["label"]
    np.testing.assert_array_equal(label.numpy(), reference)


def test_a_seg_label_needs_its_image(ct3):
    with pytest.raises(ValueError, match=r"liver\.dcm is a DICOM SEG label.*the case has no 'image' path"):
        LoadImageLabeld("label")({"label": str(ct3 / "liver.dcm")})


def test_overlapping_segments_are_refused_in_one_line(ct3):
    chain = build_transforms("ct", "val")
    with pytest.raises(RuntimeError) as refused:
        chain({"image": str(ct3 / "image"), "label": str(ct3 / "partial_overlaps.dcm")})
    message = innermost_cause(refused.value)
    assert message.startswith("ValueError: ") and "\n" not in message
    assert "segments overlap (1 'GREEN' and 2 'ORANGE'" in message
    assert "pick segments that do not overlap with segments=[...]" in message


@pytest.fixture
def csv_dataset(ct3, tmp_path) -> Path:
    return write_csv(tmp_path / "cases.csv", [(ct3 / "image", ct3 / "liver.dcm")])


def test_a_csv_of_series_and_segs_goes_through_discovery_validation_and_the_chains(
    ct3, csv_dataset, reference
):
    index = discover_dataset(csv_dataset)
    assert index.layout == "csv" and index.labels == {"0": "background", "1": "Liver"}
    assert index.items == [{"image": str(ct3 / "image"), "label": str(ct3 / "liver.dcm")}]
    validate_items(index.items, labels=index.labels)
    nrrd_case = {"image": str(ct3 / "image"), "label": str(ct3 / "liver_seg.nrrd")}
    val = build_transforms("ct", "val")
    from_seg, from_nrrd = val(dict(index.items[0])), val(nrrd_case)
    # the chain (RAS, cropped to the body) undone gives the series' own grid back, in LPS order
    np.testing.assert_array_equal(val.inverse(dict(from_seg))["label"][0].numpy(), reference)
    np.testing.assert_array_equal(from_seg["label"].numpy(), from_nrrd["label"].numpy())
    np.testing.assert_allclose(from_seg["label"].affine.numpy(), from_nrrd["label"].affine.numpy(), atol=1e-4)
    train = build_transforms("ct", "train", roi_size=(32, 32, 3), num_samples=3, num_classes=2)
    seg_samples = train.set_random_state(seed=0)(dict(index.items[0]))
    nrrd_samples = train.set_random_state(seed=0)(nrrd_case)
    assert any(sample["label"].max() > 0 for sample in seg_samples)
    for seg_sample, nrrd_sample in zip(seg_samples, nrrd_samples, strict=True):
        assert seg_sample["label"].shape == (1, 32, 32, 3)
        np.testing.assert_array_equal(seg_sample["label"].numpy(), nrrd_sample["label"].numpy())
        np.testing.assert_array_equal(seg_sample["image"].numpy(), nrrd_sample["image"].numpy())


def test_series_folders_pair_with_segs_by_name(pairs):
    index = discover_dataset(pairs)
    assert index.layout == "pairs" and index.labels == {"0": "background", "1": "Liver"}
    assert index.items == [
        {"image": str(pairs / "images" / "case1"), "label": str(pairs / "labels" / "case1.dcm")}
    ]
    validate_items(index.items, labels=index.labels)


def test_a_series_without_its_label_is_named(pairs, ct3):
    (pairs / "images" / "case2").symlink_to(ct3 / "image", target_is_directory=True)
    with pytest.raises(
        DataValidationError, match=r"series .*case2 has no label in .*labels \(looked for case2\.dcm"
    ):
        discover_dataset(pairs)


def test_one_segment_number_must_name_one_class(ct3, tmp_path):
    csv = write_csv(
        tmp_path / "cases.csv",
        [(ct3 / "image", ct3 / "liver.dcm"), (ct3 / "image", ct3 / "partial_overlaps.dcm")],
    )
    with pytest.raises(
        DataValidationError, match=r"partial_overlaps\.dcm: segment 1 is 'GREEN' but 'Liver' in"
    ):
        discover_dataset(csv)


def test_a_seg_label_needs_a_series_folder_as_image(ct3, tmp_path):
    items = [{"image": str(ct3 / "liver_seg.nrrd"), "label": str(ct3 / "liver.dcm")}]
    with pytest.raises(DataValidationError, match=r"liver_seg\.nrrd is not a series folder"):
        classes_from_labels(items)


def test_classes_of_segs_and_volumes_together(ct3):
    items = [
        {"image": str(ct3 / "image"), "label": str(ct3 / "liver.dcm")},
        {"image": str(ct3 / "image"), "label": str(ct3 / "liver_seg.nrrd")},
        {"image": str(ct3 / "image")},
    ]
    assert classes_from_labels(items) == {"0": "background", "1": "Liver"}


def test_evaluate_scores_a_series_prediction_against_its_seg(ct3, reference, tmp_path):
    (tmp_path / "imagesTs").mkdir()
    (tmp_path / "labelsTs").mkdir()
    (tmp_path / "preds").mkdir()
    (tmp_path / "imagesTs" / "case1").symlink_to(ct3 / "image", target_is_directory=True)
    (tmp_path / "labelsTs" / "case1.dcm").symlink_to(ct3 / "liver.dcm")
    # What attnunet infer writes for the series: the label map on the series' grid, its RAS affine.
    prediction = nib.Nifti1Image(reference.astype(np.uint8), series_affine(ct3 / "image"))
    nib.save(prediction, tmp_path / "preds" / "case1.nii.gz")
    summary = evaluate(
        tmp_path / "preds",
        tmp_path / "labelsTs",
        output_dir=tmp_path / "eval",
        class_names={"0": "background", "1": "liver"},
        progress=False,
    )
    assert summary["num_evaluated"] == 1 and not summary["mismatched"]
    assert summary["classes"]["liver"]["dice"]["mean"] == pytest.approx(1.0)
    (tmp_path / "imagesTs" / "case1").unlink()  # the SEG's series is no longer beside it
    with pytest.raises(
        ValueError, match=r"case1\.dcm cannot be read: ValueError: .* is in no folder beside it"
    ):
        evaluate(tmp_path / "preds", tmp_path / "labelsTs", output_dir=tmp_path / "eval2", progress=False)


def test_train_runs_one_epoch_on_a_seg_labelled_case(ct3, tmp_path):
    """Two rows of the same case (one training, one validation): the pieces run end to end, nothing more.
    At 4 x 4 x 1 mm the sliding-window validation takes a second instead of twenty."""
    csv = write_csv(tmp_path / "cases.csv", [(ct3 / "image", ct3 / "liver.dcm")] * 2)
    args = [
        "train",
        "--data",
        str(csv),
        "--output",
        str(tmp_path / "run"),
        "--plan",
        "none",
        "--preset",
        "ct",
    ]
    args += ["--epochs", "1", "--roi-size", "32", "32", "3", "--pixdim", "4", "4", "1", "--num-samples", "1"]
    args += ["--network-option", "init_features=4", "--network-option", "depth=2", "--device", "cpu"]
    assert main([*args, "--no-track", "--no-progress"]) == 0
    assert (tmp_path / "run" / "checkpoints").is_dir()
