"""``torchrun --nproc_per_node 2 -m attnunet infer``: two CPU processes (gloo) split a folder's cases,
each case is segmented and written by exactly one of them, and one summary is printed; a case that cannot
be read is one line, and every other case is still written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from attnunet.checkpoints import save_checkpoint
from attnunet.spec import ModelSpec

CASES = [f"case_{i}" for i in range(5)]


def _model_and_scans(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A tiny random checkpoint and a folder of small NIfTI scans named ``names``."""
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 4, "depth": 2}
    spec = ModelSpec("attention_unet", kwargs, {"0": "background", "1": "organ"}, "mr", (16, 16, 16))
    model = save_checkpoint(
        tmp_path / "model.pt", {"spec": spec.to_dict(), "model": spec.build().state_dict()}
    )
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        volume = rng.normal(size=(20, 18, 12)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 2.0, 1.0])), scans / f"{name}.nii.gz")
    return model, scans


def _torchrun_infer(tmp_path: Path, scans: Path, model: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "attnunet", "infer", str(scans), "--model", str(model), "--output", str(tmp_path / "out"),
        "--device", "cpu", "--sw-device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_two_processes_write_each_case_exactly_once(tmp_path):
    model, scans = _model_and_scans(tmp_path, CASES)
    result = _torchrun_infer(tmp_path, scans, model)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{name}.nii.gz" for name in CASES]
    # every rank logs each case it segments: each name exactly once over both ranks (twice if both did all)
    segmented = Counter(re.findall(r"(case_\d): \(", result.stderr))
    assert segmented == Counter(CASES)
    assert result.stdout.count("prediction(s) written") == 1 and "5 prediction(s)" in result.stdout


def test_a_truncated_case_is_one_line_and_every_other_case_is_written(tmp_path):
    names = CASES[:4]  # rank 1 gets case_1 (truncated below) and case_3
    model, scans = _model_and_scans(tmp_path, names)
    bad = scans / "case_1.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    result = _torchrun_infer(tmp_path, scans, model)
    assert result.returncode != 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["case_0.nii.gz", "case_2.nii.gz", "case_3.nii.gz"], result.stderr[-4000:]
    named = [line for line in result.stderr.splitlines() if "case_1.nii.gz" in line]
    assert len(named) == 2, result.stderr[-4000:]  # the failing rank's line, then rank 0's list
    assert named[0].startswith("ERROR ") and "case_1.nii.gz cannot be read" in named[0]
    assert named[1].startswith("attnunet infer: error: 1 of 4 case(s) could not be segmented")
    # No trace from the ranks themselves (torchrun's own report of the exit code stays) and no gloo error.
    assert not re.search(r'File "[^"]*/(attnunet|pipelines)/', result.stderr), result.stderr[-4000:]
    assert "gloo" not in result.stderr.lower()
