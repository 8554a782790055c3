"""AttentionUNet: shapes over 2D/3D, odd sizes, attention modes and options; argument and input checks;
the CPU inference path against the modules, where it is taken, TorchScript, the checkpoint layout; the
CPU speed benchmark's quick run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnunet import AttentionUNet, create_network
from attnunet.blocks import AttentionGate, NonLocalBlock

SMALL = {"init_features": 4, "depth": 2}
# thick slices along the last axis: pooled in-plane only, then once through-plane (nnU-Net's plans for
# cardiac MR look like this); 1-voxel kernels through-plane at full and half resolution
THICK = {
    "init_features": 4,
    "depth": 3,
    "pool_sizes": [[2, 2, 1], [2, 2, 1], [2, 2, 2]],
    "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]],
}
IN_PLANE = {"init_features": 4, "depth": 2, "pool_sizes": [[2, 2, 1], [2, 2, 1]]}  # never through-plane
THICK_2D = {"init_features": 4, "depth": 2, "pool_sizes": [[2, 1], [2, 2]], "kernel_sizes": [[3, 1]] * 3}

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
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 3, **THICK}, (1, 1, 21, 17, 3), (1, 3, 21, 17, 3)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **THICK}, (2, 1, 9, 12, 2), (2, 2, 9, 12, 2)),
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **THICK}, (1, 1, 5, 6, 1), (1, 2, 5, 6, 1)),
    (
        {"spatial_dims": 3, "in_channels": 2, "out_channels": 2, **IN_PLANE},
        (1, 2, 13, 10, 3),
        (1, 2, 13, 10, 3),
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **THICK_2D}, (1, 1, 19, 5), (1, 2, 19, 5)),
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
    + [(*case, options) for case in (TEST_CASES[1], TEST_CASES[3], TEST_CASES[7]) for options in OPTIONS],
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


@pytest.mark.parametrize(
    "kwargs, size, multiple, padded",
    [
        (THICK, (21, 17, 3), [8, 8, 2], [24, 24, 4]),  # at least twice the multiple: 3 -> 4, not 2
        (THICK, (40, 33, 5), [8, 8, 2], [40, 40, 6]),
        (IN_PLANE, (13, 10, 3), [4, 4, 1], [16, 12, 3]),  # the slice axis is never pooled: never padded
        (IN_PLANE, (13, 10, 1), [4, 4, 1], [16, 12, 1]),  # one slice stays one slice (a 2D configuration)
        (THICK_2D, (19, 5), [4, 2], [20, 6]),
    ],
)
def test_padding_follows_the_pooling_of_each_axis(kwargs, size, multiple, padded):
    spatial_dims = len(size)
    net = AttentionUNet(spatial_dims, 1, 2, **kwargs).eval()
    assert net.multiple == multiple and net.padded_size(list(size)) == padded
    x = torch.randn(1, 1, *size)
    pad = []
    for s, p in zip(reversed(size), reversed(padded), strict=True):
        pad += [0, p - s]
    with torch.no_grad():
        full = net(torch.nn.functional.pad(x, pad))
        torch.testing.assert_close(net(x), full[(..., *[slice(0, s) for s in size])])


def test_thick_slices_are_pooled_in_plane_only():
    """The encoder, the bottom block and the non-local blocks' keys keep every slice where the pooling
    says so; the kernels are 1 through-plane where the kernel sizes say so."""
    net = AttentionUNet(3, 1, 2, **IN_PLANE).eval()
    sizes = {}

    def record(name):
        return lambda module, inputs, output: sizes.setdefault(name, []).append(tuple(output.shape[2:]))

    for i, down in enumerate(net.encoder):
        down.register_forward_hook(record(f"encoder.{i}"))
    net.bottom.register_forward_hook(record("bottom"))
    for stage in net.decoder:
        stage.attention.pool.register_forward_hook(record("keys"))
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 12, 5)).shape == (1, 2, 16, 12, 5)
    assert sizes["encoder.0"] == [(8, 6, 5)] and sizes["encoder.1"] == [(4, 3, 5)]
    assert sizes["bottom"] == [(4, 3, 5)]
    # keys and values pooled by the level's own pooling: (2, 2, 1) at levels 2 and 1 (ceil mode: 3 -> 2)
    assert sizes["keys"] == [(2, 2, 5)] * 2 + [(4, 3, 5)] * 2

    thick = AttentionUNet(3, 1, 2, **THICK)
    assert [down.max_pooling.kernel_size for down in thick.encoder] == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]
    assert [stage.attention.pool.kernel_size for stage in thick.decoder] == [(2, 2, 2), (2, 2, 1), (2, 2, 1)]
    assert thick.stem.conv_0.conv.kernel_size == (3, 3, 1) and thick.stem.conv_0.conv.padding == (1, 1, 0)
    assert thick.encoder[0].convs.conv_1.conv.kernel_size == (3, 3, 1)
    assert thick.encoder[1].convs.conv_0.conv.kernel_size == (3, 3, 3)
    assert thick.bottom.conv_0.conv.kernel_size == (3, 3, 3)
    # the decoder stage that ends at level k uses level k's kernel: levels 2, 1, 0
    assert [stage.conv.conv.kernel_size for stage in thick.decoder] == [(3, 3, 3), (3, 3, 1), (3, 3, 1)]


@pytest.mark.parametrize("upsample", ["nontrainable", "deconv"])
def test_thick_slice_network_trains_with_batch_size_one_on_one_slice(upsample):
    torch.manual_seed(0)
    net = AttentionUNet(3, 1, 2, **THICK, upsample=upsample).train()
    out = net(torch.randn(1, 1, 9, 7, 1))
    assert out.shape == (1, 2, 9, 7, 1)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())
    if upsample == "deconv":  # a transposed convolution of kernel and stride (2, 2, 1) where not pooled
        assert net.decoder[2].upsample.deconv.weight.shape[2:] == (2, 2, 1)


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
    (
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "depth": 2, "pool_sizes": [[2, 2, 1]]},
        "pool_sizes must be depth=2 lists of spatial_dims=3 ints, each 1 or 2",
    ),
    (
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "depth": 2,
            "pool_sizes": [[2, 2, 1], [2, 2]],
        },
        "pool_sizes[1] is [2, 2]",
    ),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": [[3, 2]]},
        "pool_sizes[0] = [3, 2] has 3",
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": [[0, 2]]}, "has 0"),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": [[2.0, 2]]},
        "has 2.0",
    ),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": [[True, 2]]},
        "has True",
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "pool_sizes": "2"}, "got '2'"),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 2, "kernel_sizes": [[3, 3]] * 2},
        "kernel_sizes must be depth + 1 = 3 lists of spatial_dims=2 ints, each odd and positive",
    ),
    (
        {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "kernel_sizes": [[3, 3], [3]]},
        "kernel_sizes[1] is [3]",
    ),
    (
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "depth": 1,
            "kernel_sizes": [[3, 2], [3, 3]],
        },
        "kernel_sizes[0] = [3, 2] has 2",
    ),
    (
        {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "depth": 1,
            "kernel_sizes": [[3, 3], [-1, 3]],
        },
        "has -1",
    ),
    ({"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 1, "kernel_sizes": 3}, "got 3"),
]


@pytest.mark.parametrize("kwargs, message", ILL_CASES)
def test_ill_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
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


def randomize_batch_norms(net: torch.nn.Module) -> None:
    """Running statistics and affine parameters away from their defaults, so folding them matters."""
    generator = torch.Generator().manual_seed(0)
    for layer in net.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            shape = layer.running_mean.shape
            layer.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
            layer.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            layer.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)


INFERENCE_OPTIONS = [
    {},
    {"attention": "gate"},
    {"attention": "none", "dropout": 0.2},
    {"attention_levels": [2], "upsample": "deconv", "act": ("leakyrelu", {"negative_slope": 0.1})},
]


@pytest.mark.parametrize("options", INFERENCE_OPTIONS)
@pytest.mark.parametrize(
    "spatial_dims, shape", [(2, (2, 2, 37, 50)), (3, (1, 1, 20, 17, 9)), (3, (2, 1, 16, 16, 16))]
)
def test_inference_path_matches_the_modules(spatial_dims, shape, options):
    """Eval mode without autograd on the CPU (folded norm, channels-last) gives the modules' output."""
    torch.manual_seed(0)
    net = AttentionUNet(spatial_dims, shape[1], 3, init_features=8, depth=3, **options).eval()
    randomize_batch_norms(net)
    x = torch.randn(shape)
    expected = net(x)  # autograd on: the modules as they are
    with torch.inference_mode():
        result = net(x)
    assert result.is_contiguous() and result.shape == expected.shape
    torch.testing.assert_close(result, expected.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(net(x), result, rtol=0, atol=0)


@pytest.mark.parametrize("options", INFERENCE_OPTIONS)
@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (THICK, (1, 1, 21, 17, 3)),
        (THICK, (2, 2, 9, 12, 2)),
        (IN_PLANE, (1, 1, 13, 10, 1)),
        (THICK_2D, (2, 1, 19, 5)),
    ],
)
def test_inference_path_matches_the_modules_with_thick_slices(kwargs, shape, options):
    """Per-axis pooling, upsampling, key pooling and kernels: the inference path still gives the modules'
    output."""
    torch.manual_seed(0)
    kwargs = {**kwargs, "attention_levels": [2]} if "attention_levels" in options else kwargs
    options = {k: v for k, v in options.items() if k != "attention_levels"}
    net = AttentionUNet(len(shape) - 2, shape[1], 3, **kwargs, **options).eval()
    randomize_batch_norms(net)
    x = torch.randn(shape)
    expected = net(x)
    with torch.inference_mode():
        result = net(x)
    assert result.is_contiguous() and result.shape == expected.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(result, expected.detach(), rtol=1e-5, atol=1e-5)


