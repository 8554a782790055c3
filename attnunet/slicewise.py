"""A 2D network applied slice by slice to 3D inputs: the fast form of a 3D network that neither pools nor
convolves along one axis.

A 3D :class:`~attnunet.network.AttentionUNet` whose pooling and kernel sizes are 1 along an axis at every
level (the plan's 2D configuration of a thick-slice set) computes each slice on its own when it is given
one-slice patches, as the 2D configuration trains and predicts. PyTorch's 3D convolutions with a
3 x 3 x 1 kernel run several times slower on a CPU than the same 2D convolutions (a 16-feature, depth-5
network on four 256 x 256 patches: 7-10 s against 1.5-2.4 s a step, forward and backward, one thread),
so :func:`attention_unet` builds the 2D network and :class:`SliceWise` folds that axis into the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnunet.network import AttentionUNet

__all__ = ["SliceWise", "attention_unet", "unpooled_axis"]


class SliceWise(nn.Module):
    """Apply a 2D ``network`` to every slice of a ``(B, C, X, Y, Z)`` input along spatial ``axis``.

    The slices are folded into the batch, so normalisation statistics and attention are per slice: the
    same as the 3D network with kernels and pooling of 1 along ``axis`` on one-slice inputs.

    Args:
        network: a 2D network, ``(B, C, H, W) -> (B, K, H, W)`` (or a list of such, deep supervision).
        axis: the spatial axis (0, 1 or 2) the slices are taken along.

    Example:
        >>> net = SliceWise(AttentionUNet(2, 3, 4, init_features=4, depth=2), axis=2)
        >>> net(torch.randn(1, 3, 20, 24, 5)).shape
        torch.Size([1, 4, 20, 24, 5])
    """

    def __init__(self, network: nn.Module, axis: int) -> None:
        super().__init__()
        if axis not in (0, 1, 2):
            raise ValueError(f"SliceWise: axis must be a spatial axis 0, 1 or 2, got {axis!r}")
        self.network = network
        self.axis = axis
        self.spatial_dims = 3
        self.in_channels = getattr(network, "in_channels", None)
        self.out_channels = getattr(network, "out_channels", None)

    def padded_size(self, spatial: list[int]) -> list[int]:
        """The 2D network's padded size in-plane; the slice axis is never padded."""
        inplane = [s for i, s in enumerate(spatial) if i != self.axis]
        padded = list(self.network.padded_size(inplane))
        padded.insert(self.axis, spatial[self.axis])
        return padded

    def _unfold(self, out: torch.Tensor, batch: int, slices: int) -> torch.Tensor:
        return out.unflatten(0, (batch, slices)).movedim(1, 2 + self.axis)

    def forward(self, x: torch.Tensor):  # a tensor, or a list of them (deep supervision in training)
        if x.dim() != 5:
            raise ValueError(
                f"SliceWise expects a 5D input (batch, channels, 3 spatial dims), got shape {list(x.shape)}"
            )
        moved = x.movedim(2 + self.axis, 1)  # (B, slices, C, H, W)
        batch, slices = moved.shape[0], moved.shape[1]
        out = self.network(moved.flatten(0, 1))
        if isinstance(out, torch.Tensor):
            return self._unfold(out, batch, slices)
        return [self._unfold(o, batch, slices) for o in out]


def unpooled_axis(
    spatial_dims: int,
    pool_sizes: Sequence[Sequence[int]] | None,
    kernel_sizes: Sequence[Sequence[int]] | None,
) -> int | None:
    """The spatial axis of a 3D network that every level neither pools nor convolves along, if any."""
    if spatial_dims != 3 or not pool_sizes or not kernel_sizes:
        return None
    if any(not isinstance(level, Sequence) or len(level) != 3 for level in (*pool_sizes, *kernel_sizes)):
        return None  # malformed: AttentionUNet says what is wrong
    return next(
        (
            axis
            for axis in range(3)
            if all(p[axis] == 1 for p in pool_sizes) and all(k[axis] == 1 for k in kernel_sizes)
        ),
        None,
    )


@functools.wraps(AttentionUNet)
def attention_unet(spatial_dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """:class:`~attnunet.network.AttentionUNet`, or, when its ``pool_sizes`` and ``kernel_sizes`` are 1
    along one axis at every level, the same network in 2D applied slice by slice (:class:`SliceWise`;
    its 2D network checks the other arguments and the in-plane sizes)."""
    pools, kernels = kwargs.get("pool_sizes"), kwargs.get("kernel_sizes")
    axis = unpooled_axis(spatial_dims, pools, kernels)
    if axis is None:
        return AttentionUNet(spatial_dims, *args, **kwargs)
    inplane = {
        "pool_sizes": [[p for i, p in enumerate(level) if i != axis] for level in pools],
        "kernel_sizes": [[k for i, k in enumerate(level) if i != axis] for level in kernels],
    }
    return SliceWise(AttentionUNet(2, *args, **{**kwargs, **inplane}), axis)
