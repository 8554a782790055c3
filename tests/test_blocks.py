"""The non-local block against a naive full-matrix reference, its CPU kernel, the gate, a decoder stage,
and the CPU inference path of each against the modules' own forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import basic_unet
from torch.profiler import profile

from attnunet.blocks import (
    AttentionGate,
    DecoderStage,
    Down,
    NonLocalBlock,
    TwoConv,
    channels_last,
    forward_inference,
)


def naive_nonlocal(
    block: NonLocalBlock, x: torch.Tensor, pool_size: int | tuple[int, ...] = 2
) -> torch.Tensor:
    """The document's formula written out: the full (positions x pooled positions) matrix, then softmax,
    with the keys and values pooled by ``pool_size`` (per axis)."""
    h = block.project(x)
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    batch, channels = h.shape[:2]
    theta = block.theta(h).flatten(2)  # (B, C_k, N)
    phi = pool(block.phi(h), pool_size, ceil_mode=True).flatten(2)  # (B, C_k, M)
    g = pool(block.g(h), pool_size, ceil_mode=True).flatten(2)  # (B, C_g, M)
    f = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, M), no scaling
    y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(batch, g.shape[1], *h.shape[2:])
    return block.W(y) + h


# (spatial_dims, in_channels, out_channels, input shape, key pooling): odd sizes, size 1 and 2 (pooling
# with ceil_mode), keys pooled per axis (thick slices: not along the last axis)
REFERENCE_CASES = [
    (2, 8, 16, (2, 8, 9, 7), 2),
    (2, 4, 32, (1, 4, 16, 16), 2),
    (2, 3, 4, (1, 3, 1, 5), 2),  # out 4: one key channel, two value channels
    (3, 8, 16, (2, 8, 5, 4, 3), 2),
    (3, 6, 8, (1, 6, 1, 1, 1), 2),
    (3, 16, 64, (1, 16, 6, 7, 2), 2),
    (3, 8, 16, (2, 8, 5, 4, 3), (2, 2, 1)),
    (3, 8, 16, (1, 8, 7, 6, 1), (2, 2, 1)),  # one slice, not pooled
    (3, 6, 8, (1, 6, 1, 1, 2), (2, 2, 1)),
    (3, 8, 16, (1, 8, 3, 4, 2), (1, 1, 1)),  # every position a key
    (2, 4, 16, (2, 4, 9, 3), (2, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spatial_dims, in_channels, out_channels, shape, pool_size", REFERENCE_CASES)
def test_nonlocal_matches_naive_reference(spatial_dims, in_channels, out_channels, shape, pool_size, dtype):
    torch.manual_seed(0)
    block = NonLocalBlock(spatial_dims, in_channels, out_channels, pool_size=pool_size).to(dtype).eval()
    for parameter in block.parameters():  # larger weights than the default init: a peaked softmax
        torch.nn.init.normal_(parameter, std=0.5)
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        expected = naive_nonlocal(block, x, pool_size)
        result = block(x)
    assert result.shape == (shape[0], out_channels, *shape[2:])
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


def test_nonlocal_channels_have_a_floor_of_one():
    block = NonLocalBlock(2, 3, 2)
    assert (block.theta.out_channels, block.phi.out_channels, block.g.out_channels) == (1, 1, 1)
    assert block(torch.randn(1, 3, 5, 5)).shape == (1, 2, 5, 5)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 8, 12, 10)), (3, (1, 8, 6, 5, 4))])
def test_nonlocal_takes_the_flash_kernel_on_cpu(spatial_dims, shape):
    """The memory-efficient CPU kernel needs contiguous q/k/v of one head size; otherwise SDPA silently
    falls back to the math path, which materialises the full attention matrix."""
    block = NonLocalBlock(spatial_dims, 8, 32).eval()
    with profile() as prof, torch.no_grad():
        block(torch.randn(shape))
    names = {event.name for event in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert not any("math" in name for name in names)


def test_nonlocal_backward_through_flash_kernel_matches_reference():
    torch.manual_seed(0)
    block = NonLocalBlock(2, 4, 16).double().train()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    block(x).square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad()
    x.grad = None
    naive_nonlocal(block, x).square().sum().backward()
    for result, expected in zip(grads, [p.grad for p in block.parameters()] + [x.grad], strict=True):
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-8)


def test_zero_init_starts_as_the_projection():
    block = NonLocalBlock(3, 4, 8, zero_init=True).eval()
    assert not block.W.weight.any() and not block.W.bias.any()
    x = torch.randn(1, 4, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.project(x))
    assert NonLocalBlock(3, 4, 8).W.weight.any()


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 6, 9, 8)), (3, (1, 6, 5, 4, 3))])
def test_attention_gate_scales_the_skip_by_a_map_in_0_1(spatial_dims, shape):
    gate = AttentionGate(spatial_dims, skip_channels=6, gating_channels=4, inter_channels=3).eval()
    skip = torch.randn(shape)
    gating = torch.randn(shape[0], 4, *shape[2:])
    with torch.no_grad():
        out = gate(skip, gating)
        weights = gate.psi(gate.act(gate.W_x(skip) + gate.W_g(gating)))
    assert out.shape == skip.shape
    assert weights.shape == (shape[0], 1, *shape[2:])
    assert ((weights > 0) & (weights < 1)).all()
    torch.testing.assert_close(out, skip * weights)


@pytest.mark.parametrize("attention", ["nonlocal", "gate", "none"])
@pytest.mark.parametrize("norm", ["batch", "instance", ("group", {"num_groups": 2})])
def test_decoder_stage_pops_its_skip(attention, norm):
    stage = DecoderStage(3, 8, 4, attention=attention, norm=norm)
    skips = [torch.randn(1, 2, 6, 6, 6), torch.randn(1, 4, 6, 4, 2)]
    out = stage(torch.randn(1, 8, 3, 2, 1), skips)
    assert out.shape == (1, 4, 6, 4, 2)
    assert len(skips) == 1 and skips[0].shape[1] == 2
    assert isinstance(stage.attention, NonLocalBlock) == (attention == "nonlocal")
    assert isinstance(stage.gate, AttentionGate) == (attention == "gate")


def randomize_batch_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from their defaults, so folding them matters."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
            shape = layer.running_mean.shape
            layer.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
            layer.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            if layer.affine:
                layer.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
                layer.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spatial_dims, in_channels, out_channels, shape, pool_size", REFERENCE_CASES)
def test_nonlocal_inference_path_matches_naive_reference(
    spatial_dims, in_channels, out_channels, shape, pool_size, dtype
):
    """The inference path (folded norm, token products, channels-last) against the formula in float64."""
    torch.manual_seed(0)
    block = NonLocalBlock(spatial_dims, in_channels, out_channels, pool_size=pool_size).double().eval()
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    randomize_batch_norms(block)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        expected = naive_nonlocal(block, x, pool_size)
        block = block.to(dtype)
        for layout in (torch.contiguous_format, channels_last(spatial_dims)):
            result = block.forward_inference(x.to(dtype).contiguous(memory_format=layout))
            assert result.shape == expected.shape
            # float32 rounds at about 1e-7 of the largest value (up to 31 here, with a peaked softmax)
            atol = 1e-10 if dtype == torch.float64 else 1e-5 * expected.abs().max().item()
            torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=atol)


def test_nonlocal_inference_path_takes_the_flash_kernel():
    block = NonLocalBlock(3, 8, 32).eval()
    x = torch.randn(1, 8, 6, 5, 4).contiguous(memory_format=torch.channels_last_3d)
    with profile() as prof, torch.no_grad():
        block.forward_inference(x)
    names = {event.name for event in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert not any("math" in name for name in names)


CONVOLUTIONS = [
    {},  # conv -> batch norm -> dropout -> ReLU, folded into the weight
    {"kernel_size": 1},  # a 1x1 convolution: one product on the channels-last tokens
    {"act": ("leakyrelu", {"negative_slope": 0.1}), "dropout": 0.3},
    {"norm": ("batch", {"affine": False}), "bias": False},
    {"norm": None, "act": "sigmoid"},  # no norm
    {"conv_only": True},
    {"adn_ordering": "AN"},  # norm after the activation: run as it is
    {"norm": "instance"},  # not foldable: run as it is
    {"norm": ("batch", {"track_running_stats": False})},  # batch statistics even in eval: run as it is
]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("options", CONVOLUTIONS)
def test_convolution_inference_matches_the_block(spatial_dims, options):
    torch.manual_seed(0)
    options = {"act": "relu", "norm": "batch", **options}
    for channels, size in ((8, 6), (64, 2)):  # folded into the weight; applied to the 2^d output in place
        block = Convolution(spatial_dims, channels, channels, **options).eval()
        randomize_batch_norms(block)
        x = torch.randn(2, channels, *[size] * spatial_dims)
        with torch.no_grad():
            expected = block(x)
            for layout in (torch.contiguous_format, channels_last(spatial_dims)):
                result = forward_inference(block, x.contiguous(memory_format=layout))
                torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


# (DecoderStage options, coarse size, skip size): 2x, or per axis with 1-voxel kernels through-plane
STAGE_GEOMETRY = [
    ({}, (3, 4, 2), (6, 8, 4)),
    ({"scale_factor": (2, 2, 1), "kernel_size": (3, 3, 1)}, (3, 4, 2), (6, 8, 2)),
    ({"scale_factor": (2, 2, 1)}, (3, 4, 1), (6, 8, 1)),
    ({"scale_factor": (1, 2, 2), "kernel_size": (1, 3, 3)}, (3, 2, 3), (3, 4, 6)),
]


@pytest.mark.parametrize("attention", ["nonlocal", "gate", "none"])
@pytest.mark.parametrize("upsample", ["nontrainable", "deconv"])
@pytest.mark.parametrize("options, coarse, fine", STAGE_GEOMETRY)
def test_decoder_stage_inference_path_matches_forward(attention, upsample, options, coarse, fine):
    torch.manual_seed(0)
    stage = DecoderStage(3, 16, 8, attention=attention, upsample=upsample, **options).eval()
    randomize_batch_norms(stage)
    x = torch.randn(2, 16, *coarse)
    skip = torch.randn(2, 8, *fine)
    with torch.no_grad():
        expected = stage(x, [skip])
        result = stage.forward_inference(x.contiguous(memory_format=torch.channels_last_3d), [skip])
    assert expected.shape == (2, 8, *fine)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    if attention == "nonlocal":  # the keys are pooled as the stage upsamples
        assert stage.attention.pool.kernel_size == options.get("scale_factor", 2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_two_conv_and_down_with_default_sizes_are_monais(spatial_dims):
    """Same children, parameter names, shapes and initial values as MONAI's ``basic_unet`` blocks, so
    checkpoints of networks built from MONAI's blocks load, and the same outputs."""
    ours, monais = [], []
    for build, blocks in (
        (lambda: (TwoConv(spatial_dims, 2, 4), Down(spatial_dims, 4, 8)), ours),
        (
            lambda: (
                basic_unet.TwoConv(spatial_dims, 2, 4, "relu", "batch", True),
                basic_unet.Down(spatial_dims, 4, 8, "relu", "batch", True),
            ),
            monais,
        ),
    ):
        torch.manual_seed(0)
        blocks.extend(build())
    for block, reference, channels in zip(ours, monais, (2, 4), strict=True):
        state, expected = block.state_dict(), reference.state_dict()
        assert list(state) == list(expected)
        assert all(torch.equal(state[key], expected[key]) for key in state)
        x = torch.randn(2, channels, *[6] * spatial_dims)
        with torch.no_grad():
            torch.testing.assert_close(block.eval()(x), reference.eval()(x))


@pytest.mark.parametrize(
    "pool_size, kernel_size, shape, expected",
    [
        ((2, 2, 1), (3, 3, 1), (1, 4, 8, 6, 3), (1, 8, 4, 3, 3)),
        ((2, 2, 1), (3, 3, 3), (1, 4, 7, 6, 1), (1, 8, 3, 3, 1)),  # floor, as MONAI's Down
        ((1, 2, 2), (1, 3, 3), (2, 4, 5, 4, 4), (2, 8, 5, 2, 2)),
        ((2, 1), (3, 1), (1, 4, 6, 5), (1, 8, 3, 5)),
    ],
)
def test_down_pools_and_convolves_per_axis(pool_size, kernel_size, shape, expected):
    down = Down(len(shape) - 2, 4, 8, pool_size=pool_size, kernel_size=kernel_size)
    assert down.max_pooling.kernel_size == pool_size and down.max_pooling.stride == pool_size
    assert down.convs.conv_0.conv.kernel_size == kernel_size
    assert down.convs.conv_1.conv.padding == tuple(k // 2 for k in kernel_size)
    assert down(torch.randn(shape)).shape == expected
