"""Yes/no options given as text on a MONAI bundle command line (pipelines/flags.py)."""

from __future__ import annotations

import pytest

from attnunet.pipelines.engines import TrainConfig
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.flags import flag
from attnunet.pipelines.inference.predict import infer


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("false", False), ("False", False), (" TRUE ", True)],
)
def test_booleans_and_their_text_are_read_as_meant(value, expected):
    assert flag("overwrite", value) is expected


@pytest.mark.parametrize("value", ["no", "0", "", 0, 1, None])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"^overwrite must be true or false, got {value!r}$"):
        flag("overwrite", value)


def test_overwrite_false_as_text_keeps_the_earlier_predictions(demo_dataset, tiny_checkpoint, tmp_path):
    """``monai.bundle run inference.json --overwrite false`` gives infer the text "false"."""
    images = demo_dataset / "imagesTs"
    (written, *_) = infer(images, tmp_path / "pred", model=tiny_checkpoint, device="cpu", progress="false")
    written.write_bytes(b"earlier prediction")
    with pytest.raises(FileExistsError):
        infer(images, tmp_path / "pred", model=tiny_checkpoint, overwrite="false", progress="false")
    assert written.read_bytes() == b"earlier prediction"


def test_training_and_evaluation_refuse_a_flag_that_is_not_one(demo_dataset, tmp_path):
    with pytest.raises(ValueError, match="^progress must be true or false, got 'off'$"):
        TrainConfig(data=str(demo_dataset), output=str(tmp_path / "run"), progress="off")
    assert TrainConfig(data=str(demo_dataset), output=str(tmp_path / "run"), amp="false").amp is False
    with pytest.raises(ValueError, match="^overwrite must be true or false, got 'yes'$"):
        evaluate(
            demo_dataset / "labelsTs", demo_dataset / "labelsTs", output_dir=tmp_path / "e", overwrite="yes"
        )
