"""``attnunet bundle init`` and :func:`attnunet.pipelines.bundle.init_bundle`: bundles for your own data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out

from attnunet.cli import main
from attnunet.pipelines.bundle import bundle_template_dir, init_bundle

CONFIGS = (
    "metadata.json",
    "train.json",
    "inference.json",
    "evaluate.json",
    "multi_gpu_train.json",
    "logging.conf",
)


def _configs(root: Path) -> tuple[dict, dict, dict]:
    read = lambda name: json.loads((root / "configs" / name).read_text())  # noqa: E731
    return read("train.json"), read("inference.json"), read("metadata.json")


def _parser(root: Path, config: str) -> ConfigParser:
    """The bundle's config as MONAI's commands read it: from the bundle's folder, with its metadata."""
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    return parser


def test_template_has_monai_layout():
    root = bundle_template_dir()
    for name in CONFIGS:
        assert (root / "configs" / name).is_file(), name
    assert (root / "docs" / "README.md").is_file()
    assert (root / "models").is_dir()
    train, _, metadata = _configs(root)
    assert train["network_def"]["_target_"] == "attnunet.AttentionUNet"
    assert train["train"]["preprocessing"]["_target_"] == "attnunet.transforms.presets.build_transforms"
    outputs = metadata["network_data_format"]["outputs"]["pred"]
    assert outputs["num_channels"] == train["out_channels"] == len(outputs["channel_def"])


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
def test_init_bundle_writes_settings_and_verifies(tmp_path, monkeypatch, kwargs, in_shape, out_channels):
    root = init_bundle("mine", tmp_path, **kwargs)
    assert root == tmp_path / "mine"
    train, inference, metadata = _configs(root)
    assert train["preset"] == kwargs["preset"]
    assert train["roi_size"] == kwargs["roi_size"]
    assert train["spatial_dims"] == len(kwargs["roi_size"])
    assert train["out_channels"] == out_channels
    assert train["pixdim"] == (None if "pixdim" not in kwargs else [float(p) for p in kwargs["pixdim"]])
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {str(i): c for i, c in enumerate(kwargs["classes"])}
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == kwargs["roi_size"]
    # only the CT preset takes a window; every chain passes exactly the preset's options
    expected_options = {"a_min", "a_max"} if kwargs["preset"] == "ct" else set()
    assert set(train["preset_kwargs"]) == expected_options
    for chain in (
        train["train"]["preprocessing"],
        train["validate"]["preprocessing"],
        inference["preprocessing"],
    ):
        assert expected_options <= set(chain) and not ({"a_min", "a_max"} - expected_options) & set(chain)

    # MONAI's own check of the network against metadata.json, then the network's real output shape
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "train.json"),
        device="cpu",
    )
    monkeypatch.chdir(root)  # inference.json's %configs/train.json#... macros are relative to the bundle
    parser = _parser(root, "inference.json")
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert network(torch.rand(in_shape)).shape == (1, out_channels, *in_shape[2:])
    chain = parser.get_parsed_content("preprocessing")
    assert type(chain.transforms[0]).__name__ == "LoadImaged"


def test_init_bundle_custom_window_and_dataset(tmp_path, demo_dataset, monkeypatch):
    root = init_bundle(
        "liver",
        tmp_path / "bundles",
        classes=["background", "organ", "lesion"],
        preset_kwargs={"a_min": -100, "a_max": 200},
        dataset_dir=demo_dataset,
    )
    train, _, _ = _configs(root)
    assert train["preset_kwargs"] == {"a_min": -100, "a_max": 200}
    assert Path(train["dataset_dir"]) == demo_dataset.resolve()
    monkeypatch.chdir(root)
    parser = _parser(root, "train.json")
    window = [
        t
        for t in parser.get_parsed_content("validate#preprocessing").transforms
        if "ScaleIntensityRange" in type(t).__name__
    ]
    assert (window[0].scaler.a_min, window[0].scaler.a_max) == (-100, 200)
    items = parser.get_parsed_content("train#datalist") + parser.get_parsed_content("validate#datalist")
    assert sorted(Path(i["image"]).name for i in items) == sorted(
        p.name for p in (demo_dataset / "imagesTr").iterdir()
    )


def test_cli_bundle_init(tmp_path, capsys):
    code = main(
        ["bundle", "init", "spleen", "--dir", str(tmp_path), "--classes", "background", "spleen",
         "--preset", "ct", "--roi-size", "32", "32", "16", "--pixdim", "1.5", "1.5", "2.0",
         "--window", "-100", "200"]
    )  # fmt: skip
    assert code == 0
    assert "python -m monai.bundle run" in capsys.readouterr().out
    train, _, metadata = _configs(tmp_path / "spleen")
    assert (train["out_channels"], train["roi_size"], train["pixdim"]) == (2, [32, 32, 16], [1.5, 1.5, 2.0])
    assert train["preset_kwargs"] == {"a_min": -100.0, "a_max": 200.0}
    assert metadata["name"] == "spleen"
    # no run outputs of the template (data, checkpoints, databases) are copied
    copied = {p.relative_to(tmp_path / "spleen").parts[0] for p in (tmp_path / "spleen").rglob("*")}
    assert copied == {"configs", "docs", "models"}


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
        init_bundle("ok", tmp_path, dataset_dir=tmp_path / "missing")
    assert not os.listdir(tmp_path)
