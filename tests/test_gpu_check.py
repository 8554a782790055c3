"""``benchmarks/gpu_check.sh``: the one-call GPU check runs here in its CPU dry run, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.long
def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = [row["step"] for row in rows]
    assert steps.count("train") == 4 and steps.count("autocast") == 2 and steps.count("compile") == 2
    trained = {row["model"] for row in rows if row["step"] == "train" and "samples_per_s" in row}
    assert trained == {"attnunet nonlocal", "MONAI UNet", "MONAI AttentionUnet", "nnU-Net PlainConvUNet"}
    (capped,) = [row for row in rows if row["step"] == "capped"]
    assert capped["ok"] and capped["stitched_on"] == "cpu" and capped["differing_voxels"] == 0
    log = (tmp_path / "gpu_check.log").read_text()
    assert "passed" in log and '"step": "infer"' in log  # the CUDA tests ran (and skipped), then the steps


def test_wheels_lists_a_pip_download_per_package():
    done = subprocess.run(["bash", str(SCRIPT), "--wheels"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert all(
        line.startswith("pip download --no-deps --only-binary=:all: --python-version 3.12") for line in lines
    )
    assert any(" monai==" in line for line in lines) and any(" nibabel==" in line for line in lines)
    assert not any("mlflow" in line or "SimpleITK" in line for line in lines)  # the device needs neither


def test_the_device_path_imports_without_what_the_device_lacks():
    """The device carries no SimpleITK, highdicom or MLflow wheels: the GPU check must import without them."""
    blocked = "import sys; [sys.modules.__setitem__(m, None) for m in ('SimpleITK', 'highdicom', 'mlflow')]; "
    script = repr(str(SCRIPT.with_suffix(".py")))
    run = f"import runpy; sys.argv = [{script}, '--help']; runpy.run_path({script}, run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", blocked + run],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
