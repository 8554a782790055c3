"""nnU-Net's training augmentations of 3D patches, in MONAI's transforms (the 3D chains' last step)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from monai.transforms import (
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
)

from attnunet.defaults import ANISOTROPY_RATIO

__all__ = ["volume_augmentations"]


def _in_plane_axes(pixdim: Sequence[float] | None, roi_size: Sequence[int]) -> tuple[int, ...]:
    """The axes a patch may be rotated, scaled and blurred across: all three, or the in-plane two of a
    one-slice patch (the 2D configuration) or of thick slices (coarsest spacing over ``ANISOTROPY_RATIO`` x
    the finest), where nnU-Net augments in-plane only: resampling across 8-20 mm slices invents anatomy.
    """
    if 1 in roi_size:
        thin = list(roi_size).index(1)
    elif pixdim is not None and max(pixdim) > ANISOTROPY_RATIO * min(pixdim):
        thin = int(max(range(3), key=lambda axis: pixdim[axis]))
    else:
        return (0, 1, 2)
    return tuple(axis for axis in range(3) if axis != thin)


def _augmentations(keys: Sequence[str], in_plane: Sequence[int], flip_axes: Sequence[int]) -> list[Callable]:
    """nnU-Net's training augmentations, with MONAI's transforms and nnU-Net's probabilities and ranges.

    Rotation is kept within +-30 degrees on every configuration (nnU-Net turns 2D slices by up to 180):
    where the planner left an axis unmirrored, the classes differ by side (left and right kidney), and a
    half turn would swap them as a flip does. Scaling is per axis in MONAI (nnU-Net scales all axes alike).
    """
    spread = [1.0 if axis in in_plane else 0.0 for axis in range(3)]
    # MONAI's angles are about each axis: in-plane turns are about the one axis that is not in the plane
    about = [1.0] * 3 if len(in_plane) == 3 else [1.0 - on for on in spread]
    sigma = {f"sigma_{name}": (0.5 * on, 1.0 * on) for name, on in zip("xyz", spread, strict=True)}
    return [
        RandAffined(
            keys, prob=0.3, rotate_range=[math.pi / 6 * on for on in about],
            scale_range=[0.3 * on for on in spread], mode=("bilinear", "nearest")[: len(keys)],
            padding_mode="zeros",
        ),
        *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in flip_axes),
        RandGaussianNoised("image", prob=0.1, std=0.1),
        RandGaussianSmoothd("image", prob=0.2, **sigma),
        RandScaleIntensityd("image", factors=0.25, prob=0.15),  # brightness x 0.75-1.25
        RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=0.15),  # contrast
        RandAdjustContrastd("image", gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
    ]  # fmt: skip


def volume_augmentations(
    keys: Sequence[str], pixdim: Sequence[float] | None, roi_size: Sequence[int], flip_axes: Sequence[int]
) -> list[Callable]:
    """The augmentations of a training patch of ``roi_size`` at ``pixdim`` (in-plane only for thick slices
    and one-slice patches), mirroring along ``flip_axes``."""
    return _augmentations(keys, _in_plane_axes(pixdim, roi_size), flip_axes)
