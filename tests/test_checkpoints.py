"""Checkpoint formats: today's round trip, and older checkpoints upgraded on load."""

from __future__ import annotations

import pytest
import torch

from attnunet.networks import create_network
from attnunet.pipelines.checkpoints import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

SPEC = {
    "name": "attention_unet_3d_small",
    "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "depth": 2},
}


def test_round_trip_keeps_the_format_and_the_weights(tmp_path):
    model = create_network(SPEC["name"], **SPEC["kwargs"])
    path = save_checkpoint(
        tmp_path / "model.pt", {"network": SPEC, "model": model.state_dict(), "config": {}}
    )
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT
    loaded, _ = model_from_checkpoint(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_format_1_small_preset_loads_with_its_8_features(tmp_path):
    # written before the small preset went from 8 to 16 features: its spec leaves the width to the preset
    old = create_network(SPEC["name"], **SPEC["kwargs"], init_features=8)
    path = tmp_path / "old.pt"
    torch.save(
        {"format": "attnunet-checkpoint/1", "network": SPEC, "model": old.state_dict(), "config": {}}, path
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and checkpoint["network"]["kwargs"]["init_features"] == 8
    model, _ = model_from_checkpoint(path)
    assert model.stem.conv_0.conv.out_channels == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in old.state_dict().items())


def test_format_1_with_an_explicit_width_keeps_it(tmp_path):
    spec = {"name": SPEC["name"], "kwargs": {**SPEC["kwargs"], "init_features": 4}}
    old = create_network(spec["name"], **spec["kwargs"])
    path = tmp_path / "old.pt"
    torch.save({"format": "attnunet-checkpoint/1", "network": spec, "model": old.state_dict()}, path)
    assert model_from_checkpoint(path)[0].stem.conv_0.conv.out_channels == 4


def test_unknown_format_is_refused(tmp_path):
    torch.save({"format": "attnunet-checkpoint/0", "network": SPEC, "model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="is not an attnunet checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
