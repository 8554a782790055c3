"""`benchmarks/real_data.py`: every model through `attnunet train`'s pipeline, then infer and evaluate."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.inference.inputs import discover_inputs

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "real_data.py"


@pytest.fixture
def real_data(monkeypatch):
    """The benchmark script as a module (it imports its neighbour ``harness`` as a top-level module)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("real_data")


def write_nnunet_dataset(root: Path, cases: int = 5, shape=(32, 32, 6)) -> Path:
    """nnU-Net v2's raw layout: ``cases`` cases of two channel files (``CASE_0000``, ``CASE_0001``), thick
    slices (1 x 1 x 5 mm), a cube of class 1 holding class 2."""
    for name in ("imagesTr", "labelsTr"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    for number in range(cases):
        label = np.zeros(shape, np.uint8)
        label[8 + number : 20 + number, 10:22, 1:5] = 1
        label[12 + number : 16 + number, 14:18, 2:4] = 2
        for channel in range(2):
            image = rng.normal(0, 1, shape).astype(np.float32) + (channel + 1) * label
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{number}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{number}.nii.gz")
    description = {
        "name": "tiny two-channel MR",
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "zone": 1, "lesion": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_an_nnunet_dataset_is_split_into_an_msd_training_folder(real_data, tmp_path):
    data = write_nnunet_dataset(tmp_path / "Dataset900_Tiny")
    test_items = real_data.write_training_folder(data, tmp_path / "train", test_fraction=0.4, seed=0)
    meta = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "zone", "2": "lesion"}
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    assert meta["name"] == "tiny two-channel MR" and "channel_names" not in meta and "file_ending" not in meta
    assert meta["numTraining"] == 3 and len(test_items) == 2
    for item in meta["training"]:  # each case's channel files, in channel order, at their own paths
        assert [Path(path).name for path in item["image"]] == [
            f"{Path(item['label']).name[:-7]}_{channel:04d}.nii.gz" for channel in range(2)
        ]
        assert all(Path(path).is_absolute() and Path(path).exists() for path in item["image"])
    # the folder is a dataset every command reads, holding the training cases and no held-out one
    index = discover_dataset(tmp_path / "train")
    assert index.layout == "msd" and index.modality == "T2+ADC" and index.labels == meta["labels"]
    assert index.items == meta["training"]
    assert not {item["label"] for item in index.items} & {item["label"] for item in test_items}


def test_an_msd_dataset_keeps_its_own_description(real_data, demo_dataset, tmp_path):
    test_items = real_data.write_training_folder(demo_dataset, tmp_path / "train", test_fraction=0.3, seed=0)
    source = json.loads((demo_dataset / "dataset.json").read_text())
    meta = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert meta["modality"] == source["modality"] and meta["labels"] == source["labels"]
    assert meta["numTraining"] + len(test_items) == len(discover_dataset(demo_dataset).items)
    assert all(isinstance(item["image"], str) for item in meta["training"])


def test_only_dataset_json_layouts_are_split(real_data, tmp_path):
    for name in ("imagesTr", "labelsTr"):
        (tmp_path / "pairs" / name).mkdir(parents=True)
    data = write_nnunet_dataset(tmp_path / "nnunet")
    for path in (data / "imagesTr").glob("*_0000.nii.gz"):  # a folder pair: one file per case
        path.rename(tmp_path / "pairs" / "imagesTr" / path.name.replace("_0000", ""))
    for path in (data / "labelsTr").iterdir():
        path.rename(tmp_path / "pairs" / "labelsTr" / path.name)
    with pytest.raises(SystemExit, match="MSD and nnU-Net datasets.*not 'pairs'"):
        real_data.write_training_folder(tmp_path / "pairs", tmp_path / "train", 0.4, 0)


def test_held_out_channel_files_are_segmented_as_one_case_named_as_the_label(
    real_data, demo_dataset, tmp_path
):
    data = write_nnunet_dataset(tmp_path / "Dataset900_Tiny")
    items = discover_dataset(data).items[:2]
    single = discover_dataset(demo_dataset).items[:1]
    one_channel = {"image": [items[1]["image"][0]], "label": items[1]["label"]}  # nnU-Net's CASE_0000 alone
    inputs = real_data.inference_inputs([*single, items[0]], tmp_path / "links")
    assert inputs == [single[0]["image"], str(tmp_path / "links")]  # a one-file case as it is
    cases = discover_inputs(inputs, channels=2)  # as infer reads them for a two-channel model
    assert [case.name for case in cases] == [Path(single[0]["label"]).name[:-7], "case0"]
    assert [Path(path).resolve() for path in cases[1].image] == [Path(path) for path in items[0]["image"]]
    inputs = real_data.inference_inputs([one_channel], tmp_path / "one")
    assert [case.name for case in discover_inputs(inputs, channels=1)] == ["case1"]


@pytest.mark.long
def test_real_data_benchmark_trains_scores_and_holds_cases_out(demo_dataset, tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, str(SCRIPT), "--data", str(demo_dataset), "--output", str(out)]
    options = ["--models", "MONAI UNet", "--minutes", "0.05", "--json", str(tmp_path / "rows.json")]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["model"] == "MONAI UNet" and row["epochs"] >= 1 and row["params_m"] > 0
    assert set(row["classes"]) == {"organ", "lesion"}
    assert all(0.0 <= row["classes"][c]["dice"]["mean"] <= 1.0 for c in row["classes"])
    assert "| MONAI UNet |" in done.stdout
    assert "epoch 1: train_loss=" in done.stderr  # the runs' progress is shown, as `attnunet train` shows it
    # the held-out case is neither in the training dataset.json nor among the training run's cases
    training = json.loads((out / "train" / "dataset.json").read_text())["training"]
    predicted = sorted(p.name for p in (out / "MONAI_UNet" / "pred").glob("*.nii.gz"))
    trained = {Path(item["image"]).name for item in training}
    assert len(predicted) == 1 and not trained & set(predicted) and len(trained) == 3
    # an existing output folder is refused before anything is written into it
    again = subprocess.run([*command, *options], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "exists" in again.stderr


@pytest.mark.long
def test_real_data_benchmark_runs_on_a_multichannel_nnunet_dataset(tmp_path):
    data = write_nnunet_dataset(tmp_path / "Dataset900_Tiny")
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--output",
        str(out),
        "--test-fraction",
        "0.4",
    ]
    done = subprocess.run(
        [*command, "--models", "nnU-Net PlainConvUNet", "--minutes", "0.05"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"the rows to {out / 'results.json'}" in done.stdout
    (row,) = json.loads((out / "results.json").read_text())  # the default --json
    assert set(row["classes"]) == {"zone", "lesion"} and row["epochs"] >= 1
    # the held-out cases are predicted under their labels' names, from both channels
    assert sorted(p.name for p in (out / "nnU-Net_PlainConvUNet" / "pred").glob("*.nii.gz")) == [
        "case2.nii.gz",
        "case4.nii.gz",
    ]
    config = json.loads((out / "nnU-Net_PlainConvUNet" / "config.json").read_text())
    assert (
        config["network_kwargs"]["pool_sizes"][0][2] == 1
    )  # the plan's thick slices reach nnU-Net's network
