"""attnunet.atomic: complete files or none, never a half-written or unasked-for replacement."""

from __future__ import annotations

import os
import re
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from attnunet.atomic import DiskFullError, atomic_output, refuse_existing
from attnunet.cli import USER_ERRORS


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


# Writes the same target twice through atomic_output, as plain bytes (Python's OSError, with an errno) and
# with torch.save (a C++ RuntimeError without one), and prints each DiskFullError and the folder after.
_FILL = """
import sys
from pathlib import Path

import torch

from attnunet.atomic import DiskFullError, atomic_output

target = Path(sys.argv[1]) / "last.pt"
target.write_bytes(b"earlier run")
writers = [lambda tmp: tmp.write_bytes(bytes(300_000)), lambda tmp: torch.save(torch.ones(75_000), tmp)]
for write in writers:
    try:
        with atomic_output(target) as tmp:
            write(tmp)
    except DiskFullError as error:
        print(error)
print(sorted(p.name for p in target.parent.iterdir()), target.read_bytes())
"""


def _fill(folder: Path, prefix: list[str], **kwargs) -> list[str]:
    """Run the script above on ``folder`` behind ``prefix`` (a command); its printed lines."""
    script = folder.parent / "fill.py"
    script.write_text(_FILL)
    done = subprocess.run(
        [*prefix, sys.executable, str(script), str(folder)], capture_output=True, text=True, **kwargs
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_file_size_limit_is_a_disk_full_error_naming_the_file(tmp_path):
    # RLIMIT_FSIZE (ulimit -f) makes real writes fail with EFBIG without filling any disk.
    folder, hard = tmp_path / "out", resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    folder.mkdir()
    lines = _fill(folder, [], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, hard)))
    target = folder / "last.pt"
    expected = (
        f"cannot write {target}: the file would pass this process's file-size limit (ulimit -f: 16,384 "
        f"bytes); it needs more than 16,384 bytes; raise the limit (ulimit -f) or choose another output "
        f"folder, then run again (the earlier {target} is left as it was)"
    )
    assert lines == [expected, expected, "['last.pt'] b'earlier run'"]


def test_full_file_system_is_a_disk_full_error_naming_the_file(tmp_path):
    # A real ENOSPC: a 64 KiB tmpfs mounted over the folder in a user and mount namespace of its own.
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a small tmpfs without privileges")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    folder = tmp_path / "out"
    folder.mkdir()
    mount = 'mount -t tmpfs -o size=64k tmpfs "$3" && exec "$@"'
    lines = _fill(folder, ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"])
    target = folder / "last.pt"
    pattern = (
        rf"cannot write {re.escape(str(target))}: no space left on its device \(0 bytes free there\); it "
        r"needs more than [\d,]+ bytes; free some space or choose another output folder, then run again "
        rf"\(the earlier {re.escape(str(target))} is left as it was\)"
    )
    assert len(lines) == 3 and all(re.fullmatch(pattern, line) for line in lines[:2]), lines
    assert lines[2] == "['last.pt'] b'earlier run'"


def test_cli_reports_a_disk_full_error_as_bad_circumstances():
    assert issubclass(DiskFullError, OSError) and DiskFullError in USER_ERRORS
