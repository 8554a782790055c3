"""The network registry: presets, overrides, helpful errors, the decorator, MONAI's ConfigParser."""

from __future__ import annotations

import math

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import AttentionUnet, UNet

from attnunet import AttentionUNet, create_network, list_networks, register_network
from attnunet import networks as registry
from attnunet.pipelines.planning.plan import plan_options
from attnunet.pipelines.planning.rules import network_kwargs, pool_and_kernel_sizes

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
    assert small.stem.conv_0.conv.out_channels == 16  # 8 lost a class on real MR
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


PEERS = ["monai_unet", "monai_attention_unet", "nnunet_plain_conv_unet"]
THICK_3D = {"pool_sizes": [[2, 2, 1]] * 3, "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]}
MIXED_3D = {"pool_sizes": [[2, 2, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 1], [3, 3, 3], [3, 3, 3]]}
THICK_2D = {"pool_sizes": [[2, 1], [2, 1]], "kernel_sizes": [[3, 1], [3, 1], [3, 3]]}
MONAI_SMALL = {"init_features": 4}
# (name, spatial_dims, kwargs, input shape): each size a multiple of its axis's pooling product, odd ones too
ANISOTROPIC_CASES = [
    *[(name, 3, {**MONAI_SMALL, "depth": 3, **THICK_3D}, (1, 3, 64, 64, 6)) for name in PEERS[:2]],
    *[(name, 3, {**MONAI_SMALL, "depth": 2, **MIXED_3D}, (2, 1, 16, 12, 6)) for name in PEERS[:2]],
    *[(name, 2, {**MONAI_SMALL, "depth": 2, **THICK_2D}, (1, 2, 16, 5)) for name in PEERS[:2]],
    ("monai_unet", 3, {**MONAI_SMALL, "depth": 3, "pool_sizes": THICK_3D["pool_sizes"]}, (1, 1, 24, 16, 3)),
    (
        "monai_attention_unet",
        2,
        {**MONAI_SMALL, "depth": 2, "kernel_sizes": THICK_2D["kernel_sizes"]},
        (1, 1, 8, 8),
    ),
    ("nnunet_plain_conv_unet", 3, {"features": (4, 8, 16, 32), **THICK_3D}, (1, 3, 64, 64, 6)),
    ("nnunet_plain_conv_unet", 3, {"features": (4, 8, 16), **MIXED_3D}, (2, 1, 16, 12, 6)),
    ("nnunet_plain_conv_unet", 2, {"features": (4, 8, 16), **THICK_2D}, (1, 2, 16, 5)),
]


def _smallest_conv_output(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``net(x)`` and, per axis, the smallest spatial size any convolution of ``net`` put out: the
    bottleneck's."""
    sizes = []
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    hooks = [conv.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[2:])) for conv in convs]
    try:
        y = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return y, tuple(min(size[axis] for size in sizes) for axis in range(x.ndim - 2))


