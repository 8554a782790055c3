"""No room on the disk while training (a checkpoint) or inferring (a prediction): one line naming the file
and the bytes it needed, exit 2, and the last good checkpoint and earlier outputs untouched.

The writes fail for real without filling any disk: the command runs under a file-size limit
(``RLIMIT_FSIZE``, what ``ulimit -f`` sets), so the kernel refuses to grow a file past it (``EFBIG``);
test_atomic.py also fills a real 64 KiB tmpfs (``ENOSPC``).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from attnunet.pipelines.engines import train
from attnunet.pipelines.inference.predict import infer

LIMIT = 16_384  # bytes: more than a config.json or metrics.jsonl, less than a checkpoint or probabilities


def _limited(command: list[str]) -> subprocess.CompletedProcess:
    """``python -m attnunet COMMAND`` with files limited to :data:`LIMIT` bytes."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    return subprocess.run(
        [sys.executable, "-m", "attnunet", *command],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard)),
        timeout=600,
    )


def _one_error_line(stderr: str, command: str, path_pattern: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith(f"attnunet {command}: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(
        rf"attnunet {command}: error: cannot write ({path_pattern}): the file would pass this process's "
        r"file-size limit \(ulimit -f: 16,384 bytes\); it needs more than 16,384 bytes; raise the limit "
        r"\(ulimit -f\) or choose another output folder, then run again \(the earlier \1 is left as it was\)",
        errors[0],
    ), errors[0]


def test_a_checkpoint_that_does_not_fit_stops_training_and_keeps_the_last_good_one(
    demo_dataset, tmp_path, tiny_config
):
    output = tmp_path / "run"
    train(tiny_config(demo_dataset, output, cache="memory"))
    checkpoints = {name: (output / "checkpoints" / name).read_bytes() for name in ("best.pt", "last.pt")}
    command = [
        "train", "--data", str(demo_dataset), "--output", str(output), "--resume", "--epochs", "2",
        "--plan", "none", "--roi-size", "32", "32", "16", "--batch-size", "2", "--num-samples", "1",
        "--val-fraction", "0.5", "--sw-batch-size", "2", "--network-option", "init_features=4",
        "--network-option", "depth=3", "--cache", "memory", "--no-track", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    done = _limited(command)
    assert done.returncode == 2, done.stderr
    _one_error_line(done.stderr, "train", re.escape(str(output / "checkpoints")) + r"/(best|last)\.pt")
    assert {name: (output / "checkpoints" / name).read_bytes() for name in checkpoints} == checkpoints
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp


def test_a_prediction_that_does_not_fit_stops_inference_and_keeps_earlier_outputs(tiny_checkpoint, tmp_path):
    image = tmp_path / "case.nii.gz"
    volume = np.random.default_rng(0).uniform(-200, 400, (23, 19, 13)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 2.0, 1])), image)
    output = tmp_path / "predictions"
    infer(
        image,
        output,
        model=tiny_checkpoint,
        probabilities=True,
        device="cpu",
        sw_device="cpu",
        progress=False,
    )
    earlier = (output / "probabilities" / "case.nii.gz").read_bytes()
    assert len(earlier) > LIMIT  # the label map fits under the limit, the probabilities do not
    command = [
        "infer", str(image), "--model", str(tiny_checkpoint), "--output", str(output), "--probabilities",
        "--overwrite", "--device", "cpu", "--sw-device", "cpu", "--no-progress",
    ]  # fmt: skip
    done = _limited(command)
    assert done.returncode == 2, done.stderr
    _one_error_line(done.stderr, "infer", re.escape(str(output / "probabilities" / "case.nii.gz")))
    assert (output / "probabilities" / "case.nii.gz").read_bytes() == earlier
    assert sorted(p.name for p in Path(output, "probabilities").iterdir()) == ["case.nii.gz"]
