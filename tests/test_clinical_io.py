"""``attnunet infer`` end to end on the real DICOM series of ../shared/data/dicom: DICOM SEG out, and
broken series (a missing or duplicated slice) stopped with one line, exit 2 and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import torch
from conftest import shared_dataset
from pydicom.uid import generate_uid

from attnunet.checkpoints import save_checkpoint
from attnunet.cli import main
from attnunet.spec import ModelSpec

LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def real(name: str) -> Path:
    return shared_dataset("dicom", name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny MR model with random weights: enough to segment something in every series."""
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
    spec = ModelSpec("attention_unet", kwargs, LABELS, "mr", (16, 16, 16))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_checkpoint(path, {"spec": spec.to_dict(), "model": spec.build().state_dict()})


def _infer(*args: str) -> int:
    return main(["infer", *args, "--no-progress"])


def test_a_dicom_seg_per_series_references_its_series(checkpoint, tmp_path):
    series = real("mr_hippocampus_crop_study1")
    output = tmp_path / "out"
    assert (
        _infer(
            str(series), "--model", str(checkpoint), "--output", str(output), "--output-format", "dicom-seg"
        )
        == 0
    )
    seg_path = output / f"{series.name}.dcm"
    assert [p.name for p in output.iterdir()] == [seg_path.name]
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    seg = hd.seg.segread(seg_path)
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        source.SOPInstanceUID for source in sources
    }
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    assert pydicom.dcmread(seg_path).SeriesDescription == "attnunet segmentation"


def test_dicom_seg_of_a_series_with_blank_uids_references_its_instances(checkpoint, tmp_path):
    """TotalSegmentator's anonymised CT has blank study, series and SOP UIDs in its datasets: the SEG
    takes the SOP UIDs from the files' meta headers and the frame of reference from the files."""
    series = real("ct_20slices_siemens")
    output = tmp_path / "out"
    code = _infer(str(series), "--model", str(checkpoint), "--output", str(output),
                  "--output-format", "dicom-seg")  # fmt: skip
    assert code == 0
    (seg_path,) = output.iterdir()
    seg = hd.seg.segread(seg_path)
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        source.file_meta.MediaStorageSOPInstanceUID for source in sources
    }


def test_dicom_seg_needs_series_inputs(checkpoint, tmp_path, capsys):
    nifti = tmp_path / "scan.nii.gz"
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), nifti)
    assert _infer(str(nifti), "--model", str(checkpoint), "--output", str(tmp_path / "o"), "--output-format",
                  "dicom-seg") == 2  # fmt: skip
    assert "needs DICOM series folders" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _broken_copy(tmp_path: Path, change: str) -> Path:
    """The real 20-slice CT linked into tmp, with one slice missing or one duplicated under a new UID."""
    source = sorted(real("ct_20slices_siemens").iterdir())
    folder = tmp_path / f"ct_{change}"
    folder.mkdir()
    for index, path in enumerate(source):
        if change == "missing" and index == 10:
            continue
        os.symlink(path, folder / path.name)
    if change == "duplicated":
        copy = pydicom.dcmread(source[5])
        copy.SOPInstanceUID = generate_uid()
        copy.save_as(folder / "copy_of_slice_5.dcm")
    return folder


@pytest.mark.parametrize(
    ("change", "message"), [("missing", "missing"), ("duplicated", "same slice position")]
)
def test_a_broken_series_stops_inference_with_one_line(checkpoint, tmp_path, capsys, change, message):
    folder = _broken_copy(tmp_path, change)
    output = tmp_path / "out"
    code = _infer(str(folder), "--model", str(checkpoint), "--output", str(output))
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert str(folder) in error and message in error
    assert not output.exists()


def test_the_command_logs_its_own_progress_not_every_attribute_highdicom_copies(checkpoint, tmp_path):
    series = real("mr_hippocampus_crop_study1")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "attnunet", "infer", str(series), "--model", str(checkpoint),
               "--output", str(output), "--output-format", "dicom-seg", "--no-progress"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert "INFO attnunet.pipelines.inference.predict" in done.stderr  # the per-case line stays
    assert "highdicom" not in done.stderr  # 'copy attributes of module ...' for every SEG
