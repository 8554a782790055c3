"""`benchmarks/nnunet_v2.py`: the training cases handed to nnU-Net v2 in its raw layout, the held-out scans
as its ``CASE_0000`` inputs, nothing copied; nnU-Net's own check accepts the dataset where it is installed."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from test_real_data_benchmark import write_nnunet_dataset

from attnunet.pipelines.demo.data import write_demo_dataset

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "nnunet_v2.py"


@pytest.fixture
def nnunet_v2(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("nnunet_v2")


def test_an_msd_dataset_becomes_nnunets_raw_layout_of_links(nnunet_v2, tmp_path):
    data = write_demo_dataset(tmp_path / "msd", num_cases=3, num_test=1, shape=(16, 16, 8), seed=0)
    folder = nnunet_v2.write_raw_dataset(data, tmp_path / "raw", 990)
    assert folder.name == "Dataset990_Benchmark"
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == [f"case_{n:04d}_0000.nii.gz" for n in range(3)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [
        f"case_{n:04d}.nii.gz" for n in range(3)
    ]
    assert all(p.is_symlink() for p in (folder / "imagesTr").iterdir())
    description = json.loads((folder / "dataset.json").read_text())
    assert description["numTraining"] == 3 and description["file_ending"] == ".nii.gz"
    assert description["labels"]["background"] == 0 and len(description["labels"]) == 3
    assert description["channel_names"] == {"0": "CT"}


def test_channels_stay_together_and_in_order(nnunet_v2, tmp_path):
    data = write_nnunet_dataset(tmp_path / "Dataset900_Tiny", cases=2)
    folder = nnunet_v2.write_raw_dataset(data, tmp_path / "raw", 991)
    links = sorted((folder / "imagesTr").iterdir())
    assert [p.name for p in links] == ["case_0000_0000.nii.gz", "case_0000_0001.nii.gz",
                                       "case_0001_0000.nii.gz", "case_0001_0001.nii.gz"]  # fmt: skip
    assert [p.resolve().name for p in links[:2]] == ["case0_0000.nii.gz", "case0_0001.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "T2", "1": "ADC"}
    names = nnunet_v2.write_test_inputs(data / "imagesTr", tmp_path / "test", channels=2)
    assert names == ["case0", "case1"]  # predictions named as the labels
    assert sorted(p.name for p in (tmp_path / "test").iterdir())[:2] == [
        "case0_0000.nii.gz",
        "case0_0001.nii.gz",
    ]


def test_a_file_nnunet_cannot_take_is_refused_by_name(nnunet_v2, tmp_path):
    source = tmp_path / "scan.nrrd"
    source.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"scan.nrrd: the benchmark hands nnU-Net .nii.gz files only"):
        nnunet_v2._link(source, tmp_path / "link.nii.gz")


def test_nnunets_own_check_accepts_the_dataset(nnunet_v2, tmp_path, monkeypatch):
    data = write_demo_dataset(tmp_path / "msd", num_cases=3, num_test=1, shape=(16, 16, 8), seed=0)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    integrity = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    folder = nnunet_v2.write_raw_dataset(data, tmp_path / "raw", 992)
    integrity.verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem
