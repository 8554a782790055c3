"""Dataset discovery (MSD, folder pairs, CSV, 2D), reproducible splits and cached datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from monai.data import CacheDataset, Dataset, PersistentDataset
from PIL import Image

from attnunet.pipelines.data.datasets import (
    DatasetIndex,
    cache_memory_bytes,
    discover_dataset,
    make_dataset,
    split_items,
)
from attnunet.pipelines.data.validation import DataValidationError
from attnunet.transforms.presets import build_transforms


def copy_pairs(demo: Path, root: Path, image_dir: str, label_dir: str, image_name="{}") -> Path:
    (root / image_dir).mkdir(parents=True)
    (root / label_dir).mkdir(parents=True)
    for image in sorted((demo / "imagesTr").glob("*.nii.gz")):
        case = image.name.removesuffix(".nii.gz")
        shutil.copy(image, root / image_dir / f"{image_name.format(case)}.nii.gz")
        shutil.copy(demo / "labelsTr" / image.name, root / label_dir / image.name)
    return root


def test_msd(demo_dataset):
    index = discover_dataset(demo_dataset)
    assert isinstance(index, DatasetIndex) and index.layout == "msd"
    assert index.labels == {"0": "background", "1": "organ", "2": "lesion"}
    assert index.modality == "CT" and index.root == demo_dataset
    assert [Path(item["image"]).name for item in index.items] == [f"demo_00{i}.nii.gz" for i in range(4)]
    assert all(
        Path(item["label"]).parent.name == "labelsTr" and Path(item["label"]).is_file()
        for item in index.items
    )
    assert [Path(item["image"]).parent.name for item in index.test_items] == ["imagesTs", "imagesTs"]


def test_msd_nnunet_v2_labels(demo_dataset, tmp_path):
    root = tmp_path / "v2"
    shutil.copytree(demo_dataset, root)
    description = json.loads((root / "dataset.json").read_text())
    description.pop("modality")
    description.update(
        labels={"background": 0, "lesion": 2, "organ": 1}, channel_names={"0": "T1", "1": "T2"}
    )
    (root / "dataset.json").write_text(json.dumps(description))
    index = discover_dataset(root)
    assert index.labels == {"0": "background", "1": "organ", "2": "lesion"} and index.modality == "T1+T2"


def test_folder_pairs_infer_classes_from_label_values(demo_dataset, tmp_path):
    index = discover_dataset(copy_pairs(demo_dataset, tmp_path / "pairs", "images", "labels"))
    assert index.layout == "pairs" and len(index.items) == 4
    assert index.labels == {"0": "background", "1": "class_1", "2": "class_2"}
    for item in index.items:
        assert Path(item["image"]).name == Path(item["label"]).name


def test_folder_pairs_nnunet_channel_suffix(demo_dataset, tmp_path):
    index = discover_dataset(copy_pairs(demo_dataset, tmp_path / "nn", "imagesTr", "labelsTr", "{}_0000"))
    assert Path(index.items[0]["image"]).name == "demo_000_0000.nii.gz"
    assert Path(index.items[0]["label"]).name == "demo_000.nii.gz"


def test_csv_relative_paths(demo_dataset, tmp_path):
    rows = ["image,label"] + [
        f"{demo_dataset}/imagesTr/demo_00{i}.nii.gz,{demo_dataset}/labelsTr/demo_00{i}.nii.gz" for i in (0, 1)
    ]
    shutil.copy(demo_dataset / "imagesTr" / "demo_002.nii.gz", tmp_path / "rel.nii.gz")
    shutil.copy(demo_dataset / "labelsTr" / "demo_002.nii.gz", tmp_path / "rel_seg.nii.gz")
    rows.append("rel.nii.gz,rel_seg.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    index = discover_dataset(tmp_path / "cases.csv")
    assert index.layout == "csv" and len(index.items) == 3
    assert index.items[2] == {
        "image": str(tmp_path / "rel.nii.gz"),
        "label": str(tmp_path / "rel_seg.nii.gz"),
    }
    assert index.labels == {"0": "background", "1": "class_1", "2": "class_2"}


def test_2d_images_and_masks(tmp_path):
    (tmp_path / "input").mkdir()  # the reference document's {'input', 'label'} naming
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "input" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{name}_mask.png")
    index = discover_dataset(tmp_path)
    assert index.layout == "image2d" and index.modality == "image2d"
    assert index.labels == {"0": "background", "1": "foreground"}
    assert [Path(i["label"]).name for i in index.items] == ["a_mask.png", "b_mask.png"]


def write_drive(root: Path, cases=("21", "22"), fov: bool = True) -> Path:
    """DRIVE's layout: images/NN_training.tif (RGB), 1st_manual/NN_manual1.gif, mask/NN_training_mask.gif."""
    for folder in ("images", "1st_manual") + (("mask",) if fov else ()):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in cases:
        Image.fromarray(rng.integers(0, 255, (20, 18, 3), dtype=np.uint8)).save(
            root / "images" / f"{case}_training.tif"
        )
        vessels = np.zeros((20, 18), np.uint8)
        vessels[5:15, 8:10] = 255
        Image.fromarray(vessels).save(root / "1st_manual" / f"{case}_manual1.gif")
        if fov:
            Image.fromarray(np.full((20, 18), 255, np.uint8)).save(
                root / "mask" / f"{case}_training_mask.gif"
            )
    return root


