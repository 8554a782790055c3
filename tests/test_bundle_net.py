"""A minimal MONAI bundle whose network_def is ``attnunet.AttentionUNet`` passes ``verify_net_in_out``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _write_bundle(root: Path, out_channels_in_metadata: int) -> Path:
    configs = root / "configs"
    configs.mkdir(parents=True)
    metadata = {
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.0",
        "name": "attnunet network check",
        "task": "segmentation",
        "description": "the smallest bundle that names attnunet's network",
        "authors": "attnunet",
        "copyright": "attnunet",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    # odd sizes on purpose: the network pads and crops back
                    "spatial_shape": [19, "8*n", "2**p"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": out_channels_in_metadata,
                    "spatial_shape": [19, "8*n", "2**p"],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {"0": "background", "1": "organ", "2": "lesion"},
                }
            },
        },
    }
    inference = {
        "network_def": {
            "_target_": "attnunet.AttentionUNet",
            "spatial_dims": 3,
            "in_channels": "@_meta_#network_data_format#inputs#image#num_channels",
            "out_channels": 3,
            "init_features": 4,
            "depth": 3,
            "attention": "nonlocal",
        },
        "network": "$@network_def.to('cpu')",
    }
    (configs / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (configs / "inference.json").write_text(json.dumps(inference, indent=2))
    return configs


def _verify(configs: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    command += [
        "--meta_file",
        str(configs / "metadata.json"),
        "--config_file",
        str(configs / "inference.json"),
    ]
    command += ["--device", "cpu", "--n", "3", "--p", "3"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("out_channels, passes", [(3, True), (2, False)])
def test_verify_net_in_out(tmp_path, out_channels, passes):
    done = _verify(_write_bundle(tmp_path / "bundle", out_channels))
    log = done.stdout + done.stderr
    if passes:
        assert done.returncode == 0, log
        assert "data shape of network is verified with no error" in log
    else:  # the check can fail: a metadata that disagrees with the network is caught
        assert done.returncode != 0
        assert "output channel number `3` doesn't match: `2`" in log
