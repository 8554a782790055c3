"""`benchmarks/real_data.py`: every model through `attnunet train`'s pipeline, then infer and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "real_data.py"


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
