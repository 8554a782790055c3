"""Preset transform chains: contents per mode, outputs on real files, invertibility, bad options."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import shared_dataset
from monai.transforms import Invertd
from monai.utils import set_determinism
from PIL import Image

from attnunet.pipelines.data.files import innermost_cause
from attnunet.transforms.dicom_series import list_dicom_series
from attnunet.transforms.presets import (
    build_transforms,
    ct_transforms,
    image2d_transforms,
    mirrored_axes,
    mr_transforms,
)
from attnunet.transforms.readers import SimpleITKReader


@pytest.fixture(scope="module")
def case(demo_dataset: Path) -> dict[str, str]:
    return {
        "image": str(demo_dataset / "imagesTr" / "demo_001.nii.gz"),
        "label": str(demo_dataset / "labelsTr" / "demo_001.nii.gz"),
    }


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An RGB PNG (40 x 30) with a 0/255 mask of a bright square."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 100, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 10:30] = 255
    rgb[mask > 0] += 120
    Image.fromarray(rgb).save(folder / "img.png")
    Image.fromarray(mask).save(folder / "img_mask.png")
    return {"image": str(folder / "img.png"), "label": str(folder / "img_mask.png")}


def names(chain) -> list[str]:
    return [type(t).__name__ for t in chain.transforms]


def classes(preset: str, mode: str) -> dict[str, int]:
    """The class count a training chain needs (three for the volumes, the binarised two for pictures)."""
    return {"num_classes": 3} if mode == "train" and preset != "image2d" else {}


@pytest.mark.parametrize("preset", ["ct", "mr", "image2d"])
@pytest.mark.parametrize(
    "mode, keys", [("train", ("image", "label")), ("val", ("image", "label")), ("infer", ("image",))]
)
def test_every_chain_starts_by_loading_channel_first(preset, mode, keys):
    chain = build_transforms(preset, mode, **classes(preset, mode))
    loaders = [t for t in chain.transforms if type(t).__name__ == "LoadImageLabeld"]
    assert names(chain)[len(loaders)] == "EnsureChannelFirstd"
    assert names(chain)[: len(loaders)] == ["LoadImageLabeld"] * len(loaders)
    assert tuple(k for t in loaders for k in t.keys) == keys
    assert names(chain)[-1] == "EnsureTyped"
    random = {"RandCropByLabelClassesd", "RandFlipd"} & set(names(chain))
    assert bool(random) == (mode == "train")


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("ct", ["Orientationd", "Spacingd", "ScaleIntensityRanged", "CropForegroundd", "SpatialPadd"]),
        ("mr", ["Orientationd", "Spacingd", "CropForegroundd", "NormalizeIntensityd", "SpatialPadd"]),
    ],
)
def test_3d_train_chain_order(preset, expected):
    chain = names(build_transforms(preset, "train", pixdim=(1.5, 1.5, 3.0), num_classes=3))
    assert [n for n in chain if n in expected] == expected
    assert chain.count("RandFlipd") == 3 and "RandAffined" in chain
    # nnU-Net's intensity augmentations: noise, blur, brightness, contrast, gamma (inverted and not)
    intensity = [
        "RandGaussianNoised",
        "RandGaussianSmoothd",
        "RandScaleIntensityd",
        "RandScaleIntensityFixedMeand",
    ]
    assert all(name in chain for name in intensity) and chain.count("RandAdjustContrastd") == 2


def _striped_case(folder: Path, spacing: tuple[float, float, float]) -> dict[str, str]:
    """A 48 x 48 x 12 scan whose label is class 1 on even slices (last axis) and class 2 on odd ones."""
    rng = np.random.default_rng(0)
    label = np.broadcast_to(np.arange(12) % 2 + 1, (48, 48, 12)).astype(np.uint8)
    case = {}
    for key, volume in (("image", rng.uniform(50, 150, (48, 48, 12)).astype(np.float32)), ("label", label)):
        case[key] = str(folder / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), case[key])
    return case


def _slices_mixing_classes(samples: list[dict]) -> int:
    labels = [sample["label"][0] for sample in samples]
    return sum(
        len(set(torch.unique(label[..., z]).tolist()) - {0.0}) > 1
        for label in labels
        for z in range(label.shape[-1])
    )


@pytest.mark.parametrize(
    "spacing, roi_size",
    [((1.0, 1.0, 5.0), (16, 16, 4)), ((1.0, 1.0, 1.0), (16, 16, 1))],
    ids=["thick slices", "one-slice patches"],
)
def test_thick_slices_and_one_slice_patches_are_augmented_in_plane_only(tmp_path, spacing, roi_size):
    """Rotated and scaled in-plane only: a patch's slice never takes voxels of the slices beside it (its
    label keeps one class per slice), though rotation does happen (the corners it brings in are 0)."""
    chain = mr_transforms("train", pixdim=spacing, roi_size=roi_size, num_samples=60, num_classes=3)
    samples = chain.set_random_state(seed=0)(_striped_case(tmp_path, spacing))
    assert _slices_mixing_classes(samples) == 0
    padded = [float((sample["label"] == 0).float().mean()) for sample in samples]
    # turned in-plane: some corners come in (rotation happened), a small share on average; a tilt out of
    # the plane would sample beyond a one-slice patch and bring in mostly zeros
    assert max(padded) > 0 and np.mean(padded) < 0.1


def test_near_isotropic_patches_are_rotated_about_every_axis(tmp_path):
    chain = mr_transforms(
        "train", pixdim=(1.0, 1.0, 1.0), roi_size=(16, 16, 4), num_samples=60, num_classes=3
    )
    samples = chain.set_random_state(seed=0)(_striped_case(tmp_path, (1.0, 1.0, 1.0)))
    assert _slices_mixing_classes(samples) > 0  # tilted out of plane: a slice of the patch crosses stripes


@pytest.mark.parametrize("preset", ["ct", "mr", "image2d"])
def test_flip_axes_choose_the_mirrored_axes(preset):
    chain = build_transforms(preset, "train", flip_axes=[0], **classes(preset, "train"))
    flips = [t.flipper.spatial_axis for t in chain.transforms if type(t).__name__ == "RandFlipd"]
    assert flips == [0]  # left-right only: anterior stays anterior
    unmirrored = build_transforms(preset, "train", flip_axes=[], **classes(preset, "train"))
    assert "RandFlipd" not in names(unmirrored)


@pytest.mark.parametrize(
    "preset, options, expected",
    [
        ("ct", {}, (0, 1, 2)),
        ("mr", {"flip_axes": [0]}, (0,)),
        ("image2d", {}, (0, 1)),
        ("image2d", {"flip_axes": []}, ()),
    ],
)
def test_mirrored_axes_are_those_the_training_chain_flips(preset, options, expected):
    assert mirrored_axes(preset, options) == expected
    chain = build_transforms(preset, "train", **options, **classes(preset, "train"))
    assert (
        tuple(t.flipper.spatial_axis for t in chain.transforms if type(t).__name__ == "RandFlipd") == expected
    )


def test_image2d_train_rotates_scales_and_varies_contrast():
    chain = names(build_transforms("image2d", "train"))
    # rotated before cropping: patches without empty corners
    assert chain.index("RandAffined") < chain.index("RandCropByLabelClassesd")
    assert chain.count("RandFlipd") == 2 and "RandAdjustContrastd" in chain


def test_no_spacing_without_pixdim():
    assert "Spacingd" not in names(build_transforms("ct", "val"))


def test_ct_train_patches(case):
    set_determinism(seed=0)
    chain = ct_transforms("train", pixdim=(3.0, 3.0, 6.0), roi_size=(16, 16, 8), num_samples=3, num_classes=3)
    samples = chain(case)
    set_determinism(seed=None)
    assert len(samples) == 3
    for sample in samples:
        assert sample["image"].shape == sample["label"].shape == (1, 16, 16, 8)
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert any(sample["label"].max() > 0 for sample in samples)  # positive patches are drawn


def test_a_small_class_is_in_its_share_of_the_patches(tmp_path):
    """One patch in three is centred on the 8-voxel class beside a 1,000-voxel one (centring on any
    foreground voxel would put it in about one patch in 250)."""
    image = np.full((48, 48, 48), 100.0, dtype=np.float32)
    label = np.zeros((48, 48, 48), dtype=np.uint8)
    label[4:14, 4:14, 4:14] = 1
    label[40:42, 40:42, 40:42] = 2
    case = {}
    for key, volume in (("image", image), ("label", label)):
        case[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(volume, np.eye(4)), case[key])
    chain = ct_transforms("train", roi_size=(8, 8, 8), num_samples=60, num_classes=3, a_min=0, a_max=200)
    samples = chain.set_random_state(seed=0)(case)
    with_small_class = sum(bool((sample["label"] == 2).any()) for sample in samples)
    assert 10 <= with_small_class <= 30  # about 20 of 60


def test_a_class_missing_from_a_case_is_skipped_quietly(case, recwarn):
    chain = mr_transforms("train", roi_size=(16, 16, 8), num_samples=4, num_classes=5)
    samples = chain.set_random_state(0)(case)
    assert len(samples) == 4 and not [w for w in recwarn if "no available indices" in str(w.message)]


def test_ct_val_window_and_ras(case):
    out = ct_transforms("val", a_min=-100, a_max=300)(case)
    hu = np.asarray(nib.load(case["image"]).dataobj, dtype=np.float32)
    assert out["image"].min() == 0.0 and out["image"].max() == 1.0
    # the crop to the body's box removes only voxels the window set to 0
    assert int((out["image"] > 0).sum()) == int((hu > -100).sum())
    assert out["image"][0].numel() < hu.size
    affine = out["image"].affine.numpy()
    assert np.all(np.sign(np.diag(affine)[:3]) > 0)  # RAS: axes run right, anterior, superior
    assert sorted(torch.unique(out["label"]).tolist()) == [0.0, 1.0, 2.0]


def test_mr_zscore_over_nonzero(case, tmp_path):
    image = nib.load(case["image"])
    positive = np.clip(np.asarray(image.dataobj, dtype=np.float32) + 1000, 0, None)  # air becomes 0
    nib.save(nib.Nifti1Image(positive, image.affine), tmp_path / "mr.nii.gz")
    out = mr_transforms("infer")({"image": str(tmp_path / "mr.nii.gz")})["image"]
    inside = out[torch.from_numpy(np.asarray(out) != 0)]
    assert abs(float(inside.mean())) < 1e-3 and abs(float(inside.std()) - 1) < 1e-2


def test_infer_inverts_to_the_input_geometry(case):
    """Oblique, anisotropic input -> RAS 1 x 1 x 2 mm -> a fake prediction -> Invertd -> input grid."""
    chain = ct_transforms("infer", pixdim=(1.0, 1.0, 2.0))
    data = chain({"image": case["image"]})
    original = nib.load(case["image"])
    assert data["image"].shape[1:] != original.shape
    data["pred"] = (data["image"] > 0.5).float()
    restored = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert restored.shape == (1, *original.shape)
    np.testing.assert_allclose(restored.affine.numpy(), original.affine, atol=1e-4)


def test_val_inverts_exactly_without_resampling(case):
    chain = ct_transforms("val")
    data = chain(dict(case))
    data["pred"] = data["label"].clone()
    restored = Invertd("pred", transform=chain, orig_keys="label")(data)["pred"]
    np.testing.assert_array_equal(restored[0].numpy(), np.asarray(nib.load(case["label"]).dataobj))


def test_reader_option_loads_metaimage(case, tmp_path):
    sitk.WriteImage(sitk.ReadImage(case["image"]), str(tmp_path / "case.mha"))
    from_mha = ct_transforms("infer", reader="SimpleITKReader")({"image": str(tmp_path / "case.mha")})[
        "image"
    ]
    from_nifti = ct_transforms("infer")({"image": case["image"]})["image"]
    np.testing.assert_allclose(from_mha.numpy(), from_nifti.numpy())


@pytest.fixture
def series_with_a_gap(tmp_path: Path) -> tuple[Path, str]:
    """Links to the real Siemens series without its 8th slice (in slice order), and the series' UID."""
    siemens = shared_dataset("dicom", "ct_20slices_siemens")
    files = [path for path in siemens.iterdir() if not path.name.endswith(".nii.gz")]
    files.sort(key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path / "gap"
    folder.mkdir()
    for path in files[:7] + files[8:]:
        (folder / path.name).symlink_to(path)
    return folder, list_dicom_series(folder)[0].uid


def test_a_given_reader_is_the_only_one_tried(series_with_a_gap):
    """SimpleITKReader refuses the gap; MONAI's PydicomReader must not stack the folder in its place."""
    folder, uid = series_with_a_gap
    chain = build_transforms("ct", "infer", reader=SimpleITKReader(series_uid=uid))
    message = r"gap: 1 slice\(s\) missing between .* 4 mm apart where the other slices are 2 mm apart"
    with pytest.raises(ValueError, match=message) as refused:
        chain.transforms[0]({"image": str(folder)})
    assert "\n" not in str(refused.value)
    with pytest.raises(RuntimeError) as wrapped:  # MONAI's Compose wraps a transform's error
        chain({"image": str(folder)})
    assert innermost_cause(wrapped.value) == f"ValueError: {refused.value}"


def test_image2d_train(pictures):
    set_determinism(seed=0)
    samples = image2d_transforms("train", roi_size=(16, 16), num_samples=2)(pictures)
    set_determinism(seed=None)
    assert len(samples) == 2
    for sample in samples:
        assert sample["image"].shape == (3, 16, 16) and sample["label"].shape == (1, 16, 16)
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}
        assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0


