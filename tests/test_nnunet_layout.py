"""nnU-Net's raw layout (v1 and v2), one file per channel, grouped per case into one multi-channel image."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared

from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.files import channel_groups
from attnunet.pipelines.data.validation import DataValidationError, validate_items
from attnunet.pipelines.inference.inputs import discover_inputs
from attnunet.pipelines.planning.plan import plan_dataset
from attnunet.transforms.headers import read_header
from attnunet.transforms.presets import build_transforms

CHANNELS = {"0": "FLAIR", "1": "T1c"}


def write_case(folder: Path, case: str, channels: int, *, shape=(20, 18, 6), spacing=(1.0, 1.0, 4.0), seed=0):
    """Channel ``c`` of ``case`` holds ``c + 1`` inside the label's cube (a different image per channel)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    label = np.zeros(shape, np.uint8)
    label[5:12, 5:12, 1:4] = 1
    label[8:10, 8:10, 2] = 2
    for channel in range(channels):
        image = rng.normal(10, 1, shape).astype(np.float32) + 50 * (channel + 1) * (label > 0)
        nib.save(nib.Nifti1Image(image, affine), folder / f"{case}_{channel:04d}.nii.gz")
    return label, affine


def write_nnunet_v2(root: Path, cases=("pat1", "pat2", "pat3"), tests=("pat9",), **description) -> Path:
    for name in ("imagesTr", "labelsTr", "imagesTs"):
        (root / name).mkdir(parents=True)
    for seed, case in enumerate(cases):
        label, affine = write_case(root / "imagesTr", case, len(CHANNELS), seed=seed)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    for case in tests:
        write_case(root / "imagesTs", case, len(CHANNELS))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": CHANNELS,
                "labels": {"background": 0, "edema": 1, "enhancing": 2},
                "numTraining": len(cases),
                "file_ending": ".nii.gz",
                **description,
            }
        )
    )
    return root


def test_v2_groups_each_case_s_channel_files_in_suffix_order(tmp_path):
    index = discover_dataset(write_nnunet_v2(tmp_path / "Dataset001"))
    assert index.layout == "nnunet" and index.modality == "FLAIR+T1c" and len(index.items) == 3
    assert index.labels == {"0": "background", "1": "edema", "2": "enhancing"}
    first = index.items[0]
    assert [Path(p).name for p in first["image"]] == ["pat1_0000.nii.gz", "pat1_0001.nii.gz"]
    assert Path(first["label"]).name == "pat1.nii.gz"
    assert [[Path(p).name for p in item["image"]] for item in index.test_items] == [
        ["pat9_0000.nii.gz", "pat9_0001.nii.gz"]
    ]
    # one case, two channels: the header, the validation and the preset chain see one 2-channel image
    assert read_header(first["image"]).channels == 2
    validate_items(index.items, labels=index.labels, in_channels=2)
    chain = build_transforms("mr", "val", pixdim=(1.0, 1.0, 4.0))
    image = chain(dict(first))["image"]
    assert image.shape[0] == 2
    inside = chain(dict(first))["label"][0] > 0
    # each channel z-scored on its own, and the channels kept apart (channel 1 brighter inside the label)
    assert float(image[0][inside].mean()) < float(image[1][inside].mean())


