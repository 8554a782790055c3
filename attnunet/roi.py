"""Patch and window sizes no larger than an image needs.

A network computes an image at its padded size (each axis rounded up to the network's multiple); a patch
or sliding window beyond that adds only zeros, and costs as much as its volume: a 256^3 window over a
64 x 64 x 32 image is 128 times the voxels of one 64 x 64 x 32 window. :func:`fit_roi` clamps each axis of a
patch or window to the padded size of an image. Training clamps its patch to the largest training image,
inference each case's window to that case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["fit_roi", "padded_size"]

# Poolings assumed for a network that neither pads by itself nor names its depth: 2**5 = 32 is a multiple
# of the stride product of every registered network's default configuration.
DEFAULT_DEPTH = 5


def padded_size(
    network: nn.Module, size: Sequence[int], network_kwargs: Mapping[str, Any] | None = None
) -> tuple[int, ...]:
    """The spatial size ``network`` computes an input of ``size`` at.

    The network's own ``padded_size`` when it has one (:class:`attnunet.network.AttentionUNet`: a multiple
    of each axis' pooling, at least twice it); else each axis rounded up to a multiple of its pooling:
    the product of its ``pool_sizes`` in ``network_kwargs``, or ``2**depth`` (``depth``, or one less than
    the stages of ``features``, else :data:`DEFAULT_DEPTH`).

    Example:
        >>> padded_size(nn.Identity(), (61, 40, 3), {"depth": 3})
        (64, 40, 8)
        >>> padded_size(nn.Identity(), (61, 40, 3), {"pool_sizes": [[2, 2, 1]] * 3})
        (64, 40, 3)
    """
    own = getattr(network, "padded_size", None)
    if callable(own):
        return tuple(int(s) for s in own([int(s) for s in size]))
    kwargs = network_kwargs or {}
    if kwargs.get("pool_sizes"):
        multiples = [math.prod(level[axis] for level in kwargs["pool_sizes"]) for axis in range(len(size))]
    else:
        depth = kwargs.get("depth", len(kwargs["features"]) - 1 if "features" in kwargs else DEFAULT_DEPTH)
        multiples = [2 ** int(depth)] * len(size)
    return tuple(max(math.ceil(int(s) / m), 1) * m for s, m in zip(size, multiples, strict=True))


def fit_roi(
    roi_size: Sequence[int],
    size: Sequence[int],
    network: nn.Module,
    network_kwargs: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    """``roi_size`` with each axis clamped to the :func:`padded_size` of an image of ``size``.

    Example:
        >>> fit_roi((256, 256, 256), (64, 64, 30), nn.Identity(), {"depth": 3})
        (64, 64, 32)
    """
    bound = padded_size(network, size, network_kwargs)
    return tuple(min(int(r), b) for r, b in zip(roi_size, bound, strict=True))
