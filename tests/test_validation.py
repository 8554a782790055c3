"""The catalogue of bad inputs: each stops validation with its own message naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnunet.cli import main
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.validation import DataValidationError, validate_items

LABELS = {"0": "background", "1": "organ", "2": "lesion"}


@pytest.fixture
def case(demo_dataset: Path, tmp_path: Path) -> dict[str, str]:
    """A writable copy of one demo case."""
    image, label = tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"
    shutil.copy(demo_dataset / "imagesTr" / "demo_000.nii.gz", image)
    shutil.copy(demo_dataset / "labelsTr" / "demo_000.nii.gz", label)
    return {"image": str(image), "label": str(label)}


def rewrite(path: str, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Save ``path`` again with new data and/or affine (the other kept)."""
    old = nib.load(path)
    data = np.asarray(old.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), path)


def problem(items, **kwargs) -> str:
    with pytest.raises(DataValidationError) as caught:
        validate_items(items, **kwargs)
    return str(caught.value)


def test_valid_dataset_passes(demo_dataset):
    index = discover_dataset(demo_dataset)
    validate_items(index.items, labels=index.labels, in_channels=1)  # raises on any problem


def test_error_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)
    assert DataValidationError(["a", "b"]).problems == ["a", "b"]


def test_no_cases():
    assert "the dataset has no cases" in problem([])


def test_missing_image_file(case, tmp_path):
    case["image"] = str(tmp_path / "gone.nii.gz")
    assert problem([case]) == f"image {tmp_path / 'gone.nii.gz'} does not exist; fix the path or add the file"


def test_unreadable_file(case):
    Path(case["image"]).write_bytes(b"not a nifti file at all")
    message = problem([case])
    assert case["image"] in message and "header cannot be read" in message


