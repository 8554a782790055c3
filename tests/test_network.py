"""AttentionUNet: shapes over 2D/3D, odd sizes, attention modes and options; argument and input checks."""

from __future__ import annotations

import pytest
import torch

from attnunet import AttentionUNet, create_network
from attnunet.blocks import AttentionGate, NonLocalBlock

SMALL = {"init_features": 4, "depth": 2}

# (constructor kwargs, input shape, expected output shape)
TEST_CASES = [
    ({"spatial_dims": 2, "in_channels": 3, "out_channels": 1, **SMALL}, (2, 3, 16, 16), (2, 1, 16, 16)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **SMALL}, (1, 1, 37, 50), (1, 2, 37, 50)),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **SMALL}, (1, 1, 1, 1), (1, 2, 1, 1)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 3, **SMALL}, (1, 1, 20, 17, 9), (1, 3, 20, 17, 9)),
    ({"spatial_dims": 3, "in_channels": 2, "out_channels": 2, **SMALL}, (2, 2, 8, 8, 8), (2, 2, 8, 8, 8)),
    (
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 2, "depth": 4},
        (1, 1, 33, 16, 5),
        (1, 2, 33, 16, 5),
    ),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_features": 4, "depth": 1},
        (1, 1, 7, 3),
        (1, 2, 7, 3),
    ),
]
OPTIONS = [
    {"attention": "nonlocal"},
    {"attention": "gate"},
    {"attention": "none"},
    {"attention": "nonlocal", "attention_levels": [2]},
    {"attention": "gate", "attention_levels": [1]},
    {"norm": "instance", "act": "leakyrelu", "dropout": 0.2},
    {"norm": ("group", {"num_groups": 2}), "act": ("elu", {"alpha": 0.5})},
    {"upsample": "deconv", "zero_init_attention": True},
]


@pytest.mark.parametrize(
    "kwargs, input_shape, expected_shape, options",
    [(*case, {}) for case in TEST_CASES]  # every size with the defaults, every option on two odd sizes
    + [(*case, options) for case in (TEST_CASES[1], TEST_CASES[3]) for options in OPTIONS],
)
def test_shape(kwargs, input_shape, expected_shape, options):
    net = AttentionUNet(**kwargs, **options).eval()
    with torch.no_grad():
        assert net(torch.randn(input_shape)).shape == expected_shape


@pytest.mark.parametrize("attention", ["nonlocal", "gate", "none"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batch_size_one_trains_on_the_smallest_input(attention, spatial_dims):
    """Padding to at least 2**(depth + 1) keeps two voxels per dim at the bottom, so batch norm trains."""
    torch.manual_seed(0)
    net = AttentionUNet(spatial_dims, 1, 2, init_features=4, depth=3, attention=attention).train()
    out = net(torch.randn(1, 1, *[1] * spatial_dims))
    assert out.shape == (1, 2, *[1] * spatial_dims)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())

    net.zero_grad()
    # 17 pads to 32, so the coarsest non-local block (at 4 voxels per dim) has 2 pooled keys per dim: with a
    # single key the softmax is exactly 1 and theta and phi get exactly zero gradient, by construction
    out = net(torch.randn(1, 1, *[17] * spatial_dims))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (1, *[17] * spatial_dims))).backward()
    # every kernel learns (a bias in front of a batch norm has a zero gradient by design)
    assert all(p.grad.any() for p in net.parameters() if p.dim() > 1)


def test_document_network_checked_by_issue():
    """The issue's check: the default widths (32 ... 512) in 3D map (1, 1, 97, 97, 97) to 3 channels."""
    net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 97, 97, 97)).shape == (1, 3, 97, 97, 97)


