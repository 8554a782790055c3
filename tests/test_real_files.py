"""Files no one here wrote: nibabel's and pydicom's own test data, and ../shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import shared_dataset
from monai.transforms import LoadImage, Orientation

from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.validation import validate_items
from attnunet.transforms.dicom_series import list_dicom_series
from attnunet.transforms.headers import read_header
from attnunet.transforms.presets import build_transforms
from attnunet.transforms.readers import SimpleITKReader

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
# pydicom's bundled files only: get_testdata_file() may download the others, which tests must not do.
PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"

NIFTI_FILES = [
    "anatomical.nii",
    "example4d.nii.gz",
    "example_nifti2.nii.gz",
    "functional.nii",
    "standard.nii.gz",
]


def nibabel_file(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel does not ship {name} in this installation ({NIBABEL_DATA})")
    return path


def pydicom_file(name: str) -> Path:
    path = PYDICOM_DATA / name
    if not path.is_file():
        pytest.skip(f"pydicom does not ship {name} locally ({PYDICOM_DATA}); not downloading it")
    return path


@pytest.mark.parametrize("name", NIFTI_FILES)
def test_nibabel_files_read_the_same_with_both_readers(name):
    path = nibabel_file(name)
    ours = LoadImage(reader="SimpleITKReader", image_only=True)(path)
    theirs = LoadImage(reader="NibabelReader", image_only=True)(path)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours.meta["spatial_shape"], theirs.meta["spatial_shape"])
    np.testing.assert_equal(ours.meta["original_channel_dim"], theirs.meta["original_channel_dim"])


def test_oblique_nibabel_file_header(tmp_path):
    path = nibabel_file("example4d.nii.gz")
    header = read_header(path)
    assert header.spatial_shape == (128, 96, 24) and header.channels == 2
    np.testing.assert_allclose(header.affine, nib.load(path).affine)
    assert abs(header.affine[1, 2]) > 0.1  # oblique: rotated about x


def test_dicom_series_from_a_real_oblique_volume(tmp_path, write_dicom_series):
    """nibabel's oblique example4d (volume 0) -> a shuffled DICOM series -> the same image back."""
    source = nibabel_file("example4d.nii.gz")
    first = LoadImage(reader="NibabelReader", image_only=True)(source)[..., 0]
    volume = sitk.ReadImage(str(source))[:, :, :, 0]  # SimpleITK's 4D slicing keeps the 3D geometry
    write_dicom_series(sitk.Cast(volume, sitk.sitkInt16), tmp_path / "series", "1.2.3.4.5.6", "example4d")
    (series,) = list_dicom_series(tmp_path / "series")
    assert series.num_slices == 24 and series.description == "example4d"
    loaded = LoadImage(reader="SimpleITKReader", image_only=True)(tmp_path / "series")
    assert loaded.shape == first.shape
    np.testing.assert_allclose(loaded.meta["spacing"], volume.GetSpacing(), atol=1e-4)
    # This NIfTI is left-handed (slices run against row x column); a DICOM series always runs along
    # row x column, so its slice axis comes back reversed. Same image in world space: equal in RAS.
    assert np.linalg.det(first.affine[:3, :3]) < 0 < np.linalg.det(loaded.affine[:3, :3])
    ras = Orientation(axcodes="RAS")
    ours, reference = ras(loaded[None]), ras(first[None])
    np.testing.assert_array_equal(ours.numpy(), reference.numpy())  # slice order from positions, not names
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine.numpy(), atol=1e-4)
    header = read_header(tmp_path / "series")
    assert header.spatial_shape == (128, 96, 24)
    np.testing.assert_allclose(header.affine, loaded.affine.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_files_agree_with_pydicom_reader(name):
    path = pydicom_file(name)
    theirs = LoadImage(image_only=True)(path)  # a single .dcm stays with MONAI's PydicomReader
    reader = SimpleITKReader()
    ours, meta = reader.get_data(reader.read(path))
    np.testing.assert_array_equal(ours[..., 0], theirs.numpy())
    np.testing.assert_allclose(meta["affine"][:, [0, 1, 3]], theirs.affine.numpy()[:, [0, 1, 3]], atol=1e-4)


def test_truncated_pydicom_file_is_reported():
    path = pydicom_file("MR_truncated.dcm")
    with pytest.raises(ValueError, match="MR_truncated.dcm"):
        validate_items([{"image": str(path)}], require_label=False)


@pytest.fixture(scope="module")
def real_dataset() -> Path:
    """ATTNUNET_SHARED_DATA (any dataset folder), else ../shared/data's MSD dataset (it holds several)."""
    named = os.environ.get("ATTNUNET_SHARED_DATA")
    path = Path(named) if named else shared_dataset("Task04_Hippocampus")
    if not path.is_dir() or not any(path.iterdir()):
        pytest.skip(f"no dataset at {path} (set ATTNUNET_SHARED_DATA to a dataset folder to run this)")
    return path


def test_shared_data_discovers_validates_and_loads(real_dataset):
    index = discover_dataset(real_dataset)
    validate_items(index.items[:3], labels=index.labels)
    preset = (
        "image2d" if index.layout == "image2d" else ("mr" if index.modality.upper().startswith("M") else "ct")
    )
    sample = build_transforms(preset, "val")(index.items[0])
    assert sample["image"].shape[1:] == sample["label"].shape[1:]
