"""Region-based training, as nnU-Net v2's: overlapping label sets (BraTS's whole tumour, tumour core,
enhancing tumour) with one sigmoid output each, written back as one label map in regions_class_order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceLoss
from test_nnunet_layout import write_nnunet_v2

from attnunet.cli import main
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.validation import DataValidationError, validate_items
from attnunet.pipelines.engines.components import RegionLoss, create_loss
from attnunet.pipelines.inference.apply import class_names, to_labels, volumes_ml
from attnunet.pipelines.planning.plan import format_plan, plan_dataset
from attnunet.regions import Regions
from attnunet.spec import SPEC_VERSION, ModelSpec

LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
REGIONS = Regions(("whole_tumor", "tumor_core", "enhancing_tumor"), ((1, 2, 3), (2, 3), (3,)), (1, 2, 3))
KWARGS = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "init_features": 4, "depth": 2}
NAMES = {"0": "background", "1": "class_1", "2": "class_2", "3": "enhancing_tumor"}
SPEC = ModelSpec("attention_unet", KWARGS, NAMES, "mr", (16, 16, 8))


def region_dataset(root: Path, cases: tuple[str, ...] = ("pat1", "pat2", "pat3"), **description) -> Path:
    """nnU-Net v2 cases with nested labels: 1 (edema) around 2 (core) around 3 (enhancing); a ``None`` in
    ``description`` leaves that key out of the dataset.json."""
    description = {"labels": LABELS, "regions_class_order": [1, 2, 3], **description}
    root = write_nnunet_v2(root, cases=cases, **{k: v for k, v in description.items() if v is not None})
    for path in (root / "labelsTr").iterdir():
        label = nib.load(path)
        nested = np.asarray(label.dataobj).copy()  # 1 in a cube
        nested[7:11, 7:11, 1:4] = 2
        nested[8:10, 8:10, 2] = 3
        nib.save(nib.Nifti1Image(nested, label.affine), path)
    return root


# --- parsing -------------------------------------------------------------------------------------------


def test_list_valued_labels_are_regions_in_the_file_s_order(tmp_path):
    index = discover_dataset(region_dataset(tmp_path / "brats"))
    assert index.regions == REGIONS
    # every value a case may hold, named after the region of that one value where there is one
    assert index.labels == NAMES
    validate_items(index.items, labels=index.labels)  # the nested labels are declared values


def test_a_region_may_name_a_value_no_case_holds(tmp_path):
    labels = {**LABELS, "whole_tumor": [1, 2, 3, 4]}
    index = discover_dataset(region_dataset(tmp_path / "brats", labels=labels))
    assert index.regions.values[0] == (1, 2, 3, 4) and sorted(index.labels, key=int) == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    validate_items(index.items, labels=index.labels)


def test_the_plan_lists_the_regions(tmp_path):
    plan = plan_dataset(region_dataset(tmp_path / "brats"), device="cpu")
    assert plan["regions"] == REGIONS.to_dict()
    table = format_plan(plan)
    assert "region whole_tumor" in table and "labels 2, 3: one sigmoid output, written as 2" in table


REGION_ILL_CASES = [
    ({"regions_class_order": None}, r"labels \['whole_tumor', 'tumor_core', 'enhancing_tumor'\] are regions"),
    ({"regions_class_order": [1, 2]}, r"'regions_class_order' must list one label value per region \(3: "),
    ({"regions_class_order": "1,2,3"}, r"'regions_class_order' must list one label value per region"),
    ({"labels": {**LABELS, "tumor_core": ["2", 3]}}, r"region labels must be label values or lists of them"),
]


@pytest.mark.parametrize("description, message", REGION_ILL_CASES)
def test_bad_regions_name_the_dataset_json(tmp_path, description, message):
    root = region_dataset(tmp_path / "brats", cases=("pat1",), **description)
    with pytest.raises(DataValidationError, match=rf"^{root / 'dataset.json'}: .*{message}") as error:
        discover_dataset(root)
    assert "\n" not in str(error.value)


# --- loss ----------------------------------------------------------------------------------------------


def _label_volume() -> torch.Tensor:
    labels = torch.zeros(2, 1, 8, 8, 4)  # float, as the transform chains give label maps
    labels[0, 0, 1:7, 1:7] = 1
    labels[0, 0, 2:6, 2:6] = 2
    labels[0, 0, 3:5, 3:5, 1:3] = 3
    labels[1, 0, 4:8, 4:8] = 1  # whole tumour only: no core in this patch
    return labels


def test_region_masks_are_multi_hot():
    masks = REGIONS.masks(_label_volume())
    assert masks.shape == (2, 3, 8, 8, 4)
    labels = _label_volume()
    for region, values in enumerate(REGIONS.values):
        expected = sum((labels[:, 0] == v) for v in values).float()
        torch.testing.assert_close(masks[:, region], expected)
    assert masks[1, 1:].sum() == 0 and masks[0, 2].sum() == 8  # the enhancing voxels lie in all three


def test_the_region_loss_is_batch_dice_plus_bce_on_the_region_masks():
    labels = _label_volume()
    logits = torch.randn(2, 3, 8, 8, 4, generator=torch.Generator().manual_seed(0))
    loss = create_loss("auto", 3, REGIONS)
    masks = REGIONS.masks(labels)
    expected = DiceLoss(sigmoid=True, batch=True)(logits, masks) + torch.nn.BCEWithLogitsLoss()(logits, masks)
    torch.testing.assert_close(loss(logits, labels), expected)
    assert isinstance(loss.loss, RegionLoss)


@pytest.mark.parametrize("name", ["auto", "dice_ce", "dice", "bce", "dice_focal"])
def test_a_perfect_region_prediction_costs_almost_nothing(name):
    labels = _label_volume()
    perfect = (REGIONS.masks(labels) * 2 - 1) * 20.0
    assert float(create_loss(name, 3, REGIONS)(perfect, labels)) < 0.01


def test_deep_supervision_resizes_the_label_map_before_the_regions_are_made():
    labels, loss = _label_volume(), create_loss("auto", 3, REGIONS)
    # the label map at half size as MONAI resizes it (nearest neighbour), its regions made from that
    half = torch.nn.functional.interpolate(labels, size=(4, 4, 2), mode=loss.interp_mode)
    scales = [(REGIONS.masks(labels) * 2 - 1) * 20.0, (REGIONS.masks(half) * 2 - 1) * 20.0]
    assert float(loss(scales, labels)) < 0.01


# --- label map, classes and volumes --------------------------------------------------------------------


def test_the_label_map_writes_the_regions_in_their_class_order():
    spec = ModelSpec.from_dict({**SPEC.to_dict(), "regions": REGIONS.to_dict()})
    # whole, core, enhancing probabilities of five voxels
    probabilities = torch.tensor(
        [[0.2, 0.9, 0.9, 0.9, 0.3], [0.1, 0.2, 0.8, 0.8, 0.1], [0.1, 0.1, 0.3, 0.7, 0.9]]
    ).reshape(3, 5, 1, 1)
    image = MetaTensor(probabilities, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    labels = to_labels(image, spec)
    assert labels.flatten().tolist() == [0, 1, 2, 3, 3]  # enhancing alone is written over nothing
    assert labels.dtype == torch.uint8 and torch.equal(labels.affine, image.affine)
    # each region writes its own value, and where several are on, the last region's value stays
    reversed_order = Regions(REGIONS.names, REGIONS.values, (3, 2, 1))
    assert reversed_order.label_map(probabilities > 0.5).flatten().tolist() == [0, 3, 2, 1, 1]
    assert class_names(spec) == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    # 8 mm^3 voxels: the whole tumour holds the voxels labelled 1, 2 or 3
    volumes = {"whole_tumor": 0.032, "tumor_core": 0.024, "enhancing_tumor": 0.016}
    assert volumes_ml(labels, spec) == pytest.approx(volumes)


# --- spec ----------------------------------------------------------------------------------------------


def test_a_region_spec_round_trips_through_json():
    spec = ModelSpec.from_dict({**SPEC.to_dict(), "regions": REGIONS.to_dict()})
    assert spec.regions == REGIONS and spec.sigmoid
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_an_older_spec_without_regions_still_loads():
    older = {key: value for key, value in SPEC.to_dict().items() if key != "regions"}
    spec = ModelSpec.from_dict({**older, "version": 1})
    assert spec.regions is None and spec.version == SPEC_VERSION and not spec.sigmoid


def test_regions_need_one_output_each():
    with pytest.raises(ValueError, match=r"3 regions .* need as many outputs, .* out_channels=4"):
        ModelSpec.from_dict(
            {**SPEC.to_dict(), "network_kwargs": {**KWARGS, "out_channels": 4}, "regions": REGIONS.to_dict()}
        )


# --- end to end ----------------------------------------------------------------------------------------


def test_out_channels_is_refused_for_a_region_dataset(tmp_path, tiny_config):
    from attnunet.pipelines.engines import train

    root = region_dataset(tmp_path / "brats")
    with pytest.raises(ValueError, match=r"out_channels=4: .* declares regions .*leave out_channels unset"):
        train(tiny_config(root, tmp_path / "run", preset="mr", out_channels=4))


def test_a_region_dataset_trains_infers_and_is_scored_per_region(tmp_path, tiny_config):
    from attnunet.pipelines.engines import train
    from attnunet.pipelines.inference.predict import infer

    root = region_dataset(tmp_path / "brats", cases=("pat1", "pat2", "pat3", "pat4"))
    config = tiny_config(
        root,
        tmp_path / "run",
        preset="mr",
        epochs=2,
        roi_size=(16, 16, 8),
        num_samples=2,
        network_kwargs={"init_features": 4, "depth": 2},
    )
    result = train(config)
    assert result.config["out_channels"] == 3 and result.config["regions"] == REGIONS.to_dict()
    assert {"val_dice_whole_tumor", "val_dice_tumor_core", "val_dice_enhancing_tumor"} <= set(
        result.history[-1]
    )
    written = infer(root / "imagesTr", tmp_path / "out", model=result.best_checkpoint, progress=False)
    assert [p.name for p in written] == ["pat1.nii.gz", "pat2.nii.gz", "pat3.nii.gz", "pat4.nii.gz"]
    for path in written:
        prediction, source = nib.load(path), nib.load(root / "imagesTr" / f"{path.name[:4]}_0000.nii.gz")
        assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
        assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= {0, 1, 2, 3}
    largest = infer(
        root / "imagesTr",
        tmp_path / "largest",
        model=result.best_checkpoint,
        largest_component=True,
        progress=False,
    )
    assert set(np.unique(np.asarray(nib.load(largest[0]).dataobj)).tolist()) <= {0, 1, 2, 3}
    regions = ["--region", "whole_tumor=1,2,3", "--region", "tumor_core=2,3", "--region", "enhancing_tumor=3"]
    argv = ["evaluate", "--predictions", str(tmp_path / "out"), "--labels", str(root / "labelsTr")]
    assert main([*argv, "--output", str(tmp_path / "scores"), "--no-progress", *regions]) == 0
    with open(tmp_path / "scores" / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4 and {"dice_whole_tumor", "dice_tumor_core", "dice_enhancing_tumor"} <= set(rows[0])