def test_inference_path_is_taken_only_where_nothing_can_tell(monkeypatch):
    taken = []
    original = AttentionUNet._forward_inference
    monkeypatch.setattr(
        AttentionUNet, "_forward_inference", lambda self, x: taken.append(1) or original(self, x)
    )
    net = AttentionUNet(3, 1, 2, **SMALL).eval()
    x = torch.randn(1, 1, 8, 8, 8)

    def takes(net: torch.nn.Module, run=None) -> bool:
        taken.clear()
        with torch.no_grad():
            (run or net)(x)
        return bool(taken)

    assert takes(net)
    with torch.enable_grad():  # saliency maps and the like: autograd must see the modules
        taken.clear()
        net(x)
        assert not taken
    assert not takes(net.train())
    net.eval()
    handle = net.decoder[0].attention.register_forward_hook(lambda *args: None)  # torchinfo, probes
    assert not takes(net)
    handle.remove()
    assert takes(net)
    assert not takes(net, run=lambda x: torch.jit.trace(net, x, check_trace=False))  # the check runs eagerly
    assert not takes(AttentionUNet(3, 1, 2, **SMALL, norm="instance").eval())  # not foldable


def test_scripted_network_matches_eager():
    """TorchScript compiles the modules (the inference path is eager-only) and gives the same output."""
    torch.manual_seed(0)
    net = AttentionUNet(3, 1, 2, **SMALL).eval()
    randomize_batch_norms(net)
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 9, 12, 7)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)

    thick = AttentionUNet(3, 1, 2, **THICK).eval()
    randomize_batch_norms(thick)
    scripted = torch.jit.script(thick)
    for shape in ((1, 1, 9, 12, 3), (1, 1, 17, 8, 1)):  # the per-axis padding is scripted too
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), thick(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial_dims, size", [(2, (20, 13)), (3, (20, 17, 9))])
def test_deep_supervision_gives_every_scale_in_training_and_one_output_in_eval(spatial_dims, size):
    """Training: full resolution, then 1/2 and 1/4 of the input (rounded up), each from its own head,
    so MONAI's DeepSupervisionLoss trains every head; eval and no-grad: the full-resolution logits
    alone, the same as the network's own head gives."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    torch.manual_seed(0)
    net = AttentionUNet(spatial_dims, 1, 3, init_features=4, depth=3, deep_supervision=True)
    assert len(net.supervision_heads) == 2
    x = torch.randn(2, 1, *size)
    outputs = net(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [
        size,
        tuple(-(-s // 2) for s in size),
        tuple(-(-s // 4) for s in size),
    ]
    label = torch.randint(0, 3, (2, 1, *size)).float()
    DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(outputs, label).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.supervision_heads.parameters())
    with torch.no_grad():
        assert isinstance(net(x), torch.Tensor)  # no grad: one output
    net.eval()
    assert net(x).shape == (2, 3, *size)
    plain = AttentionUNet(spatial_dims, 1, 3, init_features=4, depth=3)
    assert set(net.state_dict()) - set(plain.state_dict()) == {
        f"supervision_heads.{j}.conv.{name}" for j in (0, 1) for name in ("weight", "bias")
    }  # a network without deep supervision keeps its parameters


@pytest.mark.parametrize(
    "kwargs, size, expected",
    [
        (THICK, (20, 13, 3), [(20, 13, 3), (10, 7, 3), (5, 4, 3)]),  # scales (2, 2, 1) and (4, 4, 1)
        (THICK_2D, (19, 5), [(19, 5), (10, 5)]),
    ],
)
def test_deep_supervision_scales_follow_the_pooling_of_each_axis(kwargs, size, expected):
    torch.manual_seed(0)
    net = AttentionUNet(len(size), 1, 3, **kwargs, deep_supervision=True).train()
    outputs = net(torch.randn(2, 1, *size))
    assert [tuple(o.shape[2:]) for o in outputs] == expected
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())


def test_checkpoint_layout_is_unchanged():
    """Parameter names and shapes are those of saved checkpoints (MONAI's TwoConv/Down/Convolution)."""
    state = AttentionUNet(3, 1, 2, **SMALL).state_dict()
    assert len(state) == 102
    expected = {
        "stem.conv_0.conv.weight": (4, 1, 3, 3, 3),
        "stem.conv_0.adn.N.running_var": (4,),
        "encoder.1.convs.conv_1.conv.weight": (16, 16, 3, 3, 3),
        "decoder.0.attention.project.conv.weight": (8, 16, 1, 1, 1),
        "decoder.0.attention.theta.weight": (1, 8, 1, 1, 1),
        "decoder.0.attention.g.weight": (4, 8, 1, 1, 1),
        "decoder.0.attention.W.weight": (8, 4, 1, 1, 1),
        "decoder.0.conv.conv.weight": (8, 16, 3, 3, 3),
        "head.conv.weight": (2, 4, 1, 1, 1),
    }
    assert {key: tuple(state[key].shape) for key in expected} == expected
    # 2 everywhere and 3 everywhere are the defaults: the same network
    explicit = AttentionUNet(3, 1, 2, **SMALL, pool_sizes=[[2] * 3] * 2, kernel_sizes=[[3] * 3] * 3)
    assert {k: v.shape for k, v in explicit.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert explicit.multiple == [4, 4, 4]

    thick = AttentionUNet(3, 1, 2, **{**SMALL, **IN_PLANE}, kernel_sizes=[[3, 3, 1], [3, 3, 1], [1, 3, 3]])
    thick_state = thick.state_dict()
    assert set(thick_state) == set(state)  # the same names, other kernel shapes where asked
    assert tuple(thick_state["stem.conv_0.conv.weight"].shape) == (4, 1, 3, 3, 1)
    assert tuple(thick_state["encoder.1.convs.conv_1.conv.weight"].shape) == (16, 16, 1, 3, 3)
    assert tuple(thick_state["decoder.0.conv.conv.weight"].shape) == (8, 16, 3, 3, 1)


@pytest.mark.long
@pytest.mark.benchmark
def test_cpu_speed_benchmark_quick_run_prints_every_table():
    """``benchmarks/cpu_speed.py --quick``: every part, every model, ratios to MONAI's AttentionUnet."""
    script = Path(__file__).parents[1] / "benchmarks" / "cpu_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for title in ("### train", "### sliding", "### forward"):
        assert title in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    models = ("attnunet nonlocal", "MONAI UNet", "MONAI AttentionUnet", "nnU-Net PlainConvUNet")
    assert [row.split(" | ")[0][2:] for row in rows if not row.startswith("| model")] == list(models) * 3
    assert not any("failed" in row for row in rows)
    assert all(" | 1.00 |" in row for row in rows if row.startswith("| MONAI AttentionUnet"))
