"""The 2D configuration's network: a 2D AttentionUNet applied slice by slice, the same numbers as the 3D
network whose kernels and pooling are 1 along the slice axis."""

from __future__ import annotations

import pytest
import torch

from attnunet.network import AttentionUNet
from attnunet.networks import create_network
from attnunet.slicewise import SliceWise, unpooled_axis

IN_PLANE = {"depth": 2, "init_features": 4, "pool_sizes": [[2, 2, 1]] * 2, "kernel_sizes": [[3, 3, 1]] * 3}


def _as_2d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 3D network's parameters (kernels of 1 along the last axis) as its 2D twin's."""
    return {
        f"network.{key}": value.squeeze(-1) if value.dim() == 5 else value for key, value in state.items()
    }


@pytest.mark.parametrize("attention", ["nonlocal", "gate", "none"])
@pytest.mark.parametrize("slices", [1, 3])
def test_slice_by_slice_equals_the_3d_network_on_each_slice(attention, slices):
    torch.manual_seed(0)
    kwargs = {**IN_PLANE, "attention": attention, "norm": "instance"}
    three_d = AttentionUNet(3, 2, 3, **kwargs).eval()
    sliced = create_network("attention_unet", spatial_dims=3, in_channels=2, out_channels=3, **kwargs).eval()
    assert isinstance(sliced, SliceWise) and sliced.axis == 2
    sliced.load_state_dict(_as_2d(three_d.state_dict()))
    x = torch.randn(2, 2, 19, 22, slices)
    with torch.no_grad():
        expected = torch.cat([three_d(x[..., z : z + 1]) for z in range(slices)], dim=-1)
        torch.testing.assert_close(sliced(x), expected, rtol=1e-4, atol=1e-5)


def test_deep_supervision_keeps_the_slice_axis_and_scripting_works():
    net = create_network(
        "attention_unet", spatial_dims=3, in_channels=1, out_channels=2, deep_supervision=True, **IN_PLANE
    )
    shapes = [tuple(o.shape) for o in net.train()(torch.randn(2, 1, 16, 20, 1))]
    assert shapes == [(2, 2, 16, 20, 1), (2, 2, 8, 10, 1)]
    scripted = torch.jit.script(net.eval())
    x = torch.randn(1, 1, 16, 20, 2)
    torch.testing.assert_close(scripted(x), net(x))
    assert net.padded_size([13, 10, 3]) == [16, 12, 3]  # in-plane to the pooling, the slices untouched


def test_only_an_axis_with_kernels_and_pooling_of_1_everywhere_is_sliced():
    assert unpooled_axis(3, [[2, 1, 2]] * 2, [[3, 1, 3]] * 3) == 1
    assert unpooled_axis(3, [[2, 2, 1]] * 2, [[3, 3, 1], [3, 3, 1], [3, 3, 3]]) is None  # deeper levels 3D
    assert unpooled_axis(2, [[2, 1]] * 2, [[3, 1]] * 3) is None
    net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=2, depth=2)
    assert isinstance(net, AttentionUNet)


def test_bad_input_is_named():
    net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=2, **IN_PLANE)
    with pytest.raises(ValueError, match="SliceWise expects a 5D input"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="expects 1 input channels"):
        net(torch.randn(1, 3, 16, 16, 1))
    with pytest.raises(ValueError, match="axis must be a spatial axis"):
        SliceWise(AttentionUNet(2, 1, 2, depth=1), axis=3)
