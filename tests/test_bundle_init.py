"""``attnunet bundle init`` and :func:`~attnunet.pipelines.bundle.templates.init_bundle`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

from attnunet.cli import main
from attnunet.pipelines.bundle.paths import bundle_template_dir
from attnunet.pipelines.bundle.templates import init_bundle

CONFIGS = (
    "metadata.json",
    "train.json",
    "inference.json",
    "evaluate.json",
    "multi_gpu_train.json",
    "multi_gpu_evaluate.json",
    "logging.conf",
)


def _configs(root: Path) -> tuple[dict, dict, dict]:
    read = lambda name: json.loads((root / "configs" / name).read_text())  # noqa: E731
    return read("train.json"), read("inference.json"), read("metadata.json")


def test_template_has_the_model_zoo_layout():
    root = bundle_template_dir()
    for name in CONFIGS:
        assert (root / "configs" / name).is_file(), name
    for name in ("LICENSE", "docs/README.md", "docs/data_license.txt", "models/README.md"):
        assert (root / name).is_file(), name
    train, inference, metadata = _configs(root)
    assert train["config"]["_target_"] == "attnunet.pipelines.engines.config.planned_config"
    assert inference["inference"]["_target_"] == "attnunet.pipelines.inference.predict.infer"
    outputs = metadata["network_data_format"]["outputs"]["pred"]
    assert outputs["num_channels"] == inference["network_def"]["out_channels"] == len(outputs["channel_def"])
    # no config reads another by a path relative to the working folder
    for name in CONFIGS[:-1]:
        assert "%configs" not in (root / "configs" / name).read_text(), name


@pytest.mark.parametrize(
    "kwargs, in_shape, out_channels",
    [
        (
            {"classes": ["background", "liver"], "preset": "ct", "roi_size": [24, 20, 16]},
            (1, 1, 24, 20, 16),
            2,
        ),
        (
            {
                "classes": ["bg", "wm", "gm", "csf"],
                "preset": "mr",
                "roi_size": [16, 16, 16],
                "pixdim": [1, 1, 1],
            },
            (1, 1, 16, 16, 16),
            4,
        ),
        ({"classes": ["background", "polyp"], "preset": "image2d", "roi_size": [32, 48]}, (1, 3, 32, 48), 2),
    ],
)
def test_init_bundle_writes_settings_and_verifies(tmp_path, kwargs, in_shape, out_channels):
    root = init_bundle("mine", tmp_path, **kwargs)
    assert root == tmp_path / "mine"
    train, inference, metadata = _configs(root)
    assert (train["preset"], train["roi_size"]) == (kwargs["preset"], kwargs["roi_size"])
    assert train["pixdim"] == (None if "pixdim" not in kwargs else [float(p) for p in kwargs["pixdim"]])
    assert inference["network_def"]["spatial_dims"] == len(kwargs["roi_size"])
    assert inference["network_def"]["out_channels"] == out_channels == len(kwargs["classes"])
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {str(i): c for i, c in enumerate(kwargs["classes"])}
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == kwargs["roi_size"]
    assert json.loads((root / "configs" / "evaluate.json").read_text())["classes"] == kwargs["classes"]
    # MONAI's own check of the network against metadata.json, then the network's real output shape
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        device="cpu",
    )
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert network(torch.rand(in_shape)).shape == (1, out_channels, *in_shape[2:])


def test_init_bundle_custom_window_and_dataset(tmp_path, demo_dataset):
    root = init_bundle(
        "liver",
        tmp_path / "bundles",
        classes=["background", "organ", "lesion"],
        preset_kwargs={"a_min": -100, "a_max": 200},
        data=demo_dataset,
    )
    train, _, _ = _configs(root)
    assert train["preset_kwargs"] == {"a_min": -100, "a_max": 200}
    assert Path(train["data"]) == demo_dataset.resolve()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser.update({"bundle_root": str(root), "plan": "none", "roi_size": [16, 16, 16]})
    config = parser.get_parsed_content("config")  # the TrainConfig the bundle would train with
    assert (config.data, config.preset_kwargs) == (str(demo_dataset.resolve()), {"a_min": -100, "a_max": 200})
    assert config.output == f"{root}/models/run"


def test_cli_bundle_init(tmp_path, capsys):
    code = main(
        ["bundle", "init", "spleen", "--dir", str(tmp_path), "--classes", "background", "spleen",
         "--preset", "ct", "--roi-size", "32", "32", "16", "--pixdim", "1.5", "1.5", "2.0",
         "--window", "-100", "200"]
    )  # fmt: skip
    assert code == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    train, _, metadata = _configs(tmp_path / "spleen")
    assert (train["roi_size"], train["pixdim"]) == ([32, 32, 16], [1.5, 1.5, 2.0])
    assert train["preset_kwargs"] == {"a_min": -100.0, "a_max": 200.0}
    assert metadata["name"] == "spleen"
    # no run outputs of the template (data, checkpoints, databases) are copied
    copied = {p.relative_to(tmp_path / "spleen").parts[0] for p in (tmp_path / "spleen").rglob("*")}
    assert copied == {"configs", "docs", "models", "LICENSE"}


def test_cli_bundle_init_refuses_existing_folder(tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["bundle", "init", "taken", "--dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "attnunet bundle: error:" in error and "already exists" in error and str(existing) in error
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert (existing / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "ctt"}, "preset: By 'ctt', did you mean 'ct'"),
        ({"classes": ["background"]}, "classes"),
        ({"classes": ["a", "a"]}, "classes"),
        ({"roi_size": [32, 32]}, "roi_size"),
        ({"roi_size": [32, 32, 0]}, "roi_size"),
        ({"roi_size": [32, 32, 16.5]}, "roi_size"),
        ({"pixdim": [1.0, -1.0, 1.0]}, "pixdim"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"preset": "image2d", "spatial_dims": 3}, "spatial_dims"),
        ({"preset": "image2d", "pixdim": [1.0, 1.0]}, "pixdim"),
        ({"in_channels": 0}, "in_channels"),
        ({"preset_kwargs": {"a_min": 300, "a_max": 100}}, "a_min"),
        ({"preset": "mr", "preset_kwargs": {"a_min": 0}}, "a_min"),
    ],
)
def test_init_bundle_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        init_bundle("bad", tmp_path, **kwargs)
    assert not os.listdir(tmp_path), "a refused bundle leaves nothing behind"


def test_init_bundle_bad_name_and_dataset(tmp_path):
    with pytest.raises(ValueError, match="bundle name"):
        init_bundle("../escape", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        init_bundle("ok", tmp_path, data=tmp_path / "missing")
    assert not os.listdir(tmp_path)