def test_image2d_val_binarises_mask_and_keeps_size(pictures):
    out = image2d_transforms("val")(pictures)
    assert out["image"].shape == (3, 40, 30)  # PILReader: width, height
    assert sorted(torch.unique(out["label"]).tolist()) == [0.0, 1.0]
    assert int(out["label"].sum()) == 15 * 20


def test_image2d_grayscale_16bit_tiff(tmp_path):
    Image.fromarray(np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 100).save(tmp_path / "g.tif")
    out = build_transforms("image2d", "infer")({"image": str(tmp_path / "g.tif")})["image"]
    assert out.shape == (1, 24, 20) and float(out.max()) == 1.0 and float(out.min()) == 0.0


ILL_CASES = [
    (("ctt", "train"), {}, "ctt"),
    (("ct", "trian"), {}, "trian"),
    (("ct", "train"), {"pixdm": (1, 1, 1)}, r"does not take \['pixdm'\]"),
    (("ct", "val"), {"a_min": 100, "a_max": -100}, "a_min < a_max"),
    (("ct", "train"), {"pixdim": (1.0, 1.0)}, "pixdim must be 3"),
    (("mr", "train"), {"roi_size": (32, 32)}, "roi_size must be 3"),
    (("mr", "train"), {"num_samples": 0}, "num_samples must be >= 1"),
    (("image2d", "train"), {"pixdim": (1.0, 1.0)}, "does not resample"),
    (("ct", "train"), {}, r"training chain needs num_classes .*got None"),
    (("mr", "train"), {"num_classes": 1}, r"training chain needs num_classes .*got 1"),
    (("image2d", "train"), {"num_classes": 3}, r"binarises its masks .*num_classes=3"),
    (("image2d", "train"), {"a_min": 0}, r"does not take \['a_min'\]"),
    (
        ("mr", "train"),
        {"flip_axes": [3]},
        r"distinct RAS axes: 0 \(left-right\).*got \[3\]",
    ),
    (("ct", "train"), {"flip_axes": [0, 0]}, r"flip_axes must be distinct.*got \[0, 0\]"),
    (("image2d", "train"), {"flip_axes": [2]}, r"distinct image axes: 0 \(rows\), 1 \(columns\), got \[2\]"),
]


@pytest.mark.parametrize("args, kwargs, message", ILL_CASES)
def test_bad_options(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(*args, **kwargs)
