"""SimpleITKReader and list_dicom_series: NIfTI parity with NibabelReader, NRRD/MHA, DICOM series folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage, LoadImaged
from monai.transforms.io.array import SUPPORTED_READERS

from attnunet.transforms.dicom_series import DicomSeries, list_dicom_series
from attnunet.transforms.headers import read_header
from attnunet.transforms.readers import SimpleITKReader, sitk_affine


@pytest.fixture(scope="module")
def demo_case(demo_dataset: Path) -> Path:
    return demo_dataset / "imagesTr" / "demo_000.nii.gz"


@pytest.fixture(scope="module")
def two_series(
    demo_case: Path, tmp_path_factory: pytest.TempPathFactory, write_dicom_series
) -> tuple[Path, sitk.Image]:
    """A folder with two series of the (oblique, anisotropic) demo case: the volume and its negative."""
    folder = tmp_path_factory.mktemp("dicom") / "two"
    volume = sitk.Cast(sitk.ReadImage(str(demo_case)), sitk.sitkInt16)
    write_dicom_series(volume, folder, "1.2.826.0.1.3680043.2.1125.1.1", "original", shuffle_seed=1)
    write_dicom_series(-volume, folder, "1.2.826.0.1.3680043.2.1125.1.2", "negated", shuffle_seed=2)
    return folder, volume


def load(reader, path):
    return LoadImage(reader=reader, image_only=True)(path)


def test_nifti_same_array_and_affine_as_nibabel(demo_case):
    ours, theirs = load("SimpleITKReader", demo_case), load("NibabelReader", demo_case)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.meta["original_affine"], theirs.meta["original_affine"], atol=1e-5)
    assert not np.allclose(ours.affine[:3, :3], np.diag(np.diag(ours.affine[:3, :3])))  # oblique
    for key in ("spatial_shape", "original_channel_dim", "space", "filename_or_obj"):
        np.testing.assert_equal(ours.meta[key], theirs.meta[key])
    np.testing.assert_allclose(ours.meta["spacing"], (3.0, 3.0, 6.0), atol=1e-5)


def test_nifti_4d_last_axis_is_channel(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 5, 4, 2)).astype(np.float32)
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 3, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "four.nii.gz")
    ours, theirs = (
        load("SimpleITKReader", tmp_path / "four.nii.gz"),
        load("NibabelReader", tmp_path / "four.nii.gz"),
    )
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), affine, atol=1e-6)
    assert ours.meta["original_channel_dim"] == -1
    np.testing.assert_array_equal(ours.meta["spatial_shape"], (6, 5, 4))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_nrrd_and_metaimage_load_by_default_with_nifti_geometry(demo_case, tmp_path, suffix):
    target = tmp_path / f"case{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(demo_case)), str(target))
    reference = load("NibabelReader", demo_case)
    loaded = load(None, target)  # MONAI's automatic choice: this reader, once registered
    np.testing.assert_array_equal(loaded.numpy(), reference.numpy())
    np.testing.assert_allclose(loaded.affine.numpy(), reference.affine.numpy(), atol=1e-5)


def test_registered_by_name_and_ranked_after_nibabel(demo_case):
    order = list(SUPPORTED_READERS)
    assert order.index("simpleitkreader") < order.index("nibabelreader")  # nibabel is tried first
    assert order.index("simpleitkreader") > order.index("pydicomreader")  # pydicom's catch-all comes last
    by_name = LoadImaged("image", reader="SimpleITKReader")({"image": demo_case})["image"]
    assert "sizeof_hdr" not in by_name.meta  # a SimpleITK read, not a nibabel header
    assert "sizeof_hdr" in LoadImage(image_only=True)(demo_case).meta  # NIfTI keeps NibabelReader by default


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.nii.gz", True),
        ("a.NII", True),
        ("a.nrrd", True),
        ("a.mhd", True),
        ("a.dcm", False),
        ("a.png", False),
    ],
)
def test_verify_suffix(name, expected):
    assert SimpleITKReader().verify_suffix(name) is expected


def test_lps_affine_and_channel_dim_options(demo_case):
    reader = SimpleITKReader(channel_dim="no_channel", affine_lps_to_ras=False)
    data, meta = reader.get_data(reader.read(demo_case))
    ras = load("NibabelReader", demo_case).affine.numpy()
    np.testing.assert_allclose(meta["affine"], np.diag([-1, -1, 1, 1]) @ ras, atol=1e-5)
    assert meta["space"] == "LPS" and np.isnan(meta["original_channel_dim"]) and data.shape == (32, 32, 16)


def test_several_files_stack_as_channels(demo_dataset):
    names = [demo_dataset / folder / "demo_000.nii.gz" for folder in ("imagesTr", "labelsTr")]
    stacked = load("SimpleITKReader", names)
    assert stacked.shape == (2, 32, 32, 16)
    np.testing.assert_array_equal(stacked[1].numpy(), load("NibabelReader", names[1]).numpy())


def test_sitk_affine_from_header_reader(demo_case):
    header = sitk.ImageFileReader()
    header.SetFileName(str(demo_case))
    header.ReadImageInformation()
    np.testing.assert_allclose(sitk_affine(header), nib.load(demo_case).affine, atol=1e-5)


def test_dicom_series_sorted_by_position_with_geometry(two_series):
    folder, volume = two_series
    loaded = load(SimpleITKReader(series_uid="1.2.826.0.1.3680043.2.1125.1.1"), folder)
    np.testing.assert_array_equal(loaded.numpy(), sitk.GetArrayFromImage(volume).T)  # slice order restored
    np.testing.assert_allclose(loaded.affine.numpy(), sitk_affine(volume), atol=1e-4)
    np.testing.assert_allclose(loaded.meta["spacing"], volume.GetSpacing(), atol=1e-5)
    assert loaded.meta["0008|103e"].strip() == "original"
    assert loaded.meta["filename_or_obj"] == str(folder)


def test_dicom_series_picks_the_other_uid(two_series):
    folder, volume = two_series
    loaded = LoadImaged("image", reader=SimpleITKReader(series_uid="1.2.826.0.1.3680043.2.1125.1.2"))(
        {"image": folder}
    )["image"]
    np.testing.assert_array_equal(loaded.numpy(), -sitk.GetArrayFromImage(volume).T)


def test_list_dicom_series(two_series):
    folder, volume = two_series
    found = {series.uid: series for series in list_dicom_series(folder)}
    assert set(found) == {"1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2"}
    series = found["1.2.826.0.1.3680043.2.1125.1.2"]
    assert isinstance(series, DicomSeries) and series.description == "negated"
    assert series.num_slices == volume.GetDepth() == len(set(series.files))
    assert "negated" in str(series) and f"{volume.GetDepth()} slices" in str(series)


def test_several_series_without_uid_lists_them(two_series):
    folder, volume = two_series
    with pytest.raises(ValueError, match="holds 2 DICOM series") as caught:
        SimpleITKReader().read(folder)
    for text in ("1.2.826.0.1.3680043.2.1125.1.1", "original", "negated", f"{volume.GetDepth()} slices"):
        assert text in str(caught.value)


def test_unknown_series_uid_lists_what_is_there(two_series):
    folder, _ = two_series
    with pytest.raises(ValueError, match=r"no DICOM series '9\.9'.*negated"):
        SimpleITKReader(series_uid="9.9").read(folder)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no DICOM series"):
        SimpleITKReader().read(tmp_path)


def test_list_dicom_series_needs_a_folder(demo_case):
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        list_dicom_series(demo_case)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        SimpleITKReader().read(tmp_path / "missing.nii.gz")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "garbage.mha"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="garbage.mha cannot be read by SimpleITK"):
        SimpleITKReader().read(bad)


def test_read_takes_no_options(demo_case):
    with pytest.raises(TypeError, match="takes no options"):
        SimpleITKReader().read(demo_case, mmap=True)


def test_header_of_a_series_folder(two_series):
    folder, volume = two_series
    with pytest.raises(ValueError, match="holds 2 DICOM series; load one with SimpleITKReader"):
        read_header(folder)
    single = folder.parent / "single"
    single.mkdir()
    for name in list_dicom_series(folder)[0].files:
        (single / Path(name).name).symlink_to(name)
    header = read_header(single)
    assert header.spatial_shape == volume.GetSize() and header.channels == 1
    np.testing.assert_allclose(header.affine, load("SimpleITKReader", single).affine.numpy(), atol=1e-4)


def _stderr_of_building_monai_readers(first: str) -> str:
    code = f"{first}\nfrom monai.transforms import LoadImage\nLoadImage()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_importing_attnunet_quiets_the_missing_gpu_decoder_notices():
    plain_monai = _stderr_of_building_monai_readers("pass")
    if "nvImageCodec" not in plain_monai:
        pytest.skip("this MONAI (or an installed nvImageCodec) prints no notice to quiet")
    # the bundle runs import attnunet through their configs, the CLI through its commands
    assert "nvImageCodec" not in _stderr_of_building_monai_readers("import attnunet.transforms")
