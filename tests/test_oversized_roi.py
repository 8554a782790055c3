"""An oversized --roi-size (larger than the padded image) is clamped with one warning, in training and in
inference, instead of computing windows of zeros for many minutes."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from attnunet.checkpoints import load_checkpoint
from attnunet.pipelines.engines import train
from attnunet.pipelines.engines.checks import resampled_sizes
from attnunet.pipelines.inference.predict import infer
from attnunet.transforms.headers import ImageHeader

PREDICT = "attnunet.pipelines.inference.predict"


def _messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


def test_resampled_sizes_follow_the_ras_axes_and_the_spacing():
    # stored axes (z, y, x) at 4, 3, 2 mm: RAS x is the third stored axis
    affine = np.array([[0, 0, 2.0, 0], [0, 3.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    header = ImageHeader("a.nii.gz", (10, 20, 30), 1, affine, np.dtype(np.float32))
    assert resampled_sizes([header], (1.0, 1.0, 1.0)).tolist() == [[60, 60, 40]]
    assert resampled_sizes([header], None).tolist() == [[30, 20, 10]]


@pytest.mark.parametrize(
    "pixdim, used",
    [
        (None, [32, 32, 16]),  # the demo's own 32 x 32 x 16
        ((4.5, 4.5, 6.0), [24, 24, 16]),  # 21 x 21 x 16 after resampling, padded to the multiple 8
    ],
)
def test_training_clamps_the_patch_to_the_largest_image(
    demo_dataset, tmp_path, tiny_config, caplog, pixdim, used
):
    config = tiny_config(demo_dataset, tmp_path / "run", roi_size=(256, 256, 256), pixdim=pixdim)
    with caplog.at_level(logging.WARNING, logger="attnunet.pipelines.engines.checks"):
        result = train(config)
    largest = [32, 32, 16] if pixdim is None else [21, 21, 16]
    assert _messages(caplog, "attnunet.pipelines.engines.checks") == [
        f"--roi-size [256, 256, 256] is larger than the largest training image needs ({largest} voxels "
        f"after resampling, padded to the network's multiple); training uses --roi-size {used}"
    ]
    assert result.config["roi_size"] == used
    assert list(load_checkpoint(result.best_checkpoint)["spec"]["roi_size"]) == used


def test_inference_clamps_each_window_axis_to_the_padded_image(tiny_checkpoint, tmp_path, caplog):
    rng = np.random.default_rng(0)
    image = tmp_path / "case.nii.gz"
    nib.save(
        nib.Nifti1Image(rng.uniform(-200, 400, (23, 19, 13)).astype(np.float32), np.diag([1.5, 1.5, 2.0, 1])),
        image,
    )
    with caplog.at_level(logging.INFO, logger=PREDICT):
        (clamped,) = infer(
            image,
            tmp_path / "big",
            model=tiny_checkpoint,
            roi_size=(256, 256, 256),
            device="cpu",
            sw_device="cpu",
            progress=False,
        )
    assert _messages(caplog, PREDICT) == [
        "case: (23, 19, 13) voxels, windows [24, 20, 16] on cpu, stitched on cpu"
    ]  # the window shrinks to the image padded to the network's multiple, and the log says so
    (fitting,) = infer(
        image,
        tmp_path / "fit",
        model=tiny_checkpoint,
        roi_size=(24, 20, 16),
        device="cpu",
        sw_device="cpu",
        progress=False,
    )  # a window that fits is used as given
    np.testing.assert_array_equal(nib.load(clamped).get_fdata(), nib.load(fitting).get_fdata())