def test_truncated_file(case):
    content = Path(case["label"]).read_bytes()
    Path(case["label"]).write_bytes(content[: len(content) // 2])  # header intact, data cut
    message = problem([case], labels=LABELS)
    assert f"label {case['label']} cannot be read (truncated or corrupt" in message


def test_missing_label(case):
    del case["label"]
    assert f"image {case['image']} has no label" in problem([case])
    validate_items([case], require_label=False)  # fine for inference inputs


def test_shape_mismatch(case):
    rewrite(case["label"], data=np.zeros((32, 32, 15), np.uint8))
    message = problem([case])
    assert (
        f"label {case['label']} has shape (32, 32, 15) but its image {case['image']} has (32, 32, 16)"
        in message
    )


def test_geometry_mismatch(case):
    affine = nib.load(case["image"]).affine.copy()
    affine[:3, 3] += 5.0
    rewrite(case["label"], affine=affine)
    message = problem([case])
    assert f"label {case['label']} has another geometry than its image" in message and "origin" in message


def test_wrong_channel_count(case):
    assert problem([case], in_channels=3) == (
        f"image {case['image']} has shape (32, 32, 16) (1 channel(s)), expected 3 channel(s) (the network "
        "takes in_channels=3); give every image the same channels, last: (x, y, z) or (x, y, z, channels)"
    )


def test_label_with_several_channels(case):
    label = np.asarray(nib.load(case["label"]).dataobj)
    rewrite(case["label"], data=np.stack([label, label], axis=-1))
    assert f"label {case['label']} has 2 channels; a label map must have one" in problem([case])


@pytest.mark.parametrize("bad, counts", [(np.nan, "3 NaN and 0 infinite"), (np.inf, "0 NaN and 3 infinite")])
def test_nan_or_inf(case, bad, counts):
    data = np.asarray(nib.load(case["image"]).dataobj).astype(np.float32)
    data[0, 0, :3] = bad
    rewrite(case["image"], data=data)
    assert f"image {case['image']} has {counts} values" in problem([case], labels=LABELS)


def test_label_values_outside_classes(case):
    data = np.asarray(nib.load(case["label"]).dataobj).copy()
    data[0, 0, 0], data[1, 0, 0] = 3, 7
    rewrite(case["label"], data=data)
    message = problem([case], labels=LABELS)
    assert f"label {case['label']} has values [3, 7] outside the declared classes [0, 1, 2]" in message


def test_label_values_not_integers(case):
    data = np.asarray(nib.load(case["label"]).dataobj).astype(np.float32)
    data[0, 0, 0] = 0.5
    rewrite(case["label"], data=data)
    assert f"label {case['label']} has non-integer values" in problem([case], labels=LABELS)


def test_empty_folder(tmp_path):
    with pytest.raises(DataValidationError, match=f"dataset folder {tmp_path} is empty"):
        discover_dataset(tmp_path)


def test_all_problems_listed_together(case, tmp_path):
    missing = {"image": str(tmp_path / "a.nii.gz"), "label": str(tmp_path / "b.nii.gz")}
    message = problem([case, missing], in_channels=2)
    assert message.startswith("3 problems in the data")
    assert "a.nii.gz does not exist" in message and "b.nii.gz does not exist" in message
    assert "in_channels=2" in message


def test_headers_only_skips_data(case):
    data = np.asarray(nib.load(case["image"]).dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    rewrite(case["image"], data=data)
    validate_items([case], check_values=False)


FORM_3D = "(x, y, z) or (x, y, z, channels)"


@pytest.fixture
def dataset(demo_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of the demo dataset (4 training cases of 32 x 32 x 16, dataset.json: CT)."""
    return Path(shutil.copytree(demo_dataset, tmp_path / "dataset"))


def _train_cli(data: Path, output: Path) -> list[str]:
    return [
        "train", "--data", str(data), "--output", str(output), "--plan", "none", "--preset", "ct",
        "--roi-size", "32", "32", "16", "--no-track", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def _odd_images(dataset: Path) -> dict[str, tuple[str, np.ndarray, str]]:
    """name -> (image path, new data, the problem's expected text) for one odd image among 3D ones."""
    path = str(dataset / "imagesTr" / "demo_001.nii.gz")
    data = np.asarray(nib.load(path).dataobj)
    return {
        "4D, 3 channels": (
            path,
            np.stack([data] * 3, axis=-1),
            f"image {path} has shape (32, 32, 16, 3) (3 channel(s)), expected 1 channel(s) ({{why}}); "
            f"give every image the same channels, last: {FORM_3D}",
        ),
        "5D": (
            path,
            np.stack([data] * 3, axis=-1)[..., None, :],
            f"image {path} has shape (32, 32, 16, 1, 3) (5 dimensions), expected 3 spatial dimensions and "
            f"at most one channel axis: {FORM_3D} (roi_size has 3 sizes); save it as {FORM_3D}",
        ),
        "2D slice": (
            path,
            data[:, :, 8],
            f"image {path} has shape (32, 32) (2 spatial dimensions), expected 3: {FORM_3D} "
            "(roi_size has 3 sizes); replace it with a 3D image or leave it out",
        ),
    }


@pytest.mark.parametrize("kind", ["4D, 3 channels", "5D", "2D slice"])
def test_an_image_of_another_kind_among_3d_ones(dataset, kind, tmp_path, capsys):
    path, data, expected = _odd_images(dataset)[kind]
    rewrite(path, data=data)
    if kind == "2D slice":  # its label too, so that only the dimensions are wrong
        label = path.replace("imagesTr", "labelsTr")
        rewrite(label, data=np.asarray(nib.load(label).dataobj)[:, :, 8])
    items = discover_dataset(dataset).items
    assert problem(items, spatial_dims=3) == expected.format(why="as 3 of the 4 images have")
    # attnunet train: the same line, with the channels dataset.json declares, exit 2 before any output
    assert main(_train_cli(dataset, tmp_path / "run")) == 2
    why = f"{dataset / 'dataset.json'} 'modality' lists 1: CT"
    assert capsys.readouterr().err == f"attnunet train: error: {expected.format(why=why)}\n"
    assert not (tmp_path / "run").exists()


def test_without_roi_size_the_usual_dimensions_are_expected(dataset):
    path, data, _ = _odd_images(dataset)["2D slice"]
    rewrite(path, data=data)
    label = path.replace("imagesTr", "labelsTr")
    rewrite(label, data=np.asarray(nib.load(label).dataobj)[:, :, 8])
    assert problem(discover_dataset(dataset).items) == (
        f"image {path} has shape (32, 32) (2 spatial dimensions), expected 3: {FORM_3D} "
        "(as 3 of the 4 images have); replace it with a 3D image or leave it out"
    )


def test_dataset_json_declaring_two_modalities_for_one_channel_files(dataset, tmp_path, capsys):
    description = json.loads((dataset / "dataset.json").read_text())
    description["modality"] = {"0": "CT", "1": "PET"}
    (dataset / "dataset.json").write_text(json.dumps(description))
    assert main(_train_cli(dataset, tmp_path / "run")) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "attnunet train: error: 4 problems in the data (fix them and run again):"
    why = f"{dataset / 'dataset.json'} 'modality' lists 2: CT, PET"
    assert lines[1:] == [
        f"  - image {dataset / 'imagesTr' / f'demo_00{i}.nii.gz'} has shape (32, 32, 16) (1 channel(s)), "
        f"expected 2 channel(s) ({why}); give every image the same channels, last: {FORM_3D}"
        for i in range(4)
    ]
    assert not (tmp_path / "run").exists()


def test_headers_are_returned_in_item_order(dataset):
    items = discover_dataset(dataset).items
    headers = validate_items(items, spatial_dims=3, in_channels=1, check_values=False)
    assert [str(h.path) for h in headers] == [item["image"] for item in items]
