"""``torchrun --nproc_per_node 2 -m attnunet infer``: two CPU processes (gloo) split a folder's cases,
each case is segmented and written by exactly one of them, and one summary is printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import nibabel as nib
import numpy as np
import torch

from attnunet.checkpoints import save_checkpoint
from attnunet.spec import ModelSpec

CASES = [f"case_{i}" for i in range(5)]


def test_two_processes_write_each_case_exactly_once(tmp_path):
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 4, "depth": 2}
    spec = ModelSpec("attention_unet", kwargs, {"0": "background", "1": "organ"}, "mr", (16, 16, 16))
    model = save_checkpoint(
        tmp_path / "model.pt", {"spec": spec.to_dict(), "model": spec.build().state_dict()}
    )
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in CASES:
        volume = rng.normal(size=(20, 18, 12)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 2.0, 1.0])), scans / f"{name}.nii.gz")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "attnunet", "infer", str(scans), "--model", str(model), "--output", str(tmp_path / "out"),
        "--device", "cpu", "--sw-device", "cpu", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{name}.nii.gz" for name in CASES]
    # every rank logs each case it segments: each name exactly once over both ranks (twice if both did all)
    segmented = Counter(re.findall(r"(case_\d): \(", result.stderr))
    assert segmented == Counter(CASES)
    assert result.stdout.count("prediction(s) written") == 1 and "5 prediction(s)" in result.stdout
