"""``attnunet plan``: the dataset fingerprint and the rules that turn it into training settings."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared

from attnunet.cli import main
from attnunet.networks import create_network
from attnunet.pipelines.data.validation import DataValidationError
from attnunet.pipelines.engines import config_from_plan
from attnunet.pipelines.planning.plan import (
    PLAN_FORMAT,
    TRAIN_FIELDS,
    PlannedOptions,
    format_plan,
    load_plan,
    plan_dataset,
    plan_options,
    save_plan,
)
from attnunet.pipelines.planning.rules import (
    CPU_2D_CROPS,
    MIN_ORDERED_CASES,
    cap_2d_patch,
    mirror_axes,
    patches_per_batch,
    pool_and_kernel_sizes,
    reorients,
    sliding_window_batch,
    target_spacing,
)


def write_msd(
    root: Path,
    shapes: list[tuple[int, ...]],
    spacings: list[tuple[float, ...]],
    *,
    modality: dict | None = None,
    intensity: tuple[float, float] = (0.0, 100.0),
    labelled: bool = True,
    channels: list[int] | None = None,
) -> Path:
    """An MSD folder of NIfTI cases: a cube of class 1 (and a slab of class 2) inside each volume."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (shape, spacing) in enumerate(zip(shapes, spacings, strict=True)):
        label = np.zeros(shape, dtype=np.uint8)
        label[2:6, 2:6, 1:3] = 1
        label[6:8, 2:6, 1:3] = 2
        extra = () if not channels or channels[i] == 1 else (channels[i],)
        image = rng.normal(*intensity, size=shape + extra).astype(np.float32)
        image[label > 0] += 3 * intensity[1]
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i}.nii.gz")
        entry = {"image": f"./imagesTr/case_{i}.nii.gz"}
        if labelled or i:
            entry["label"] = f"./labelsTr/case_{i}.nii.gz"
        training.append(entry)
    description = {
        "labels": {"0": "background", "1": "head", "2": "tail"},
        "modality": modality if modality is not None else {"0": "MRI"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_isotropic_mr_plan(tmp_path):
    root = write_msd(tmp_path / "mr", [(30, 40, 20), (34, 44, 24), (38, 48, 28)], [(1.0, 1.0, 1.0)] * 3)
    plan = plan_dataset(root, device="cpu")
    assert plan["format"] == PLAN_FORMAT and plan["cases"] == 3 and plan["preset"] == "mr"
    assert plan["preset_source"] == "dataset"
    assert plan["pixdim"] == [1.0, 1.0, 1.0] and plan["median_shape"] == [34, 44, 24]
    # each axis pools while it keeps 4 voxels: x and y three times, the smallest (24) twice
    assert plan["depth"] == 3 and plan["network_kwargs"] == {
        "depth": 3,
        "init_features": 16,
        "deep_supervision": True,  # the recipe's (benchmarks/README.md)
        "pool_sizes": [[2, 2, 2], [2, 2, 2], [2, 2, 1]],
        "kernel_sizes": [[3, 3, 3]] * 4,
        "attention_levels": [2, 3],  # on a CPU, not at 1/2 resolution
    }
    assert plan["roi_size"] == [40, 48, 24]  # the median shape rounded up to each axis' pooling (8, 8, 4)
    assert plan["normalisation"]["scheme"].startswith("z-score") and plan["preset_kwargs"] == {}
    frequencies = {c["name"]: c["frequency"] for c in plan["classes"].values()}
    assert set(frequencies) == {"background", "head", "tail"}
    assert frequencies["head"] == pytest.approx(2 * frequencies["tail"], rel=1e-2)
    assert sum(frequencies.values()) == pytest.approx(1.0, abs=1e-5)
    assert plan["batch_size"] >= 1 and plan["sw_batch_size"] >= 1


def test_anisotropic_spacing_takes_the_tenth_percentile_on_the_coarse_axis(tmp_path):
    spacings = [(0.8, 0.8, z) for z in (5.0, 5.0, 4.0, 6.0, 2.0)]
    root = write_msd(tmp_path / "aniso", [(20, 20, 8)] * 5, spacings)
    plan = plan_dataset(root, device="cpu", sample_cases=1)
    assert plan["median_spacing"] == [0.8, 0.8, 5.0]
    assert plan["pixdim"] == [0.8, 0.8, pytest.approx(np.percentile([5, 5, 4, 6, 2], 10))]
    assert plan["sampled_cases"] == 1


def test_ct_window_comes_from_the_foreground_percentiles(tmp_path):
    root = write_msd(
        tmp_path / "ct", [(16, 16, 8)] * 2, [(1.0, 1.0, 2.0)] * 2, modality={"0": "CT"}, intensity=(-800, 50)
    )
    plan = plan_dataset(root, device="cpu")
    # foreground voxels are normal(-800 + 150, 50): the 0.5 / 99.5 percentiles lie about 2.6 sd around -650
    low, high = plan["preset_kwargs"]["a_min"], plan["preset_kwargs"]["a_max"]
    assert plan["preset"] == "ct" and -850 < low < -700 and -600 < high < -450
    assert plan["normalisation"]["percentile_00_5"] == low and abs(plan["normalisation"]["mean"] + 650) < 20


def test_undeclared_modality_is_guessed_from_air(tmp_path):
    root = write_msd(
        tmp_path / "guess", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, modality={}, intensity=(-1000, 5)
    )
    plan = plan_dataset(root, device="cpu")
    assert plan["preset"] == "ct" and plan["preset_source"] == "intensities"


def test_an_undeclared_ct_whose_foreground_is_soft_tissue_is_ct(tmp_path):
    """A liver-like CT: the labelled organ is soft tissue (about 60 HU), the air around the body -1000 HU.
    The foreground alone looks like MR; the whole image does not."""
    root = write_msd(tmp_path / "liver", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, modality={}, intensity=(0, 20))
    for path in sorted((root / "imagesTr").glob("*.nii.gz")):
        scan = nib.load(path)
        image = scan.get_fdata().astype(np.float32)
        image[:, :2] = -1000.0  # air beside the body
        nib.save(nib.Nifti1Image(image, scan.affine), path)
    plan = plan_dataset(root, device="cpu")
    assert plan["preset"] == "ct" and plan["preset_source"] == "intensities"
    no_air = write_msd(tmp_path / "mr", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, modality={}, intensity=(0, 20))
    assert plan_dataset(no_air, device="cpu")["preset"] == "mr"


def test_a_small_memory_budget_shrinks_the_patch_and_the_batch(tmp_path):
    root = write_msd(tmp_path / "big", [(64, 64, 64)] * 2, [(1.0,) * 3] * 2)
    roomy = plan_dataset(root, device="cpu")
    tight = plan_dataset(root, device="cpu", step_memory_gb=0.05)
    assert roomy["roi_size"] == [64, 64, 64]
    assert np.prod(tight["roi_size"]) < np.prod(roomy["roi_size"])
    assert tight["estimated_gb_per_step"] <= roomy["estimated_gb_per_step"]
    assert all(r % 2 ** tight["depth"] == 0 for r in tight["roi_size"])


def test_overrides_replace_a_field_and_what_follows_from_it(tmp_path):
    root = write_msd(tmp_path / "mr", [(30, 40, 20)] * 2, [(1.0,) * 3] * 2)
    plan = plan_dataset(root, device="cpu", overrides={"pixdim": [2.0, 2.0, 2.0], "init_features": 8})
    assert plan["median_shape"] == [15, 20, 10]  # re-derived from the overridden spacing
    assert plan["network_kwargs"]["init_features"] == 8 and plan["overrides"] == ["init_features", "pixdim"]
    fixed = plan_dataset(root, device="cpu", overrides={"roi_size": [32, 32, 16], "batch_size": 5})
    assert fixed["roi_size"] == [32, 32, 16] and fixed["batch_size"] == 5 and fixed["depth"] == 3


def test_a_run_without_attention_takes_the_plan_but_not_its_attention_levels(tmp_path):
    root = write_msd(tmp_path / "mr", [(30, 40, 20)] * 2, [(1.0,) * 3] * 2)
    plan = plan_dataset(root, device="cpu")
    assert plan["network_kwargs"]["attention_levels"]  # the plan places attention
    options = {"data": str(root), "output": str(tmp_path / "run"), "network": "attention_unet"}
    none = config_from_plan(plan, **options, network_kwargs={"attention": "none"})
    assert "attention_levels" not in none.network_kwargs  # the network refuses levels without attention
    assert none.network_kwargs["init_features"] == plan["init_features"]  # the rest of the plan stays
    create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, **none.network_kwargs)
    gate = config_from_plan(plan, **options, network_kwargs={"attention": "gate"})
    assert gate.network_kwargs["attention_levels"] == plan["network_kwargs"]["attention_levels"]


def test_planned_options_are_the_train_fields_and_merge_under_the_users(tmp_path):
    root = write_msd(tmp_path / "mr", [(30, 40, 20)] * 2, [(1.0,) * 3] * 2)
    plan = plan_dataset(root, device="cpu")
    planned = plan_options(plan, ["init_features", "depth"])
    assert [f.name for f in dataclasses.fields(PlannedOptions)] == [
        *TRAIN_FIELDS,
        "network_kwargs",
        "preset_kwargs",
    ]
    assert set(planned.network_kwargs) == {"init_features", "depth"}  # what the network takes, no more
    merged = planned.under({"batch_size": 7, "network_kwargs": {"depth": 2}, "preset_kwargs": {"x": 1}})
    assert merged["batch_size"] == 7 and merged["roi_size"] == plan["roi_size"]  # the user's win
    assert merged["network_kwargs"] == {"init_features": plan["init_features"], "depth": 2}
    assert merged["preset_kwargs"] == {**plan["preset_kwargs"], "x": 1}
    other = planned.under({"preset": "ct"})  # another preset: the plan's preset options do not apply
    assert other["preset"] == "ct" and other["preset_kwargs"] == {}


def test_unknown_override_is_refused_with_the_list(tmp_path):
    root = write_msd(tmp_path / "mr", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2)
    with pytest.raises(ValueError, match=r"cannot override \['patch'\].*roi_size"):
        plan_dataset(root, overrides={"patch": [8, 8, 8]})


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="empty"):
        plan_dataset(tmp_path / "empty")


