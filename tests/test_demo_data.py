"""The embedded demo dataset: MSD layout, geometry, classes, determinism, safe writing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnunet.pipelines.demo.data import DEMO_LABELS, demo_affine, write_demo_dataset


def arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path / "imagesTr" / "demo_000.nii.gz")
    label = nib.load(path / "labelsTr" / "demo_000.nii.gz")
    return np.asarray(image.dataobj), np.asarray(label.dataobj)


def test_default_dataset_layout_and_json(tmp_path):
    root = write_demo_dataset(tmp_path / "demo")
    description = json.loads((root / "dataset.json").read_text())
    assert description["labels"] == DEMO_LABELS == {"0": "background", "1": "organ", "2": "lesion"}
    assert description["modality"] == {"0": "CT"}
    assert description["numTraining"] == len(description["training"]) == 12
    assert description["numTest"] == len(description["test"]) == 4
    for case in description["training"]:
        assert (root / case["image"]).is_file() and (root / case["label"]).is_file()
    for image in description["test"]:
        assert (root / image).is_file() and (root / "labelsTs" / Path(image).name).is_file()
    image = nib.load(root / description["training"][0]["image"])
    assert image.shape == (64, 64, 32) and image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.header.get_zooms(), (1.5, 1.5, 3.0), atol=1e-5)


def test_geometry_oblique_anisotropic_lps(demo_dataset):
    image = nib.load(demo_dataset / "imagesTr" / "demo_000.nii.gz")
    label = nib.load(demo_dataset / "labelsTr" / "demo_000.nii.gz")
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-5)
    np.testing.assert_allclose(image.affine, label.affine)
    rotation = image.affine[:3, :3] / np.array(image.header.get_zooms())
    assert abs(rotation[0, 1]) > 0.1  # rotated about z, not axis-aligned
    assert nib.aff2axcodes(image.affine)[2] == "S" and nib.aff2axcodes(image.affine)[:2] != ("R", "A")


def test_classes_and_intensities(demo_dataset):
    for case in sorted((demo_dataset / "labelsTr").glob("*.nii.gz")):
        hu = np.asarray(nib.load(demo_dataset / "imagesTr" / case.name).dataobj).astype(float)
        label = np.asarray(nib.load(case).dataobj)
        assert set(np.unique(label)) == {0, 1, 2}
        air, organ, lesion = hu < -500, label == 1, label == 2
        assert air.mean() > 0.2 and np.median(hu[air]) < -900
        assert np.median(hu[lesion]) > np.median(hu[organ]) + 40  # distinct, learnable contrast
        assert hu[organ].std() > 10  # noisy, not a flat phantom


def test_deterministic_by_seed(tmp_path, demo_dataset):
    kwargs = {"num_cases": 1, "num_test": 0, "shape": (32, 32, 16), "spacing": (3.0, 3.0, 6.0)}
    same = write_demo_dataset(tmp_path / "a", seed=0, **kwargs)
    other = write_demo_dataset(tmp_path / "b", seed=1, **kwargs)
    for ours, reference in zip(arrays(same), arrays(demo_dataset), strict=True):
        np.testing.assert_array_equal(ours, reference)
    assert not np.array_equal(arrays(other)[1], arrays(same)[1])


def test_demo_affine_centres_the_volume():
    affine = demo_affine((10, 20, 30), (1.0, 2.0, 3.0), 0.0)
    np.testing.assert_allclose(affine @ [4.5, 9.5, 14.5, 1], [0, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(np.diag(affine)[:3], (-1.0, -2.0, 3.0))


def test_refuses_to_overwrite(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_demo_dataset(root, num_cases=1, num_test=0, shape=(8, 8, 8))
    with pytest.raises(FileExistsError, match="not an attnunet demo dataset"):
        write_demo_dataset(root, num_cases=1, num_test=0, shape=(8, 8, 8), overwrite=True)
    assert (root / "mine.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == [
        "demo"
    ]


def test_overwrite_replaces_a_demo_dataset(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", num_cases=2, num_test=1, shape=(8, 8, 8))
    write_demo_dataset(root, num_cases=1, num_test=0, shape=(8, 8, 8), overwrite=True)
    assert len(list((root / "imagesTr").iterdir())) == 1 and not list((root / "imagesTs").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left behind


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_cases": 0}, "num_cases must be >= 1"),
        ({"num_test": -1}, "num_test >= 0"),
        ({"shape": (64, 64)}, "shape must be three sizes"),
        ({"shape": (64, 64, 4)}, "shape must be three sizes >= 8"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive"),
        ({"noise": -1.0}, "noise must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_demo_dataset(tmp_path / "demo", **kwargs)
    assert not (tmp_path / "demo").exists()