@pytest.mark.parametrize("name, spatial_dims, kwargs, shape", ANISOTROPIC_CASES)
def test_peers_build_anisotropic_networks(name, spatial_dims, kwargs, shape):
    if name == "nnunet_plain_conv_unet":
        pytest.importorskip("dynamic_network_architectures")
    net = create_network(name, spatial_dims=spatial_dims, in_channels=shape[1], out_channels=3, **kwargs)
    x = torch.randn(*shape, requires_grad=True)
    y, bottleneck = _smallest_conv_output(net, x)
    assert y.shape == (shape[0], 3, *shape[2:])
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    pools = kwargs.get("pool_sizes") or [[2] * spatial_dims] * (len(kwargs["kernel_sizes"]) - 1)
    # each axis is downsampled by its own pooling product and no further: thick slices keep their count
    expected = tuple(size // math.prod(p[axis] for p in pools) for axis, size in enumerate(shape[2:]))
    assert bottleneck == expected


def test_monai_peers_get_the_elementwise_largest_kernel():
    unet = create_network("monai_unet", spatial_dims=3, in_channels=1, out_channels=2, depth=3, **THICK_3D)
    gated = create_network("monai_attention_unet", spatial_dims=2, in_channels=1, out_channels=2, depth=2,
                           kernel_sizes=[[3, 1], [3, 1], [3, 1]])  # fmt: skip
    assert unet.kernel_size == (3, 3, 3) and unet.strides == ((2, 2, 1),) * 3
    assert gated.kernel_size == (3, 1) and gated.strides == (2, 2)


def test_nnunet_plain_conv_unet_takes_the_plans_stages():
    pytest.importorskip("dynamic_network_architectures")
    net = create_network("nnunet_plain_conv_unet", spatial_dims=3, in_channels=1, out_channels=2, **THICK_3D)
    stems = [stage[0].convs[0].conv for stage in net.encoder.stages]  # the first convolution of each stage
    assert [conv.out_channels for conv in stems] == [
        32,
        64,
        128,
        256,
    ]  # nnU-Net's 32 * 2**i per planned stage
    assert [list(conv.stride) for conv in stems] == [[1, 1, 1], *THICK_3D["pool_sizes"]]
    assert [list(conv.kernel_size) for conv in stems] == THICK_3D["kernel_sizes"]
    deeper = create_network("nnunet_plain_conv_unet", spatial_dims=2, in_channels=1, out_channels=2,
                            pool_sizes=[[2, 1]] * 5)  # fmt: skip
    assert len(deeper.encoder.stages) == 6


def _monai_unet_before(spatial_dims, in_channels, out_channels):
    return UNet(spatial_dims, in_channels, out_channels, (32, 64, 128, 256, 512), (2,) * 4, norm="instance",
                act="prelu")  # fmt: skip


def _monai_attention_unet_before(spatial_dims, in_channels, out_channels):
    return AttentionUnet(spatial_dims, in_channels, out_channels, (32, 64, 128, 256, 512), (2,) * 4)


def _nnunet_plain_conv_unet_before(spatial_dims, in_channels, out_channels):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv, norm = (
        (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
        if spatial_dims == 3
        else (torch.nn.Conv2d, torch.nn.InstanceNorm2d)
    )
    return PlainConvUNet(
        in_channels, 4, [32, 64, 128, 256], conv, 3, [1, 2, 2, 2], 2, out_channels, 2, conv_bias=True,
        norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )  # fmt: skip


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(
    "name, before",
    [
        ("monai_unet", _monai_unet_before),
        ("monai_attention_unet", _monai_attention_unet_before),
        ("nnunet_plain_conv_unet", _nnunet_plain_conv_unet_before),
    ],
)
def test_peers_without_pool_and_kernel_sizes_are_as_before(name, before, spatial_dims):
    if name == "nnunet_plain_conv_unet":
        pytest.importorskip("dynamic_network_architectures")
    torch.manual_seed(0)
    reference = before(spatial_dims, 2, 3).state_dict()
    for geometry in ({}, {"pool_sizes": None, "kernel_sizes": None}):
        torch.manual_seed(0)
        state = create_network(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, **geometry)
        state = state.state_dict()
        assert list(state) == list(reference)
        assert all(
            torch.equal(state[key], reference[key]) for key in reference
        )  # the same draws: bit-identical
    # 2 and 3 everywhere, spelt out, is the same network too
    depth = 3 if name == "nnunet_plain_conv_unet" else 4
    explicit = {
        "pool_sizes": [[2] * spatial_dims] * depth,
        "kernel_sizes": [[3] * spatial_dims] * (depth + 1),
    }
    state = create_network(
        name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, **explicit
    ).state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}


@pytest.mark.parametrize("name", PEERS)
def test_plan_options_pass_the_plans_geometry_to_each_peer(name):
    if name == "nnunet_plain_conv_unet":
        pytest.importorskip("dynamic_network_architectures")
    pools, kernels = pool_and_kernel_sizes([64, 64, 6], [1.25, 1.25, 7.7], max_depth=3)  # thick slices
    plan = {
        "preset": "mr", "pixdim": [1.25, 1.25, 7.7], "roi_size": [64, 64, 6], "batch_size": 2,
        "num_samples": 1, "sw_batch_size": 1, "overlap": 0.5, "preset_kwargs": {},
        "network_kwargs": network_kwargs(pools, kernels, init_features=4, device="cpu"),
    }  # fmt: skip
    options = plan_options(plan, registry.network_arguments(name)).network_kwargs
    assert options["pool_sizes"] == [[2, 2, 1]] * 3 and options["kernel_sizes"] == kernels
    assert "attention_levels" not in options and "deep_supervision" not in options  # ours alone takes them
    net = create_network(name, spatial_dims=3, in_channels=2, out_channels=3, **options)
    y, bottleneck = _smallest_conv_output(net, torch.randn(1, 2, 64, 64, 6))
    assert y.shape == (1, 3, 64, 64, 6) and bottleneck == (8, 8, 6)


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
    (
        "monai_unet",
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "depth": 2, "pool_sizes": [[2, 2, 1]] * 3},
        r"monai_unet: pool_sizes must be depth=2 lists",
    ),
    (
        "monai_attention_unet",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "depth": 1,
            "kernel_sizes": [[3, 3, 1], [3, 3]],
        },
        r"monai_attention_unet: kernel_sizes must be depth \+ 1 = 2 lists .*kernel_sizes\[1\] is \[3, 3\]",
    ),
    (
        "monai_unet",
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": [[3, 1]]},
        r"each 1 or 2 \(pooled by 2, or not\); pool_sizes\[0\] = \[3, 1\] has 3",
    ),
    (
        "monai_unet",
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "depth": 1,
            "kernel_sizes": [[3, 2], [3, 3]],
        },
        r"odd and positive \(padding k // 2 keeps the size\); kernel_sizes\[0\] = \[3, 2\] has 2",
    ),
    (
        "nnunet_plain_conv_unet",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "features": (4, 8),
            "pool_sizes": [[2, 2, 1]] * 3,
        },
        r"pool_sizes has 3 entries but features \(4, 8\) gives 2 stages, so it needs 1; leave features out",
    ),
    (
        "nnunet_plain_conv_unet",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "pool_sizes": [[2, 2, 1]],
            "kernel_sizes": [[3, 3, 3]],
        },
        r"kernel_sizes has 1 entries but pool_sizes gives 2 stages, so it needs 2",
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
