"""Checkpoint formats and the typed model spec: today's round trip, older checkpoints upgraded on load."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch

from attnunet.checkpoints import (
    CHECKPOINT_FORMAT,
    NotAnAttnunetCheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from attnunet.cli import main
from attnunet.spec import SPEC_VERSION, ModelSpec

NETWORK = {
    "name": "attention_unet_3d_small",
    "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "depth": 2},
}
# what 'attnunet train' saved as "config" in formats 1 and 2
CONFIG = {
    "preset": "ct",
    "preset_kwargs": {"a_min": -100},
    "pixdim": [1.0, 1.0, 2.0],
    "roi_size": [32, 32, 16],
    "labels": {"0": "background", "1": "organ", "2": "lesion"},
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "sw_batch_size": 2,
    "overlap": 0.5,
}
SPEC = ModelSpec.from_config({**CONFIG, "network_spec": NETWORK})
# per-axis pooling and kernels (thick slices along the last axis), given as tuples
THICK = {"pool_sizes": ((2, 2, 1), (2, 2, 2)), "kernel_sizes": ((3, 3, 1), (3, 3, 1), (3, 3, 3))}


def test_round_trip_keeps_the_format_the_spec_and_the_weights(tmp_path):
    model = SPEC.build()
    path = save_checkpoint(tmp_path / "model.pt", {"spec": SPEC.to_dict(), "model": model.state_dict()})
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT
    loaded, spec = model_from_checkpoint(path)
    assert spec == SPEC and spec.roi_size == (32, 32, 16) and spec.pixdim == (1.0, 1.0, 2.0)
    assert (spec.overlap, spec.sw_batch_size, spec.preset_kwargs) == (0.5, 2, {"a_min": -100})
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_per_axis_pooling_and_kernels_round_trip_through_json_and_checkpoints(tmp_path):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2, **THICK}
    spec = ModelSpec("attention_unet", kwargs, CONFIG["labels"], "mr", (32, 32, 8))
    assert spec.network_kwargs["pool_sizes"] == [[2, 2, 1], [2, 2, 2]]  # held in JSON's types
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    model = spec.build()
    path = save_checkpoint(tmp_path / "model.pt", {"spec": spec.to_dict(), "model": model.state_dict()})
    loaded, loaded_spec = model_from_checkpoint(path)
    assert loaded_spec == spec
    assert loaded.pool_sizes == THICK["pool_sizes"] and loaded.kernel_sizes == THICK["kernel_sizes"]
    assert loaded.stem.conv_0.conv.kernel_size == (3, 3, 1)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # a run config read back from JSON (lists) names the same network
    config = json.loads(json.dumps({**CONFIG, "network_spec": {"name": "attention_unet", "kwargs": kwargs}}))
    assert ModelSpec.from_config(config).build().pool_sizes == THICK["pool_sizes"]


@pytest.mark.parametrize("version", ["attnunet-checkpoint/1", "attnunet-checkpoint/2"])
def test_older_formats_are_upgraded_to_a_typed_spec(tmp_path, version):
    kwargs = {**NETWORK["kwargs"], "init_features": 4}
    old = ModelSpec(NETWORK["name"], kwargs, CONFIG["labels"], "ct", (32, 32, 16)).build()
    path = tmp_path / "old.pt"
    network = {"name": NETWORK["name"], "kwargs": kwargs}
    torch.save({"format": version, "network": network, "model": old.state_dict(), "config": CONFIG}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["format"] == CHECKPOINT_FORMAT and "network" not in checkpoint
    model, spec = model_from_checkpoint(checkpoint)
    assert spec.network_kwargs["init_features"] == 4 and spec.labels == CONFIG["labels"]
    assert model.stem.conv_0.conv.out_channels == 4


def test_format_1_small_preset_loads_with_its_8_features(tmp_path):
    # written before the small preset went from 8 to 16 features: its spec leaves the width to the preset
    old = ModelSpec(NETWORK["name"], {**NETWORK["kwargs"], "init_features": 8}, {}, "ct", (8, 8, 8)).build()
    path = tmp_path / "old.pt"
    torch.save(
        {"format": "attnunet-checkpoint/1", "network": NETWORK, "model": old.state_dict(), "config": CONFIG},
        path,
    )
    model, spec = model_from_checkpoint(path)
    assert spec.network_kwargs["init_features"] == 8 and model.stem.conv_0.conv.out_channels == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in old.state_dict().items())


def test_an_old_checkpoint_without_its_run_config_is_refused_by_name(tmp_path):
    torch.save({"format": "attnunet-checkpoint/2", "network": NETWORK, "model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt: lacks \['preset', 'roi_size'"):
        load_checkpoint(tmp_path / "x.pt")


def test_unknown_format_is_refused(tmp_path):
    torch.save({"format": "attnunet-checkpoint/0", "network": NETWORK, "model": {}}, tmp_path / "x.pt")
    with pytest.raises(NotAnAttnunetCheckpointError, match="is not an attnunet checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_spec_of_another_version_is_refused():
    saved = {**SPEC.to_dict(), "version": SPEC_VERSION + 1}
    with pytest.raises(ValueError, match=f"model spec version {SPEC_VERSION + 1} is not one this attnunet"):
        ModelSpec.from_dict(saved, "model.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"roi_size": (32, 32)}, r"roi_size \(32, 32\) is not 3D"),
        ({"network_kwargs": {"spatial_dims": 3}}, r"lacks \['in_channels', 'out_channels'\]"),
    ],
)
def test_an_inconsistent_spec_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**{**SPEC.to_dict(), **change})


class _RunsCode:
    """What a malicious checkpoint pickles: an object whose unpickling runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_checkpoint_that_would_run_code_is_refused_without_torchs_unsafe_advice(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    torch.save({"format": CHECKPOINT_FORMAT, "model": _RunsCode(f"touch {marker}")}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(error.value)
    assert message.startswith(f"checkpoint {tmp_path / 'evil.pt'} holds objects that are not plain weights")
    assert "system" in message and "refuses" in message
    assert "weights_only" not in message and "truncated" not in message and "\n" not in message
    # through the command line: one line, nothing run
    args = ["infer", str(tmp_path / "scan.nii.gz"), "--model", str(tmp_path / "evil.pt")]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"attnunet infer: error: {message}\n"
    assert not marker.exists()
    # bytes that are no pickle at all: unreadable, and no advice to load them unsafely either
    (tmp_path / "scan.nii.gz").write_bytes(gzip.compress(b"not a checkpoint"))
    with pytest.raises(ValueError, match=r"scan.nii.gz cannot be read \(truncated or not a torch file\)$"):
        load_checkpoint(tmp_path / "scan.nii.gz")
