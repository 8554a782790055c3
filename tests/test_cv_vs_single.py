"""`benchmarks/cv_vs_single.sh`: folds under one budget against one model, both scored on held-out cases."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnunet.pipelines.demo.data import write_demo_dataset

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cv_vs_single.sh"
TINY = (
    "--device cpu --plan none --roi-size 32 32 16 --network-option init_features=4 --network-option depth=3 "
    "--batch-size 2 --num-samples 1 --sw-batch-size 2"
)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    # the venv's attnunet first on PATH, as the script calls the command by name
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, "PATH": path, **env}
    )


def test_folds_and_one_model_are_trained_inferred_and_scored(tmp_path):
    data = write_demo_dataset(tmp_path / "data", num_cases=6, num_test=2, shape=(32, 32, 16), seed=0)
    out = tmp_path / "bench"
    test = (str(data / "imagesTs"), str(data / "labelsTs"))
    done = _run(str(data), *test, str(out), "0.3", "2", TRAIN_OPTIONS=TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (out / "cv").glob("fold_*")) == ["fold_0", "fold_1"]
    assert (out / "cv" / "cv_summary.csv").is_file()
    for name in ("cv", "single"):  # both predicted every held-out case and were scored on it
        assert len(list((out / f"{name}_pred").glob("*.nii.gz"))) == 2
        assert (out / f"{name}_eval" / "summary.csv").is_file()
    with (out / "times.tsv").open() as stream:
        steps = [row["step"] for row in csv.DictReader(stream, delimiter="\t")]
    assert steps == ["cv_train", "cv_infer", "single_train", "single_infer"]


def test_an_existing_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    done = _run("data", "images", "labels", str(out))
    assert done.returncode == 2 and "exists" in done.stderr
    assert (out / "keep.txt").read_text() == "results"


@pytest.mark.parametrize("args", [(), ("data", "images", "labels")])
def test_too_few_arguments_print_the_usage(args):
    done = _run(*args)
    assert done.returncode == 2 and "TRAIN_DATA TEST_IMAGES TEST_LABELS OUT" in done.stdout