def test_case_without_label(tmp_path):
    root = write_msd(tmp_path / "unlabelled", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, labelled=False)
    with pytest.raises(DataValidationError, match=r"case_0\.nii\.gz has no label; add its label file"):
        plan_dataset(root)


def test_ct_and_mr_channels_each_get_their_own_normalisation(tmp_path):
    root = write_msd(
        tmp_path / "mixed",
        [(16, 16, 8)] * 2,
        [(1.0,) * 3] * 2,
        modality={"0": "CT", "1": "T2"},
        channels=[2, 2],
    )
    plan = plan_dataset(root)
    assert plan["preset"] == "mr" and plan["channels"] == 2
    low, high = plan["preset_kwargs"]["channel_windows"]["0"]  # the CT channel: its own percentiles
    assert low < high
    assert plan["normalisation"]["channels"][0].startswith("CT: CT window")
    assert plan["normalisation"]["channels"][1] == "T2: z-score per case over its nonzero voxels"
    assert "channel 1" in format_plan(plan) and "T2: z-score" in format_plan(plan)


def test_mixed_channel_counts(tmp_path):
    root = write_msd(tmp_path / "channels", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, channels=[1, 2])
    with pytest.raises(
        DataValidationError,
        match=r"case_1\.nii\.gz has shape \(16, 16, 8, 2\) \(2 channel\(s\)\), expected 1",
    ):
        plan_dataset(root)


