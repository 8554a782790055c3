"""attnunet.atomic.atomic_output: complete files or none, never a half-written replacement."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from attnunet.atomic import atomic_output


def test_writes_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "new" / "metrics.csv"  # the folder is created
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".metrics.csv.")
        tmp.write_text("case,dice\n")
    assert target.read_text() == "case,dice\n"
    assert os.listdir(target.parent) == ["metrics.csv"]


def test_failure_keeps_the_existing_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"earlier run")
    with pytest.raises(RuntimeError, match="exporter failed"), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter failed")
    assert target.read_bytes() == b"earlier run"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_temporary_keeps_all_extensions_so_writers_pick_the_format(tmp_path):
    target = tmp_path / "case_001.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.name.endswith(".nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp)
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip-compressed, as the name says
    assert nib.load(target).shape == (2, 2, 2)


def test_file_gets_the_permissions_of_a_newly_created_file(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "model.ts") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model.ts").stat().st_mode) == 0o644