def test_drive_layout_gives_vessels_as_labels_and_the_field_of_view(tmp_path):
    index = discover_dataset(write_drive(tmp_path / "DRIVE"))
    assert index.layout == "image2d" and len(index.items) == 2
    item = index.items[0]
    assert Path(item["image"]).name == "21_training.tif"
    assert Path(item["label"]).name == "21_manual1.gif"  # not mask/, which DRIVE uses for the field of view
    assert Path(item["fov"]).name == "21_training_mask.gif"
    # the presets read GIF and TIFF with PIL: the 0/255 vessel mask becomes a 0/1 label
    sample = build_transforms("image2d", "val")(item)
    assert sample["image"].shape == (3, 18, 20) and set(np.unique(sample["label"].numpy())) == {0.0, 1.0}


def test_drive_without_a_field_of_view_mask_is_named(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    (root / "mask" / "22_training_mask.gif").unlink()
    with pytest.raises(DataValidationError, match=r"22_training\.tif has no field-of-view mask"):
        discover_dataset(root)
    assert "fov" not in discover_dataset(write_drive(tmp_path / "plain", fov=False)).items[0]


def test_leading_token_match_must_be_unique(tmp_path):
    root = write_drive(tmp_path / "DRIVE", fov=False)
    shutil.copy(root / "1st_manual" / "21_manual1.gif", root / "1st_manual" / "21_manual2.gif")
    with pytest.raises(DataValidationError, match=r"21_training\.tif has no label"):
        discover_dataset(root)


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        discover_dataset(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(DataValidationError, match=f"dataset folder {tmp_path} is empty"):
        discover_dataset(tmp_path)


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataValidationError, match="no dataset.json and no image/label folder pair"):
        discover_dataset(tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataValidationError, match="image folder .*images is empty"):
        discover_dataset(tmp_path)


def test_image_without_label(demo_dataset, tmp_path):
    root = copy_pairs(demo_dataset, tmp_path / "pairs", "images", "labels")
    (root / "labels" / "demo_002.nii.gz").unlink()
    with pytest.raises(DataValidationError, match="image .*demo_002.nii.gz has no label in"):
        discover_dataset(root)


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(DataValidationError, match="dataset.json has no 'labels'; an MSD dataset.json has"):
        discover_dataset(tmp_path)


def test_csv_without_image_column(tmp_path):
    (tmp_path / "cases.csv").write_text("img,seg\na.nii.gz,b.nii.gz\n")
    with pytest.raises(DataValidationError, match="needs a header with an 'image' column"):
        discover_dataset(tmp_path / "cases.csv")


def test_dataset_file_must_be_csv(tmp_path):
    (tmp_path / "cases.txt").write_text("image,label\n")
    with pytest.raises(DataValidationError, match="must be a CSV"):
        discover_dataset(tmp_path / "cases.txt")


ITEMS = [{"image": f"case_{i}.nii.gz"} for i in range(10)]


def test_split_is_reproducible_and_disjoint():
    train, val = split_items(ITEMS, val_fraction=0.3, seed=7)
    assert (train, val) == split_items(ITEMS, val_fraction=0.3, seed=7)
    assert len(val) == 3 and len(train) == 7
    assert sorted(i["image"] for i in train + val) == sorted(i["image"] for i in ITEMS)
    assert {i["image"] for i in val} != {i["image"] for i in split_items(ITEMS, val_fraction=0.3, seed=8)[1]}
    assert train == [i for i in ITEMS if i in train]  # input order kept


@pytest.mark.parametrize(
    "fraction, count, expected_val", [(0.0, 5, 0), (0.01, 5, 1), (0.99, 5, 4), (0.5, 2, 1)]
)
def test_split_sizes(fraction, count, expected_val):
    assert len(split_items(ITEMS[:count], val_fraction=fraction)[1]) == expected_val


@pytest.mark.parametrize(
    "fraction, count, message", [(1.0, 5, r"\[0, 1\)"), (-0.1, 5, r"\[0, 1\)"), (0.2, 1, "cannot")]
)
def test_split_bad_input(fraction, count, message):
    with pytest.raises(ValueError, match=message):
        split_items(ITEMS[:count], val_fraction=fraction)


@pytest.fixture(scope="module")
def items_and_chain(demo_dataset):
    return discover_dataset(demo_dataset).items[:2], build_transforms("ct", "val")


@pytest.mark.parametrize(
    "kwargs, kind",
    [
        ({"cache": "memory"}, CacheDataset),
        ({"cache": "none"}, Dataset),
        ({"cache": "auto", "cache_memory_gb": 1.0}, CacheDataset),
        ({"cache": "auto", "cache_memory_gb": 1e-6}, Dataset),
    ],
)
def test_make_dataset_kinds(items_and_chain, kwargs, kind):
    items, chain = items_and_chain
    dataset = make_dataset(items, chain, **kwargs)
    assert type(dataset) is kind and len(dataset) == 2
    np.testing.assert_array_equal(dataset[1]["image"].numpy(), chain(items[1])["image"].numpy())


@pytest.mark.parametrize("cache", ["disk", "auto"])
def test_make_dataset_on_disk(items_and_chain, tmp_path, cache):
    items, chain = items_and_chain
    dataset = make_dataset(items, chain, cache=cache, cache_dir=tmp_path / "cache", cache_memory_gb=1e-6)
    assert type(dataset) is PersistentDataset
    first = dataset[0]["image"]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the cached, preprocessed case
    np.testing.assert_array_equal(dataset[0]["image"].numpy(), first.numpy())


def test_make_dataset_bad_options(items_and_chain):
    items, chain = items_and_chain
    with pytest.raises(ValueError, match="needs cache_dir"):
        make_dataset(items, chain, cache="disk")
    with pytest.raises(ValueError, match="memroy"):
        make_dataset(items, chain, cache="memroy")


def test_cache_memory():
    assert cache_memory_bytes(2.0) == 2 * 2**30
    assert cache_memory_bytes() > 0
    with pytest.raises(ValueError, match="cache_memory_gb must be >= 0"):
        cache_memory_bytes(-1)
