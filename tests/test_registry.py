"""The network registry: presets, overrides, helpful errors, the decorator, MONAI's ConfigParser."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import AttentionUnet, UNet

from attnunet import AttentionUNet, create_network, list_networks, register_network
from attnunet import networks as registry

# (name, kwargs, expected attributes)
PRESETS = [
    ("attention_unet_2d", {}, {"spatial_dims": 2, "in_channels": 3, "out_channels": 1}),
    ("attention_unet_3d", {}, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}),
    ("attention_unet_3d_small", {}, {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}),
    ("attention_unet_3d", {"out_channels": 4, "attention": "gate"}, {"out_channels": 4, "attention": "gate"}),
    ("attention_unet", {"spatial_dims": 2, "in_channels": 2, "out_channels": 5}, {"out_channels": 5}),
]


def test_list_networks():
    names = list_networks()
    assert names == sorted(names)
    expected = {"attention_unet", "attention_unet_2d", "attention_unet_3d", "attention_unet_3d_small"}
    assert expected | {"monai_attention_unet", "monai_unet"} <= set(names)


@pytest.mark.parametrize("name, kwargs, expected", PRESETS)
def test_presets(name, kwargs, expected):
    net = create_network(name, **kwargs)
    assert isinstance(net, AttentionUNet)
    for key, value in expected.items():
        assert getattr(net, key) == value


def test_small_preset_is_small():
    small = create_network("attention_unet_3d_small")
    assert small.stem.conv_0.conv.out_channels == 16  # 8 lost a class on real MR (issue 10)
    assert (
        sum(p.numel() for p in small.parameters())
        < sum(p.numel() for p in create_network("attention_unet_3d").parameters()) / 3
    )


@pytest.mark.parametrize("name, cls", [("monai_attention_unet", AttentionUnet), ("monai_unet", UNet)])
def test_monai_baselines_have_matching_widths(name, cls):
    net = create_network(name, spatial_dims=2, in_channels=1, out_channels=3, init_features=4, depth=3)
    assert isinstance(net, cls)
    assert tuple(net.channels) == (4, 8, 16, 32)
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nnunet_plain_conv_unet_is_nnunets_plan(spatial_dims):
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")  # .ci/run installs it
    PlainConvUNet = unet.PlainConvUNet

    net = create_network(
        "nnunet_plain_conv_unet",
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=3,
        features=(4, 8, 400),
    )
    assert isinstance(net, PlainConvUNet)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 320, 320]  # two per stage, capped at 320
    assert [c.stride[0] for c in convs[::2]] == [1, 2, 2]
    assert net(torch.randn(1, 1, *[8] * spatial_dims)).shape == (1, 3, *[8] * spatial_dims)


def test_nnunet_plain_conv_unet_rejects_1d():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        create_network("nnunet_plain_conv_unet", spatial_dims=1, in_channels=1, out_channels=2)


ILL_CASES = [
    ("attention_unet_3", {}, "did you mean 'attention_unet_3d'"),
    ("resnet", {}, "attention_unet_2d"),  # the message lists the names
    (
        "attention_unet_2d",
        {"bad_option": 1},
        "unexpected keyword argument 'bad_option'.*accepts spatial_dims",
    ),
    ("attention_unet", {"in_channels": 1}, "missing a required argument: 'spatial_dims'"),
    (
        "monai_unet",
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "attention": "gate"},
        "attention",
    ),
]


@pytest.mark.parametrize("name, kwargs, message", ILL_CASES)
def test_ill_names_and_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_network(name, **kwargs)


def test_register_network_decorator(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_network("plain_unet_for_test")
    def plain(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2) -> torch.nn.Module:
        return AttentionUNet(spatial_dims, in_channels, out_channels, init_features=4, attention="none")

    assert "plain_unet_for_test" in list_networks()
    assert create_network("plain_unet_for_test", out_channels=3).out_channels == 3
    with pytest.raises(ValueError, match="already registered"):
        register_network("plain_unet_for_test")(plain)


@pytest.mark.parametrize(
    "config",
    [
        {
            "_target_": "attnunet.AttentionUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "init_features": 4,
            "depth": 2,
            "attention": "gate",
        },
        {"_target_": "attnunet.create_network", "name": "attention_unet_3d_small", "out_channels": 3},
    ],
)
def test_monai_config_parser_instantiates_the_network(config):
    parser = ConfigParser({"network_def": config})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, AttentionUNet)
    assert net.eval()(torch.randn(1, 1, 9, 8, 7)).shape == (1, 3, 9, 8, 7)


def test_network_arguments_lists_what_a_builder_accepts():
    assert {"init_features", "depth", "attention_levels"} <= set(registry.network_arguments("attention_unet"))
    assert "init_features" not in registry.network_arguments("nnunet_plain_conv_unet")
    with pytest.raises(ValueError, match="attention_unet"):
        registry.network_arguments("attention_unt")
