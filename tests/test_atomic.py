"""attnunet.atomic: complete files or none, never a half-written or unasked-for replacement."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from attnunet.atomic import atomic_output, refuse_existing


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


def test_refuse_existing_names_every_existing_output(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"a")
    (tmp_path / "c.nii.gz").write_bytes(b"c")
    planned = [tmp_path / name for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz")]
    with pytest.raises(FileExistsError, match=r"a\.nii\.gz, .*c\.nii\.gz already exist \(2 files\)"):
        refuse_existing(planned, overwrite=False)
    with pytest.raises(FileExistsError, match=r"a\.nii\.gz already exists; pass overwrite=True"):
        refuse_existing(planned[:2], overwrite=False)
    refuse_existing(planned, overwrite=True)
    refuse_existing([tmp_path / "b.nii.gz"], overwrite=False)