@pytest.mark.parametrize("name", ["PET", "bSSFP", "LGE", "T1c", "ADC"])
def test_any_channel_not_named_ct_is_z_scored(tmp_path, name):
    root = write_msd(tmp_path / "other", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2, modality={"0": name})
    plan = plan_dataset(root)
    assert (plan["preset"], plan["preset_source"], plan["preset_kwargs"]) == ("mr", "dataset", {})
    assert plan_dataset(root, overrides={"preset": "ct"})["preset_source"] == "override"


def test_label_value_outside_the_classes(tmp_path):
    root = write_msd(tmp_path / "values", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2)
    label = root / "labelsTr" / "case_0.nii.gz"
    data = np.asarray(nib.load(label).dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, nib.load(label).affine), label)
    with pytest.raises(
        DataValidationError, match=r"case_0\.nii\.gz has values \[7\] outside the declared classes"
    ):
        plan_dataset(root)


def test_save_load_and_bad_plan_files(tmp_path):
    root = write_msd(tmp_path / "mr", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2)
    plan = plan_dataset(root, device="cpu")
    assert load_plan(save_plan(plan, tmp_path / "out" / "plan.json")) == plan
    with pytest.raises(FileNotFoundError, match="attnunet plan DATA"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not JSON"):
        load_plan(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"format": "something/1"}')
    with pytest.raises(ValueError, match="not an attnunet plan"):
        load_plan(tmp_path / "other.json")


def test_cli_prints_the_table_and_writes_the_plan(tmp_path, capsys):
    root = write_msd(tmp_path / "mr", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2)
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--output", str(out), "--device", "cpu", "--set", "overlap=0.25"]) == 0
    printed = capsys.readouterr().out
    assert "patch" in printed and "class 2" in printed and "tail" in printed and str(out) in printed
    assert load_plan(out)["overlap"] == 0.25
    assert main(["plan", str(root), "--set", "overlap", "--output", str(tmp_path / "other.json")]) == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    # an existing plan is kept unless --overwrite
    assert main(["plan", str(root), "--output", str(out), "--set", "overlap=0.5"]) == 2
    assert "already exists" in capsys.readouterr().err and load_plan(out)["overlap"] == 0.25
    assert main(["plan", str(root), "--output", str(out), "--set", "overlap=0.5", "--overwrite"]) == 0
    assert load_plan(out)["overlap"] == 0.5


def test_help_shows_the_default_of_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    blocks = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:")[1])[1:]
    options = [" ".join(block.split()) for block in blocks if not block.startswith("-h")]
    assert len(options) == 6 and all("(default: " in text for text in options)
    assert any("(default: 20)" in text for text in options)


def test_rules_on_their_own():
    # isotropic: every axis pooled while it keeps 4 voxels, the smallest axis sets the depth
    assert pool_and_kernel_sizes([24, 44, 36], [1.0] * 3) == (
        [[2, 2, 2], [2, 2, 2], [1, 2, 2]],
        [[3, 3, 3]] * 4,
    )
    assert len(pool_and_kernel_sizes([512] * 3, [1.0] * 3)[0]) == 5  # at most MAX_DEPTH levels
    assert pool_and_kernel_sizes([2, 2, 2], [1.0] * 3)[0] == [[2, 1, 1]]  # at least one level
    # thick slices (CHAOS: 1.25 x 1.25 x 7.7 mm): in-plane only until the in-plane spacing has caught up
    pools, kernels = pool_and_kernel_sizes([128, 128, 40], [1.25, 1.25, 7.7])
    assert pools[:2] == [[2, 2, 1], [2, 2, 1]] and pools[2] == [2, 2, 2]
    assert kernels[:2] == [[3, 3, 1], [3, 3, 1]] and kernels[2] == [3, 3, 3]
    # a few slices (MyoPS: 0.73 mm in-plane, 6 slices of 12 mm) are never pooled
    pools, _ = pool_and_kernel_sizes([320, 352, 6], [0.73, 0.73, 12.0])
    assert len(pools) == 5 and all(level[2] == 1 for level in pools)
    assert pool_and_kernel_sizes([64, 64, 64], [1.0] * 3, max_depth=2)[0] == [[2, 2, 2]] * 2
    spacings = np.array([[0.7, 0.7, 5.0], [0.8, 0.8, 3.0], [0.9, 0.9, 5.0]])
    assert target_spacing(spacings) == [0.8, 0.8, pytest.approx(np.percentile([5.0, 3.0, 5.0], 10))]
    assert target_spacing(spacings[:, :2]) == [0.8, 0.8]  # isotropic enough: the medians
    gib = 2.0**30
    assert patches_per_batch([64, 64, 64], gib, 1e12, 100 * gib) == 100  # the budget limits
    assert patches_per_batch([64, 64, 64], gib, 64**3 * 20, 100 * gib) == 2  # 5% of a small dataset
    assert sliding_window_batch(gib, 0.1 * gib) == 1 and sliding_window_batch(gib, 100 * gib) == 8


def test_format_plan_lists_every_class(tmp_path):
    root = write_msd(tmp_path / "mr", [(16, 16, 8)] * 2, [(1.0,) * 3] * 2)
    table = format_plan(plan_dataset(root, device="cpu"))
    assert [line.split()[1] for line in table.splitlines() if line.startswith("class")] == ["0", "1", "2"]


@needs_shared("Task04_Hippocampus")
def test_plans_the_shared_hippocampus_like_nnunet():
    plan = plan_dataset(SHARED_DATA / "Task04_Hippocampus", device="cpu", sample_cases=4)
    assert plan["cases"] >= 200 and plan["preset"] == "mr" and plan["pixdim"] == [1.0, 1.0, 1.0]
    # nnU-Net's 3d_fullres plan for Task04: patch 40 x 56 x 40, three poolings
    assert plan["roi_size"] == [40, 56, 40] and plan["depth"] == 3
    assert [c["name"] for c in plan["classes"].values()] == ["background", "Anterior", "Posterior"]
    assert all(0.01 < c["frequency"] < 0.05 for c in list(plan["classes"].values())[1:])
    assert "flip_axes" not in plan["preset_kwargs"]  # 4 cases are too few to call an order fixed


@needs_shared("Task04_Hippocampus")
def test_the_hippocampus_is_mirrored_left_right_only():
    # the posterior class lies behind and above the anterior one in every case; left-right it varies
    for sampled in (12, 20):
        plan = plan_dataset(SHARED_DATA / "Task04_Hippocampus", device="cpu", sample_cases=sampled)
        assert plan["preset_kwargs"] == {"flip_axes": [0]}


@needs_shared("DRIVE", "training")
def test_plans_the_shared_drive_images():
    plan = plan_dataset(SHARED_DATA / "DRIVE" / "training", device="cpu", sample_cases=2)
    assert (plan["cases"], plan["preset"], plan["spatial_dims"], plan["channels"]) == (20, "image2d", 2, 3)
    assert plan["pixdim"] is None and plan["median_shape"] == [565, 584]
    # on a CPU, 256 x 256 crops, 4 per image (more steps per minute than whole images)
    assert plan["roi_size"] == [256, 256] and plan["num_samples"] == 4 and plan["depth"] == 5
    on_gpu = plan_dataset(SHARED_DATA / "DRIVE" / "training", device="cuda", step_memory_gb=8, sample_cases=2)
    assert on_gpu["roi_size"] == [576, 608] and on_gpu["num_samples"] == 2  # whole images, multiples of 2**5
    assert 0.05 < plan["classes"]["1"]["frequency"] < 0.15  # vessels: about 9% of the pixels


def test_a_2d_patch_is_capped_on_a_cpu_only():
    assert cap_2d_patch([576, 608], 2, "cpu") == ([256, 256], CPU_2D_CROPS)
    assert cap_2d_patch([576, 128], 2, "cpu") == ([256, 128], CPU_2D_CROPS)  # a short axis is kept
    assert cap_2d_patch([256, 192], 2, "cpu") == ([256, 192], None)  # small pictures: whole, default crops
    assert cap_2d_patch([256, 256, 1], 2, "cpu", slices=True) == ([256, 256, 1], CPU_2D_CROPS)  # one volume's
    assert cap_2d_patch([576, 608], 2, "cuda:0") == ([576, 608], None)
    assert cap_2d_patch([320, 320, 320], 3, "cpu") == ([320, 320, 320], None)  # 3D: nnU-Net's rule alone


def test_mirror_axes_keeps_out_the_axes_along_which_classes_keep_their_order():
    rng = np.random.default_rng(0)
    offsets = rng.normal(size=(MIN_ORDERED_CASES, 1, 3))  # one pair of classes, random order
    offsets[:, 0, 0] = rng.choice([-1.0, 1.0], MIN_ORDERED_CASES) * 5
    offsets[:, 0, 0][:2] = [-5.0, 5.0]  # both orders occur along left-right
    offsets[:, 0, 1] = -np.abs(offsets[:, 0, 1]) - 1.5  # always behind, by more than a voxel
    offsets[:, 0, 2] = np.abs(offsets[:, 0, 2]) + 1.5  # always above
    mm = (1.0, 1.0, 1.0)
    assert mirror_axes(offsets, mm) == [0]
    assert mirror_axes(offsets, (1.0, 1.0, 2.0)) == [0, 2]  # some cases within one 2 mm voxel: no order
    assert mirror_axes(offsets[1:], mm) == [0, 1, 2]  # one case fewer than MIN_ORDERED_CASES: chance
    with_gap = np.concatenate([offsets, np.full((3, 1, 3), np.nan)])  # cases without both classes
    assert mirror_axes(with_gap, mm) == [0]
    assert mirror_axes(np.zeros((0, 0, 3)), mm) == [0, 1, 2]  # one foreground class


def test_classes_in_a_fixed_place_are_not_mirrored_onto_each_other(tmp_path):
    # write_msd puts class 2 after class 1 along the first axis in every case
    root = write_msd(tmp_path / "mr", [(16, 16, 8)] * MIN_ORDERED_CASES, [(1.0,) * 3] * MIN_ORDERED_CASES)
    assert plan_dataset(root, device="cpu")["preset_kwargs"] == {"flip_axes": [1, 2]}
    few = write_msd(tmp_path / "few", [(16, 16, 8)] * 3, [(1.0,) * 3] * 3)
    assert plan_dataset(few, device="cpu")["preset_kwargs"] == {}


def test_reorients_only_when_every_case_maps_to_the_same_ras_axes():
    axial = np.diag([0.7, 0.7, 12.0, 1.0])
    tilted = axial.copy()
    tilted[:3, :3] = axial[:3, :3][:, [0, 2, 1]]  # the slice axis closest to anterior-posterior
    assert reorients([axial, axial]) and reorients([tilted, tilted])
    assert not reorients([axial, tilted])


@needs_shared("Dataset101_MyoPS")
def test_thick_oblique_slices_keep_their_axes_and_pool_in_plane(tmp_path):
    """MyoPS short-axis cardiac MR: 2-6 slices of 12-23 mm whose slice axis is closest to different RAS
    axes from case to case; reoriented, its thick axis would be averaged with an in-plane one."""
    plan = plan_dataset(SHARED_DATA / "Dataset101_MyoPS", sample_cases=3, device="cpu")
    assert plan["layout"] == "nnunet" and plan["channels"] == 3 and plan["preset"] == "mr"
    assert plan["preset_kwargs"]["reorient"] is False
    assert plan["pixdim"][2] >= 10 and max(plan["pixdim"][:2]) < 1  # the slice axis stays thick
    pools = plan["network_kwargs"]["pool_sizes"]
    assert len(pools) >= 4 and all(level[2] == 1 for level in pools)  # a few slices: in-plane only
    # too few slices to pool: a 2D configuration, one slice per patch, predicted slice by slice
    assert plan["configuration"] == "2d" and plan["slice_axis"] == 2 and plan["roi_size"][2] == 1
    assert all(level[2] == 1 for level in plan["network_kwargs"]["kernel_sizes"])
    assert "2D slices of the 3D volumes" in format_plan(plan)


def test_a_few_thick_slices_plan_a_2d_configuration_and_many_a_3d_one(tmp_path):
    few = write_msd(tmp_path / "few", [(64, 64, 5)] * 3, [(0.8, 0.8, 10.0)] * 3)
    plan = plan_dataset(few, device="cpu")
    assert (plan["configuration"], plan["slice_axis"], plan["roi_size"]) == ("2d", 2, [64, 64, 1])
    assert plan["network_kwargs"]["pool_sizes"] == [[2, 2, 1]] * plan["depth"]
    assert all(level == [3, 3, 1] for level in plan["network_kwargs"]["kernel_sizes"])
    many = write_msd(tmp_path / "many", [(64, 64, 24)] * 3, [(0.8, 0.8, 4.0)] * 3)
    plan = plan_dataset(many, device="cuda", step_memory_gb=4)  # planned for a GPU: nnU-Net's 3D
    assert plan["configuration"] == "3d" and plan["slice_axis"] is None and plan["roi_size"][2] > 1
    assert plan["network_kwargs"]["pool_sizes"][0] == [2, 2, 1]  # in-plane first: 0.8 mm against 4 mm
    # on a CPU thick slices are trained as slices: a 3D patch's step costs 10-20x as much (CHAOS)
    on_cpu = plan_dataset(many, device="cpu")
    assert (on_cpu["configuration"], on_cpu["slice_axis"], on_cpu["roi_size"]) == ("2d", 2, [64, 64, 1])
    assert (on_cpu["batch_size"], on_cpu["num_samples"]) == (1, CPU_2D_CROPS)  # 4 slices of one volume a step
    isotropic = write_msd(tmp_path / "isotropic", [(64, 64, 24)] * 3, [(1.0, 1.0, 1.0)] * 3)
    assert plan_dataset(isotropic, device="cpu")["configuration"] == "3d"
    # nnU-Net's "-c 2d" for the same set: a patch one slice thick along an axis asks for it
    sliced = plan_dataset(many, device="cpu", overrides={"roi_size": [128, 128, 1]})
    assert (sliced["configuration"], sliced["slice_axis"], sliced["depth"]) == ("2d", 2, 5)
    # the 10 mm slices do not count against the plane: 3 x 3 kernels down to 25.6 mm pixels
    assert sliced["network_kwargs"]["kernel_sizes"] == [[3, 3, 1]] * 6


def _broken_copy(demo: Path, target: Path, broken: str) -> Path:
    """The demo dataset with its first label on another grid, or 8 NaN voxels in its first image."""
    shutil.copytree(demo, target)
    folder = "labelsTr" if broken == "label-shape" else "imagesTr"
    path = sorted((target / folder).glob("*.nii.gz"))[0]
    image = nib.load(path)
    data = np.asarray(image.dataobj, np.float32)
    if broken == "label-shape":
        data = data[:-2]
    else:
        data[2:4, 2:4, 2:4] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return target


@pytest.mark.parametrize("broken", ["label-shape", "nan"])
def test_plan_refuses_what_train_refuses_with_the_same_line(
    demo_dataset, tmp_path, tiny_config, capsys, broken
):
    from attnunet.pipelines.engines import train

    data = _broken_copy(demo_dataset, tmp_path / "data", broken)
    with pytest.raises(DataValidationError) as refused:
        train(tiny_config(data, tmp_path / "run"))
    assert main(["plan", str(data), "--output", str(tmp_path / "plan.json"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"attnunet plan: error: {refused.value}" and len(error.splitlines()) == 1
    assert ("has shape" if broken == "label-shape" else "8 NaN") in error
    assert not (tmp_path / "plan.json").exists()
