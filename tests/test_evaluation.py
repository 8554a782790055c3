"""Dice, HD95 and surface Dice of predictions against labels (pipelines/evaluation/metrics.py)."""

from __future__ import annotations

import csv
import json
import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from attnunet.checkpoints import save_checkpoint
from attnunet.cli import main
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.inference.predict import infer
from attnunet.spec import ModelSpec

CLASSES = {"0": "background", "1": "organ", "2": "lesion"}
SHAPE = (24, 20, 12)
AFFINE = np.array([[-1.5, 0, 0, 10], [0, -1.5, 0, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:16, 4:14, 2:9] = 1
    label[8:11, 6:9, 4:7] = 2
    return label


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture()
def cases(tmp_path):
    """Labels for five cases; predictions: exact, shifted, missing, wrong shape, wrong affine."""
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    label = _label()
    for name in ("exact", "shifted", "missing", "wrong_shape", "wrong_affine"):
        _save(labels / f"{name}.nii.gz", label)
    _save(predictions / "exact.nii.gz", label)
    shifted = np.roll(label, 2, axis=0)
    _save(predictions / "shifted.nii.gz", shifted)
    _save(predictions / "wrong_shape.nii.gz", label[:, :, :-1])
    moved = AFFINE.copy()
    moved[0, 3] += 4.0
    _save(predictions / "wrong_affine.nii.gz", label, moved)
    _save(predictions / "no_label.nii.gz", label)  # a prediction without a label
    return labels, predictions, label, shifted


def _rows(path):
    with open(path, newline="") as stream:
        return {row["case"]: row for row in csv.DictReader(stream)}


def test_per_case_csv_has_a_row_per_label_and_names_problems(cases, tmp_path):
    labels, predictions, label, shifted = cases
    summary = evaluate(predictions, labels, output_dir=tmp_path / "eval", class_names=CLASSES)
    rows = _rows(tmp_path / "eval" / "metrics.csv")
    assert sorted(rows) == sorted(["exact", "shifted", "missing", "wrong_shape", "wrong_affine"])
    assert rows["missing"]["status"] == "missing prediction" and rows["missing"]["dice_organ"] == ""
    assert "shape" in rows["wrong_shape"]["status"]
    assert "affine" in rows["wrong_affine"]["status"]
    assert summary["missing"] == ["missing"]
    assert sorted(summary["mismatched"]) == ["wrong_affine", "wrong_shape"]
    assert summary["unmatched_predictions"] == ["no_label"]
    assert summary["num_cases"] == 5 and summary["num_evaluated"] == 2


def test_metrics_match_independent_computation(cases, tmp_path):
    labels, predictions, label, shifted = cases
    summary = evaluate(predictions, labels, output_dir=tmp_path / "eval", class_names=CLASSES)
    rows = _rows(tmp_path / "eval" / "metrics.csv")
    for index, name in ((1, "organ"), (2, "lesion")):
        assert float(rows["exact"][f"dice_{name}"]) == pytest.approx(1.0)
        assert float(rows["exact"][f"hd95_{name}"]) == pytest.approx(0.0)
        assert float(rows["exact"][f"nsd_{name}"]) == pytest.approx(1.0)
        expected = _dice(label == index, shifted == index)
        assert float(rows["shifted"][f"dice_{name}"]) == pytest.approx(expected, rel=1e-5)
        stats = summary["classes"][name]["dice"]
        assert stats["n"] == 2
        assert stats["mean"] == pytest.approx((1.0 + expected) / 2, rel=1e-5)
        assert stats["std"] == pytest.approx(abs(1.0 - expected) / 2, rel=1e-4)
    # a 2-voxel shift along x (1.5 mm voxels) moves every surface point by 3 mm at most
    assert 0.0 < float(rows["shifted"]["hd95_organ"]) <= 3.0 + 1e-6
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["classes"]["organ"]["dice"]["mean"] == pytest.approx(
        summary["classes"]["organ"]["dice"]["mean"]
    )
    with open(tmp_path / "eval" / "summary.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert {(row["class"], row["metric"]) for row in table} >= {
        ("organ", "dice"),
        ("lesion", "hd95"),
        ("mean", "nsd"),
    }


def test_summary_mean_rows_count_the_classes_they_average(tmp_path):
    """The lesion is never predicted, so it has no finite HD95: the HD95 mean is the organ's alone."""
    label = _label()
    _save(tmp_path / "labels" / "a.nii.gz", label)
    _save(tmp_path / "predictions" / "a.nii.gz", np.where(label == 2, 1, label))
    summary = evaluate(
        tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e", class_names=CLASSES
    )
    with open(tmp_path / "e" / "summary.csv", newline="") as stream:
        means = {row["metric"]: row for row in csv.DictReader(stream) if row["class"] == "mean"}
    assert summary["classes"]["lesion"]["hd95"]["n"] == 0
    assert {metric: row["classes"] for metric, row in means.items()} == {"dice": "2", "hd95": "1", "nsd": "2"}
    assert means["hd95"]["n"] == "" and float(means["hd95"]["mean"]) == pytest.approx(
        summary["classes"]["organ"]["hd95"]["mean"], rel=1e-5
    )
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["mean_classes"] == summary["mean_classes"] == {"dice": 2, "hd95": 1, "nsd": 2}


def test_surface_dice_tolerance_is_in_millimetres(tmp_path):
    label = _label()
    _save(tmp_path / "labels" / "a.nii.gz", label)
    _save(tmp_path / "predictions" / "a.nii.gz", np.roll(label, 1, axis=0))  # 1.5 mm shift
    tight = evaluate(
        tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e1", tolerance_mm=1.0
    )
    loose = evaluate(
        tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e2", tolerance_mm=2.0
    )
    assert tight["classes"]["class_1"]["nsd"]["mean"] < 1.0
    assert loose["classes"]["class_1"]["nsd"]["mean"] == pytest.approx(1.0)


def test_scoring_prints_no_monai_deprecation_noise(cases, tmp_path):
    labels, predictions, _, _ = cases
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(predictions, labels, output_dir=tmp_path / "eval", class_names=CLASSES)
    # MONAI's HD95/surface Dice pass an argument MONAI itself deprecated: one FutureWarning per case
    assert not [w for w in caught if "always_return_as_numpy" in str(w.message)]


def test_a_class_missing_from_a_prediction_is_nan_without_a_warning_per_case(tmp_path):
    label = _label()
    _save(tmp_path / "labels" / "case.nii.gz", label)
    _save(tmp_path / "predictions" / "case.nii.gz", np.where(label == 2, 1, label))  # no lesion predicted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(
            tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "eval", class_names=CLASSES
        )
    assert not [w for w in caught if "nan/inf distance" in str(w.message)]
    row = _rows(tmp_path / "eval" / "metrics.csv")["case"]
    assert float(row["dice_lesion"]) == 0.0 and np.isnan(float(row["hd95_lesion"]))


def test_class_names_default_to_label_values(cases, tmp_path):
    labels, predictions, *_ = cases
    summary = evaluate(predictions, labels, output_dir=tmp_path / "eval")
    assert sorted(summary["classes"]) == ["class_1", "class_2"]


def test_values_outside_the_classes_are_reported(tmp_path):
    label = _label()
    _save(tmp_path / "labels" / "a.nii.gz", label)
    _save(tmp_path / "predictions" / "a.nii.gz", np.where(label == 2, 5, label))
    summary = evaluate(
        tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e", class_names=CLASSES
    )
    assert "outside the classes" in summary["mismatched"]["a"]


def test_unreadable_files(tmp_path):
    _save(tmp_path / "labels" / "a.nii.gz", _label())
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "a.nii.gz").write_bytes(b"truncated")
    summary = evaluate(
        tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e", class_names=CLASSES
    )
    assert "cannot be read" in summary["mismatched"]["a"]
    (tmp_path / "labels" / "a.nii.gz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="a.nii.gz cannot be read"):
        evaluate(
            tmp_path / "predictions", tmp_path / "labels", output_dir=tmp_path / "e2", class_names=CLASSES
        )


def test_existing_results_are_not_overwritten(cases, tmp_path):
    labels, predictions, *_ = cases
    output = tmp_path / "eval"
    evaluate(predictions, labels, output_dir=output, class_names=CLASSES)
    before = (output / "metrics.csv").read_text()
    with pytest.raises(FileExistsError, match="metrics.csv"):
        evaluate(predictions, labels, output_dir=output, class_names=CLASSES)
    assert (output / "metrics.csv").read_text() == before
    evaluate(predictions, labels, output_dir=output, class_names=CLASSES, overwrite=True)
    assert not [path for path in output.iterdir() if path.name.startswith(".")]  # no temporary files left


ILL_CASES = [
    ({"class_names": {"1": "organ"}}, ValueError, "0..N-1"),
    ({"class_names": ["background"]}, ValueError, "foreground"),
    ({"class_names": ["background", "organ", "organ"]}, ValueError, "distinct"),
    ({"tolerance_mm": [1.0, 2.0, 3.0]}, ValueError, "tolerance_mm"),
    ({"tolerance_mm": -1.0}, ValueError, "tolerance_mm"),
]


@pytest.mark.parametrize("kwargs, error, message", ILL_CASES)
def test_bad_options(cases, tmp_path, kwargs, error, message):
    labels, predictions, *_ = cases
    options = {"class_names": CLASSES, **kwargs}
    with pytest.raises(error, match=message):
        evaluate(predictions, labels, output_dir=tmp_path / "eval", **options)


def test_bad_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "nowhere", tmp_path / "empty", output_dir=tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="no label images"):
        evaluate(tmp_path / "empty", tmp_path / "empty", output_dir=tmp_path / "e")
    _save(tmp_path / "a" / "x.nii.gz", _label())
    _save(tmp_path / "b" / "x.nii", _label())
    with pytest.raises(ValueError, match="given twice"):
        evaluate(
            tmp_path / "a", [tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii"], output_dir=tmp_path / "e"
        )


def test_cli_exit_status_reports_missing_predictions(cases, tmp_path, capsys):
    labels, predictions, *_ = cases
    argv = [
        "evaluate",
        "--predictions",
        str(predictions),
        "--labels",
        str(labels),
        "--output",
        str(tmp_path / "e"),
        "--no-progress",
    ]
    assert main([*argv, "--classes", "background", "organ", "lesion"]) == 1
    assert "organ: dice" in capsys.readouterr().out
    (labels / "missing.nii.gz").unlink()
    for name in ("wrong_shape", "wrong_affine"):
        (labels / f"{name}.nii.gz").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert main(argv) == 2  # results exist: one-line error, exit 2
    assert "exist" in capsys.readouterr().err


def test_help_shows_the_default_of_every_optional_option(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    blocks = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:")[1])[1:]
    options = [" ".join(block.split()) for block in blocks]
    optional = [
        text for text in options if not text.startswith(("-h", "--predictions", "--labels", "--output"))
    ]
    assert len(optional) == 7 and all("(default: " in text for text in optional)
    assert any("(default: [2.0])" in text for text in optional)


def test_infer_then_evaluate_on_the_demo_dataset(demo_dataset, tmp_path):
    """Predictions written by ``infer`` line up with the dataset labels: same names, shapes and affines."""
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
    spec = ModelSpec(
        "attention_unet", kwargs, labels=CLASSES, preset="ct", roi_size=(16, 16, 16), pixdim=(4.0, 4.0, 5.0)
    )
    checkpoint = save_checkpoint(
        tmp_path / "model.pt", {"spec": spec.to_dict(), "model": spec.build().state_dict()}
    )
    infer(demo_dataset / "imagesTs", tmp_path / "predictions", model=checkpoint, progress=False)
    summary = evaluate(
        tmp_path / "predictions", demo_dataset / "labelsTs", output_dir=tmp_path / "eval", class_names=CLASSES
    )
    assert summary["num_evaluated"] == summary["num_cases"] == 2
    assert not summary["missing"] and not summary["mismatched"] and not summary["unmatched_predictions"]
    perfect = evaluate(demo_dataset / "labelsTs", demo_dataset / "labelsTs", output_dir=tmp_path / "self")
    assert perfect["mean"]["dice"] == pytest.approx(1.0) and perfect["mean"]["hd95"] == pytest.approx(0.0)


def _drive_case(root, fov_width: int = 14):
    """DRIVE-style files of case 21: a 0/255 GIF vessel mask, a GIF field of view covering the left
    ``fov_width`` columns, and a 2D NIfTI prediction (named after the image) that is right inside the
    field of view and has false vessels outside it."""
    from PIL import Image

    for folder in ("1st_manual", "mask", "predictions"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    vessels = np.zeros((20, 18), np.uint8)  # rows x columns, as PIL stores it
    vessels[5:15, 8:10] = 255
    Image.fromarray(vessels).save(root / "1st_manual" / "21_manual1.gif")
    fov = np.zeros((20, 18), np.uint8)
    fov[:, :fov_width] = 255
    Image.fromarray(fov).save(root / "mask" / "21_training_mask.gif")
    prediction = (vessels > 0).astype(np.uint8)
    prediction[:, 16:] = 1  # outside the field of view
    # MONAI reads pictures as (width, height); infer writes a 2D map on that grid as (X, Y, 1)
    nib.save(
        nib.Nifti1Image(prediction.T[..., None].copy(), np.eye(4)),
        root / "predictions" / "21_training.nii.gz",
    )
    return root


def test_drive_names_gif_masks_and_the_field_of_view(tmp_path):
    root = _drive_case(tmp_path / "drive")
    args = {"class_names": ["background", "vessel"], "progress": False}
    inside = evaluate(
        root / "predictions", root / "1st_manual", output_dir=tmp_path / "a", fov=root / "mask", **args
    )
    everywhere = evaluate(root / "predictions", root / "1st_manual", output_dir=tmp_path / "b", **args)
    assert inside["num_evaluated"] == everywhere["num_evaluated"] == 1 and not inside["unmatched_predictions"]
    assert inside["classes"]["vessel"]["dice"]["mean"] == pytest.approx(1.0)
    # everywhere, the two false columns (40 pixels) count against the 20 vessel pixels: 2 * 20 / (40 + 40)
    assert everywhere["classes"]["vessel"]["dice"]["mean"] == pytest.approx(0.5)
    assert inside["fov"] == str(root / "mask")


def test_drive_field_of_view_missing_or_misshapen_is_reported(tmp_path):
    root = _drive_case(tmp_path / "drive")
    (root / "mask" / "21_training_mask.gif").unlink()
    summary = evaluate(
        root / "predictions",
        root / "1st_manual",
        output_dir=tmp_path / "a",
        fov=root / "mask",
        progress=False,
    )
    assert summary["mismatched"] == {"21_manual1": f"no field-of-view mask in {root / 'mask'}"}


def test_only_rank_0_scores_under_torchrun(cases, tmp_path, monkeypatch):
    """multi_gpu_evaluate.json: the other ranks return at once and write nothing beside rank 0's report."""
    labels, predictions, _, _ = cases
    monkeypatch.setenv("RANK", "1")
    assert evaluate(predictions, labels, output_dir=tmp_path / "e", class_names=CLASSES) is None
    assert not (tmp_path / "e").exists()
    monkeypatch.setenv("RANK", "0")
    assert evaluate(predictions, labels, output_dir=tmp_path / "e", class_names=CLASSES)["num_cases"] == 5


# MyoPS cardiac MR: 1 myocardium, 2 LV blood pool, 3 RV blood pool, 4 edema, 5 scar
MYOPS = ["background", "myocardium", "lv", "rv", "edema", "infarct"]
MYOPS_REGIONS = {"scar": [5], "scar_edema": [4, 5]}


def _myops_label() -> np.ndarray:
    """Myocardium around an LV blood pool, with edema and scar in the wall; no RV (label 3 absent)."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:18, 4:16, 2:10] = 1
    label[8:14, 7:13, 4:8] = 2
    label[4:8, 4:10, 2:10] = 4
    label[4:8, 10:16, 2:10] = 5
    return label


@pytest.fixture()
def myops(tmp_path):
    """Case ``swapped``: edema and scar swapped in the prediction; case ``extra``: the prediction right but
    for a false edema blob outside the heart."""
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    label = _myops_label()
    swapped = label.copy()
    swapped[label == 4], swapped[label == 5] = 5, 4
    extra = label.copy()
    extra[19:23, 16:19, 2:6] = 4
    for name, prediction in (("swapped", swapped), ("extra", extra)):
        _save(labels / f"{name}.nii.gz", label)
        _save(predictions / f"{name}.nii.gz", prediction)
    return labels, predictions, label, extra


def test_regions_score_unions_of_label_values(myops, tmp_path):
    labels, predictions, label, extra = myops
    summary = evaluate(
        predictions,
        labels,
        output_dir=tmp_path / "e",
        class_names=MYOPS,
        regions=MYOPS_REGIONS,
        progress=False,
    )
    rows = _rows(tmp_path / "e" / "metrics.csv")
    # swapped edema and scar: each class is wholly wrong, their union wholly right
    swapped = rows["swapped"]
    assert float(swapped["dice_edema"]) == float(swapped["dice_infarct"]) == 0.0
    assert float(swapped["dice_scar_edema"]) == pytest.approx(1.0)
    assert float(swapped["hd95_scar_edema"]) == pytest.approx(0.0)
    assert float(swapped["nsd_scar_edema"]) == pytest.approx(1.0)
    # the false edema blob counts against the union as computed by hand
    expected = _dice(np.isin(label, [4, 5]), np.isin(extra, [4, 5]))
    assert 0.0 < expected < 1.0
    assert float(rows["extra"]["dice_scar_edema"]) == pytest.approx(expected, rel=1e-5)
    assert float(rows["extra"]["dice_scar"]) == pytest.approx(1.0)
    assert summary["regions"]["scar_edema"]["dice"]["mean"] == pytest.approx((1.0 + expected) / 2, rel=1e-5)
    assert summary["regions"]["scar"]["dice"] == {"mean": 0.5, "std": 0.5, "n": 2}
    assert summary["region_values"] == MYOPS_REGIONS
    assert summary["tolerance_mm"]["scar_edema"] == 2.0
    # regions sit beside the classes in both reports, and stay out of the mean over classes
    assert set(summary["classes"]) == set(MYOPS[1:]) and summary["mean_classes"]["dice"] == 4
    with open(tmp_path / "e" / "summary.csv", newline="") as stream:
        table = {(row["class"], row["metric"]): row for row in csv.DictReader(stream)}
    assert float(table["scar_edema", "dice"]["mean"]) == pytest.approx((1.0 + expected) / 2, rel=1e-5)
    assert table["scar", "nsd"]["n"] == "2"
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["regions"]["scar"]["dice"]["mean"] == 0.5


def test_a_region_absent_from_a_case_scores_like_an_absent_class(myops, tmp_path):
    """The RV (3) is in neither prediction nor label: NaN for the class and for a region of it alike."""
    labels, predictions, *_ = myops
    summary = evaluate(
        predictions,
        labels,
        output_dir=tmp_path / "e",
        class_names=MYOPS,
        regions={"right_ventricle": [3]},
        progress=False,
    )
    rows = _rows(tmp_path / "e" / "metrics.csv")
    for metric in ("dice", "hd95", "nsd"):
        assert rows["swapped"][f"{metric}_rv"] == rows["swapped"][f"{metric}_right_ventricle"] == "nan"
        assert summary["regions"]["right_ventricle"][metric] == summary["classes"]["rv"][metric]
        assert summary["regions"]["right_ventricle"][metric]["n"] == 0


def test_tolerance_per_class_then_per_region(myops, tmp_path):
    labels, predictions, *_ = myops
    summary = evaluate(
        predictions,
        labels,
        output_dir=tmp_path / "e",
        class_names=MYOPS,
        regions=MYOPS_REGIONS,
        tolerance_mm=[1, 2, 3, 4, 5, 6, 7],
        progress=False,
    )
    assert summary["tolerance_mm"] == dict(
        zip([*MYOPS[1:], *MYOPS_REGIONS], [1.0, 2, 3, 4, 5, 6, 7], strict=True)
    )
    with pytest.raises(ValueError, match=r"one per foreground class and region \(5 \+ 2\)"):
        evaluate(
            predictions,
            labels,
            output_dir=tmp_path / "e2",
            class_names=MYOPS,
            regions=MYOPS_REGIONS,
            tolerance_mm=[1, 2, 3, 4, 5],
        )


REGION_ILL_CASES = [
    ({"scar edema": [4, 5]}, "a name is letters"),
    ({"$scar": [5]}, "a name is letters"),
    ({"edema": [4, 5]}, "'edema' is a class name"),
    ({"mean": [4, 5]}, "'mean'"),
    ({"scar": []}, "one or more label values"),
    ({"scar": "5"}, "one or more label values"),
    ({"scar": [-5]}, "non-negative integers"),
    ({"scar": [4.5]}, "non-negative integers"),
    ({"scar": [5, 9]}, r"\[9\] are not among the classes 0..5"),
    ([("scar", [5])], "regions must map names"),
]


@pytest.mark.parametrize("regions, message", REGION_ILL_CASES)
def test_bad_regions(myops, tmp_path, regions, message):
    labels, predictions, *_ = myops
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, labels, output_dir=tmp_path / "e", class_names=MYOPS, regions=regions)
    assert not (tmp_path / "e").exists()


def _evaluate_argv(labels, predictions, output, classes=MYOPS):
    return [
        "evaluate",
        "--predictions",
        str(predictions),
        "--labels",
        str(labels),
        "--output",
        str(output),
        "--no-progress",
        *(["--classes", *classes] if classes else []),
    ]


def test_cli_regions_become_columns(myops, tmp_path, capsys):
    labels, predictions, *_ = myops
    argv = _evaluate_argv(labels, predictions, tmp_path / "e", classes=None)  # class_1 .. class_5
    assert main([*argv, "--region", "scar=5", "--region", "scar_edema=4, 5"]) == 0
    with open(tmp_path / "e" / "metrics.csv", newline="") as stream:
        columns = csv.DictReader(stream).fieldnames
    assert columns[-6:] == [
        "dice_scar",
        "hd95_scar",
        "nsd_scar",
        "dice_scar_edema",
        "hd95_scar_edema",
        "nsd_scar_edema",
    ]
    assert float(_rows(tmp_path / "e" / "metrics.csv")["swapped"]["dice_scar_edema"]) == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "class_5: dice 0.5 +- 0.5 (n=2)" in out and "scar: dice 0.5 +- 0.5 (n=2)" in out
    assert "scar_edema: dice" in out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["region_values"] == MYOPS_REGIONS


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--region", "scar"], "--region 'scar': expected NAME=V,V,..."),
        (["--region", "scar="], "--region 'scar=': no label values"),
        (["--region", "scar=a"], "--region 'scar=a': label values must be non-negative integers, got 'a'"),
        (["--region", "scar=-5"], "--region 'scar=-5': label values must be non-negative integers, got '-5'"),
        (["--region", "scar=4,,5"], "got ''"),
        (["--region", "scar=5", "--region", "scar=4,5"], "--region 'scar=4,5': region 'scar' is given twice"),
        (["--region", "edema=4,5"], "region edema=4,5: 'edema' is a class name"),
        (["--region", "=4"], "--region '=4': a name is letters"),
        (["--region", "$open('x', 'w')=1"], "a name is letters"),
        (["--region", "scar=$5"], "non-negative integers, got '$5'"),
        (["--region", "scar=9"], "region scar=9: label value(s) [9] are not among the classes 0..5"),
        (["--classes", "background", "$1+1"], "--classes '$1+1': a value may not start with $, @ or %"),
    ],
)
def test_cli_bad_regions_are_one_line_errors(myops, tmp_path, capsys, extra, message):
    labels, predictions, *_ = myops
    assert main([*_evaluate_argv(labels, predictions, tmp_path / "e"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnunet evaluate: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "e").exists()