def test_v1_lists_cases_without_their_channel_suffix(tmp_path):
    root = write_nnunet_v2(tmp_path / "Task001", tests=())
    description = json.loads((root / "dataset.json").read_text())
    description = {
        "modality": CHANNELS,
        "labels": {"0": "background", "1": "edema", "2": "enhancing"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("pat1", "pat2")
        ],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    index = discover_dataset(root)
    assert [[Path(p).name for p in item["image"]] for item in index.items] == [
        ["pat1_0000.nii.gz", "pat1_0001.nii.gz"],
        ["pat2_0000.nii.gz", "pat2_0001.nii.gz"],
    ]


def test_a_folder_pair_of_channel_files_is_one_case_per_label(tmp_path):
    root = write_nnunet_v2(tmp_path / "pairs")
    (root / "dataset.json").unlink()
    index = discover_dataset(root)
    assert index.layout == "pairs" and len(index.items) == 3
    assert [Path(p).name for p in index.items[1]["image"]] == ["pat2_0000.nii.gz", "pat2_0001.nii.gz"]


def test_a_csv_with_one_column_per_channel(tmp_path):
    root = write_nnunet_v2(tmp_path / "csv")
    rows = ["image_flair,image_t1c,label"] + [
        f"imagesTr/{c}_0000.nii.gz,imagesTr/{c}_0001.nii.gz,labelsTr/{c}.nii.gz" for c in ("pat1", "pat2")
    ]
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    index = discover_dataset(root / "cases.csv")
    assert [Path(p).name for p in index.items[0]["image"]] == ["pat1_0000.nii.gz", "pat1_0001.nii.gz"]


def test_the_plan_counts_channels_not_files(tmp_path):
    plan = plan_dataset(write_nnunet_v2(tmp_path / "plan"), device="cpu")
    assert plan["cases"] == 3 and plan["channels"] == 2 and plan["layout"] == "nnunet"
    assert plan["normalisation"]["channels"] == [
        "FLAIR: z-score per case over its nonzero voxels",
        "T1c: z-score per case over its nonzero voxels",
    ]


def test_inference_inputs_group_channel_files_into_cases_named_case(tmp_path):
    root = write_nnunet_v2(tmp_path / "infer")
    cases = discover_inputs(root / "imagesTs", channels=2)
    assert [c.name for c in cases] == ["pat9"]
    assert [Path(p).name for p in cases[0].image] == ["pat9_0000.nii.gz", "pat9_0001.nii.gz"]
    # a one-channel model given CASE_0000 files names its predictions CASE, as nnU-Net does
    single = tmp_path / "single"
    single.mkdir()
    write_case(single, "pat7", 1)
    assert [(c.name, Path(c.image).name) for c in discover_inputs(single)] == [("pat7", "pat7_0000.nii.gz")]
    with pytest.raises(ValueError, match=r"case pat9: channel file pat9_0002.nii.gz is missing"):
        discover_inputs(root / "imagesTs", channels=3)


def _edit_description(root: Path, **changes) -> None:
    path = root / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


DAMAGES = {
    "missing channel": (
        lambda r: (r / "imagesTr" / "pat2_0001.nii.gz").unlink(),
        r"case pat2: channel file pat2_0001.nii.gz is missing",
    ),
    "missing label": (
        lambda r: (r / "labelsTr" / "pat3.nii.gz").unlink(),
        r"case pat3: .*pat3_0000.nii.gz has no label .*pat3.nii.gz",
    ),
    "no suffix": (
        lambda r: (r / "imagesTr" / "pat3_0000.nii.gz").rename(r / "imagesTr" / "pat3.nii.gz"),
        r"pat3.nii.gz has no channel suffix",
    ),
    "extra channel": (
        lambda r: write_case(r / "imagesTr", "pat1", 3),
        r"case pat1: pat1_0002.nii.gz is a channel beyond the 2 expected",
    ),
    "numTraining": (
        lambda r: _edit_description(r, numTraining=5),
        r"numTraining is 5 but .*labelsTr holds 3",
    ),
    "regions without their order": (
        lambda r: _edit_description(r, labels={"background": 0, "tumour": [1, 2]}),
        r"labels \['tumour'\] are regions .*add 'regions_class_order'",
    ),
}


@pytest.mark.parametrize("problem", DAMAGES)
def test_layout_problems_name_the_case_and_the_file(tmp_path, problem):
    damage, message = DAMAGES[problem]
    root = write_nnunet_v2(tmp_path / "bad")
    damage(root)
    with pytest.raises(DataValidationError, match=message):
        discover_dataset(root)


def test_channel_files_on_different_grids_are_named(tmp_path):
    root = write_nnunet_v2(tmp_path / "grid")
    write_case(root / "imagesTr", "pat2", 2, spacing=(1.0, 1.0, 5.0))  # both channels replaced ...
    nib.save(
        nib.Nifti1Image(np.zeros((20, 18, 6), np.float32), np.diag([1.0, 1.0, 4.0, 1.0])),
        root / "imagesTr" / "pat2_0000.nii.gz",
    )  # ... and channel 0 put back on the label's grid
    index = discover_dataset(root)
    with pytest.raises(DataValidationError, match=r"pat2_0001.nii.gz: channel 1 has another geometry"):
        validate_items(index.items, labels=index.labels)


def test_channel_groups_needs_every_file_suffixed():
    assert channel_groups([Path("a_0001.nii.gz"), Path("a_0000.nii.gz")]) == {
        "a": [Path("a_0000.nii.gz"), Path("a_0001.nii.gz")]
    }
    with pytest.raises(ValueError, match="b.nii.gz has no channel suffix"):
        channel_groups([Path("a_0000.nii.gz"), Path("b.nii.gz")])


@needs_shared("Dataset101_MyoPS")
def test_myops_is_read_as_35_three_sequence_cases():
    index = discover_dataset(SHARED_DATA / "Dataset101_MyoPS")
    assert index.layout == "nnunet" and len(index.items) == 35 and index.modality == "bSSFP+LGE+T2"
    assert all(len(item["image"]) == 3 for item in index.items)
    assert index.labels["5"] == "scar" and index.labels["4"] == "edema"


def test_an_msd_dataset_json_may_list_a_case_s_channel_files(tmp_path):
    root = write_nnunet_v2(tmp_path / "listed", tests=())
    entry = {
        "image": ["./imagesTr/pat2_0000.nii.gz", "./imagesTr/pat2_0001.nii.gz"],
        "label": "./labelsTr/pat2.nii.gz",
    }
    _edit_description(
        root, training=[entry], modality=CHANNELS, labels={"0": "background", "1": "a", "2": "b"}
    )
    index = discover_dataset(root)
    assert index.layout == "msd" and [Path(p).name for p in index.items[0]["image"]] == [
        "pat2_0000.nii.gz",
        "pat2_0001.nii.gz",
    ]
    assert all(Path(p).is_absolute() for p in index.items[0]["image"])


def test_a_2d_configuration_trains_on_slices_and_predicts_the_volume_s_grid(tmp_path, tiny_config):
    """Patches of one slice, kernels of 1 across slices: trained as 2D images, predicted slice by slice
    by the sliding window, written on each scan's own grid."""
    from attnunet.pipelines.engines import train
    from attnunet.pipelines.inference.predict import infer

    root = write_nnunet_v2(tmp_path / "thick", cases=("pat1", "pat2", "pat3", "pat4"))
    config = tiny_config(
        root,
        tmp_path / "run",
        preset="mr",
        pixdim=(1.0, 1.0, 4.0),
        roi_size=(16, 16, 1),
        num_samples=2,
        network_kwargs={
            "init_features": 4,
            "depth": 2,
            "pool_sizes": [[2, 2, 1]] * 2,
            "kernel_sizes": [[3, 3, 1]] * 3,
        },
    )
    result = train(config)
    assert result.config["roi_size"] == [16, 16, 1] and result.config["in_channels"] == 2
    written = infer(root / "imagesTs", tmp_path / "out", model=result.best_checkpoint, progress=False)
    assert [p.name for p in written] == ["pat9.nii.gz"]
    prediction = nib.load(written[0])
    source = nib.load(root / "imagesTs" / "pat9_0000.nii.gz")
    assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