@pytest.mark.parametrize("spatial_dims, size", [(2, (10, 13)), (3, (5, 8, 9))])
def test_odd_sizes_are_zero_padded_at_the_end_and_cropped_back(spatial_dims, size):
    torch.manual_seed(0)
    net = AttentionUNet(spatial_dims, 1, 2, **SMALL).eval()
    padded = net.padded_size(list(size))
    assert padded == [max(-(-s // 4), 2) * 4 for s in size]  # a multiple of 2**depth, at least 2**(depth+1)
    x = torch.randn(1, 1, *size)
    pad = []
    for s, p in zip(reversed(size), reversed(padded), strict=True):
        pad += [0, p - s]
    with torch.no_grad():
        out = net(x)
        full = net(torch.nn.functional.pad(x, pad))
    assert full.shape[2:] == tuple(padded)
    torch.testing.assert_close(out, full[(..., *[slice(0, s) for s in size])])


def test_attention_modules_per_mode_and_level():
    nonlocal_net = AttentionUNet(2, 1, 2, init_features=8, depth=3)
    assert len([m for m in nonlocal_net.modules() if isinstance(m, NonLocalBlock)]) == 3
    assert not any(isinstance(m, AttentionGate) for m in nonlocal_net.modules())
    gate_net = AttentionUNet(2, 1, 2, init_features=8, depth=3, attention="gate")
    assert len([m for m in gate_net.modules() if isinstance(m, AttentionGate)]) == 3
    assert not any(isinstance(m, NonLocalBlock) for m in gate_net.modules())
    plain = AttentionUNet(2, 1, 2, init_features=8, depth=3, attention="none")
    assert not any(isinstance(m, (NonLocalBlock, AttentionGate)) for m in plain.modules())
    assert plain.attention_levels == ()

    # level k runs at 1/2**k of the input resolution
    net = AttentionUNet(2, 1, 2, init_features=8, depth=3, attention_levels=[2])
    blocks = [m for m in net.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == 1
    sizes = []
    blocks[0].register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].shape[2:]))
    net.eval()(torch.randn(1, 1, 32, 64))
    assert sizes == [(8, 16)]


def test_zero_init_attention_zeroes_every_output_projection():
    net = AttentionUNet(3, 1, 2, **SMALL, zero_init_attention=True)
    blocks = [m for m in net.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == 2 and all(not b.W.weight.any() for b in blocks)


def test_default_widths_follow_the_document():
    net = AttentionUNet(2, 3, 1)
    assert net.stem.conv_0.conv.out_channels == 32
    assert [stage.convs.conv_1.conv.out_channels for stage in net.encoder] == [64, 128, 256, 512]
    assert [stage.conv.conv.out_channels for stage in net.decoder] == [256, 128, 64, 32]
    assert net.head.conv.out_channels == 1


ILL_CASES = [
    ({"spatial_dims": 1, "in_channels": 1, "out_channels": 1}, "spatial_dims must be 2 or 3"),
    ({"spatial_dims": 2, "in_channels": 0, "out_channels": 1}, "in_channels must be a positive int"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1.5}, "out_channels must be a positive int"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 0}, "depth must be a positive int"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "init_features": -1}, "init_features"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "attention": "nonlcal"}, "nonlocal"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "upsample": "pixel"}, "deconv"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "attention_levels": [0]}, "1..depth=4"),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "attention_levels": [5]}, "1..depth=4"),
    (
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "attention": "none",
            "attention_levels": [1],
        },
        "no effect",
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "dropout": 1.0}, "dropout must be in"),
]


@pytest.mark.parametrize("kwargs, message", ILL_CASES)
def test_ill_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        AttentionUNet(**kwargs)


ILL_INPUTS = [
    ((1, 2, 16, 16), r"expects 3 input channels in dim 1, got shape \[1, 2, 16, 16\]"),
    ((3, 16, 16), r"expects a 4D input \(batch, 3 channels, 2 spatial dims\)"),
    ((1, 3, 16, 16, 16), r"expects a 4D input"),
]


@pytest.mark.parametrize("shape, message", ILL_INPUTS)
def test_ill_inputs(shape, message):
    net = AttentionUNet(2, 3, 1, **SMALL)
    with pytest.raises(ValueError, match=message):
        net(torch.randn(shape))
