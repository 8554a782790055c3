"""The rules that turn a dataset fingerprint into training settings.

nnU-Net's rules (Isensee et al. 2021):

- target spacing: the median spacing per axis (in RAS order, as the presets reorient); when the
  coarsest axis is more than 3x the finest (anisotropic data), that axis takes the 10th percentile of
  its spacings instead;
- pooling, per level and per axis (:func:`pool_and_kernel_sizes`): an axis is pooled while its spacing
  is within 2x of the finest and it keeps at least 4 voxels (at most 5 levels); its kernel is 3 once
  its spacing is within 2x of the finest, 1 before (thick slices are convolved in-plane only until the
  in-plane spacing has caught up);
- configuration: 3D, or, for a few thick slices (the coarsest axis more than 3x the finest and too
  few voxels along it to pool once; on a CPU, for any such thick slices), a 2D configuration of the 3D
  set (:func:`slice_axis`): patches of one slice, kernels of 1 along it, predicted slice by slice by
  the same sliding window;
- patch: the median shape after resampling, each axis rounded up to a multiple of its pooling; the
  largest axis is shrunk while one training sample would not fit the memory budget; on a CPU a 2D patch
  is at most ``CPU_2D_PATCH`` per axis, ``CPU_2D_CROPS`` of them drawn per image (see :func:`cap_2d_patch`);
- mirroring: every RAS axis except one along which two classes keep their order (:func:`mirror_axes`);
- batch: as many patches as the memory budget holds, at least 2, at most the number covering 5% of
  the dataset's voxels (nnU-Net's cap); on a CPU, one image's ``CPU_2D_CROPS`` crops for a capped 2D
  patch;
- normalisation: CT clips to the 0.5 / 99.5 percentiles of the foreground intensities (the CT preset's
  window, scaled to [0, 1]); MR is z-scored per case, 2D images scaled to [0, 1] per channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch

from attnunet.defaults import ANISOTROPY_RATIO
from attnunet.pipelines.data.datasets import DatasetIndex
from attnunet.pipelines.planning.fingerprint import declared_preset

__all__ = [
    "ANISOTROPY_RATIO",
    "CPU_2D_CROPS",
    "CPU_2D_PATCH",
    "DATASET_SHARE_PER_BATCH",
    "FLOATS_PER_VOXEL_AND_FEATURE",
    "MAX_DEPTH",
    "MIN_BOTTOM_VOXELS",
    "MIN_ORDERED_CASES",
    "bytes_per_voxel",
    "cap_2d_patch",
    "choose_patch",
    "choose_preset",
    "pool_and_kernel_sizes",
    "slice_axis",
    "reorients",
    "pooling_multiples",
    "mirror_axes",
    "network_kwargs",
    "normalisation",
    "patches_per_batch",
    "sliding_window_batch",
    "step_memory_bytes",
    "target_spacing",
]

MIN_BOTTOM_VOXELS = 4  # the coarsest feature map keeps at least this many voxels per axis
MAX_DEPTH = 5
DATASET_SHARE_PER_BATCH = 0.05  # nnU-Net: one batch covers at most 5% of the dataset's voxels
# Floats kept per voxel and per feature channel by one training step of AttentionUNet at full
# resolution (convolution, norm and activation outputs of the stem and the last decoder stage, their
# gradients, Adam's moments are per parameter and negligible); coarser levels add a geometric series.
# An estimate from the layer list, not a measurement: it errs on the large side.
FLOATS_PER_VOXEL_AND_FEATURE = 24
# Two classes in the same order along an axis in this many sampled cases or more (and in all of them) are
# not there by chance: a random order holds in 8 of 8 cases with probability 1/128.
MIN_ORDERED_CASES = 8
CPU_2D_PATCH = 256
CPU_2D_CROPS = 4
_AIR_HU = -500  # air is -1000 HU: a dataset whose images hold voxels below this is CT


def choose_preset(index: DatasetIndex, darkest: float, overrides: Mapping[str, Any]) -> tuple[str, str]:
    """The preset and where it came from: ``"override"``, ``"dataset"`` (declared) or ``"intensities"``.

    Declared channels follow nnU-Net's rule
    (:func:`~attnunet.pipelines.planning.fingerprint.declared_preset`).
    Undeclared, a dataset is CT when the darkest case's 0.5th intensity percentile over the whole image
    (``darkest``) is air in Hounsfield units: the foreground alone would call a liver CT MR."""
    declared = declared_preset(index)
    if "preset" in overrides:
        return overrides["preset"], "override"
    if declared:
        return declared, "dataset"
    return ("ct" if darkest < _AIR_HU else "mr"), "intensities"


def reorients(affines: Sequence[np.ndarray]) -> bool:
    """Whether training reorients to RAS: when every case's voxel axes are closest to the same RAS axes.

    Oblique scans whose slice axis is closest to the left-right axis in one case and to the
    anterior-posterior one in the next (short-axis cardiac MR) would, reoriented, have their thick slices
    along different axes from case to case; they keep their stored axes instead, as nnU-Net always does.
    """
    axes = {tuple(nib.orientations.io_orientation(a)[:, 0].astype(int)) for a in affines if len(a) == 4}
    return len(axes) <= 1


def target_spacing(spacings: np.ndarray) -> list[float]:
    """The spacing to resample to, from every case's spacing (one row per case)."""
    target = np.median(spacings, axis=0)
    coarsest = int(np.argmax(target))
    others = np.delete(target, coarsest)
    if others.size and target[coarsest] > ANISOTROPY_RATIO * others.min():
        target[coarsest] = np.percentile(spacings[:, coarsest], 10)
    return [round(float(s), 4) for s in target]


def slice_axis(median_shape: Sequence[float], spacing: Sequence[float], on_cpu: bool = False) -> int | None:
    """The axis a 2D configuration of a 3D set slices along, or None for a 3D configuration.

    nnU-Net trains a 2D configuration beside its 3D one and keeps the better; here the rule picks it
    where a 3D context is not worth its cost: the coarsest axis is more than ``ANISOTROPY_RATIO`` times
    the finest and has too few voxels (after resampling) to be pooled even once (fewer than
    ``2 * MIN_BOTTOM_VOXELS``), or, ``on_cpu``, any such anisotropic set. On a CPU a 3D patch of a
    thick-sliced set costs 10-20x a slice's step: CHAOS T2-SPIR (1.25 x 1.25 x 7.7 mm), 30 minutes, 4
    held-out cases, got 3 epochs of its 128 x 128 x 40 patches (liver 0.81, kidneys 0.76 / 0.00, spleen
    0.73) and 28 epochs as slices (see benchmarks/README.md). MyoPS cardiac MR (2-6 slices of 12-23 mm at
    0.73 mm in-plane) is sliced everywhere; CHAOS on a CPU only.

    Example:
        >>> slice_axis([482, 479, 6], [0.73, 0.73, 12.0]), slice_axis([256, 256, 40], [1.25, 1.25, 7.7])
        (2, None)
        >>> slice_axis([256, 256, 40], [1.25, 1.25, 7.7], True), slice_axis([36, 50, 35], [1.0] * 3, True)
        (2, None)
    """
    if len(spacing) != 3:
        return None
    coarsest = int(np.argmax(spacing))
    anisotropic = spacing[coarsest] > ANISOTROPY_RATIO * min(spacing)
    few = median_shape[coarsest] < 2 * MIN_BOTTOM_VOXELS
    return coarsest if anisotropic and (few or on_cpu) else None


def pool_and_kernel_sizes(
    shape: Sequence[float], spacing: Sequence[float], max_depth: int | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's ``pool_op_kernel_sizes`` and ``conv_kernel_sizes`` for a patch of ``shape`` voxels of
    ``spacing`` (mm; 2D images: 1 per axis).

    Each level pools by 2 the axes whose spacing is within 2x of the finest and that keep at least
    ``MIN_BOTTOM_VOXELS`` voxels, until none can or ``max_depth`` (at most ``MAX_DEPTH``) levels; a
    level's kernel is 3 along the axes within 2x of its finest spacing, 1 along the others. At least one
    level is planned (the largest axis is pooled when no rule allows any).

    Returns:
        ``(pool_sizes, kernel_sizes)``: ``depth`` and ``depth + 1`` lists (the stem's kernel first), each
        one int per axis, as :class:`attnunet.AttentionUNet` takes them.

    Example:
        >>> pool_and_kernel_sizes([256, 256, 8], [1.25, 1.25, 7.7], max_depth=3)
        ([[2, 2, 1], [2, 2, 1], [2, 2, 2]], [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]])
    """
    shape, spacing = [float(s) for s in shape], [float(s) for s in spacing]
    levels = min(MAX_DEPTH, max_depth or MAX_DEPTH)

    def kernel() -> list[int]:
        return [3 if s <= 2 * min(spacing) else 1 for s in spacing]

    pools: list[list[int]] = []
    kernels = [kernel()]
    while len(pools) < levels:
        pool = [
            2 if sp <= 2 * min(spacing) and sh >= 2 * MIN_BOTTOM_VOXELS else 1
            for sp, sh in zip(spacing, shape, strict=True)
        ]
        if pools and 2 not in pool:
            break
        if 2 not in pool:  # a patch too small for any rule still gets one level, on its largest axis
            pool[int(np.argmax(shape))] = 2
        pools.append(pool)
        shape = [sh / p for sh, p in zip(shape, pool, strict=True)]
        spacing = [sp * p for sp, p in zip(spacing, pool, strict=True)]
        kernels.append(kernel())
    return pools, kernels


def _round_up(shape: Sequence[float], multiples: Sequence[int]) -> list[int]:
    return [int(math.ceil(s / m) * m) for s, m in zip(shape, multiples, strict=True)]


def pooling_multiples(pool_sizes: Sequence[Sequence[int]]) -> list[int]:
    """Per axis, the product of its pooling factors: a patch size must be a multiple of it."""
    return [math.prod(level[axis] for level in pool_sizes) for axis in range(len(pool_sizes[0]))]


def bytes_per_voxel(init_features: int, pool_sizes: Sequence[Sequence[int]]) -> float:
    """Estimated training-step memory per patch voxel (float32, all levels): level ``l`` has ``2**l``
    times the features on ``1 / prod(pooling)`` of the voxels."""
    levels, voxels = 1.0, 1.0
    for level, pool in enumerate(pool_sizes, start=1):
        voxels /= math.prod(pool)
        levels += 2.0**level * voxels
    return 4.0 * FLOATS_PER_VOXEL_AND_FEATURE * init_features * levels


def step_memory_bytes(step_memory_gb: float | None, device: str) -> int:
    """The memory one training step may use: the given GiB, else 80% of the GPU's memory, else 4 GiB.
    (Not the dataset cache's RAM: that is ``datasets.cache_memory_bytes``.)"""
    if step_memory_gb is not None:
        if not step_memory_gb > 0:
            raise ValueError(f"step_memory_gb must be > 0, got {step_memory_gb}")
        return int(step_memory_gb * 2**30)
    if device.startswith("cuda"):
        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return 4 * 2**30  # on a CPU the step time, not the memory, limits the batch


def choose_patch(
    median_shape: Sequence[int],
    spacing: Sequence[float],
    depth: int | None,
    init_features: int,
    budget: float,
) -> list[int]:
    """The median shape rounded up to each axis' pooling (:func:`pool_and_kernel_sizes` of the patch),
    its largest axis shrunk until two samples fit ``budget``."""
    patch = [float(s) for s in median_shape]
    while True:
        pools, _ = pool_and_kernel_sizes(patch, spacing, depth)
        candidate = _round_up(patch, pooling_multiples(pools))
        if 2 * math.prod(candidate) * bytes_per_voxel(init_features, pools) <= budget:
            return candidate
        largest = int(np.argmax(patch))
        if patch[largest] <= 2 * MIN_BOTTOM_VOXELS * 2:
            return candidate
        patch[largest] *= 0.9


def cap_2d_patch(
    patch: Sequence[int], spatial_dims: int, device: str, slices: bool = False
) -> tuple[list[int], int | None]:
    """``(patch, crops per image)``: on a CPU a 2D patch of at most ``CPU_2D_PATCH`` per axis, with
    ``CPU_2D_CROPS`` crops per image when it is capped or when it is a 2D configuration's slice
    (``slices``) (None: the default count).

    On a CPU the time budget, not the memory, limits training, and whole-image patches give few optimizer
    steps per minute. DRIVE (565 x 584 fundus images), 20-minute budget, the same 5 held-out images: whole
    576 x 608 patches, 2 per step, vessel Dice 0.786; 256 x 256 crops, 4 per step (3.3x the steps) 0.802
    (benchmarks/README.md). The slices of a 3D set were measured so too (MyoPS, CHAOS: 4 slices of one
    volume per step). 3D patches are left to nnU-Net's rule: they are small already.
    """
    if spatial_dims != 2 or device.startswith("cuda") or (max(patch) <= CPU_2D_PATCH and not slices):
        return list(patch), None
    return [min(int(p), CPU_2D_PATCH) for p in patch], CPU_2D_CROPS


def patches_per_batch(
    roi_size: Sequence[int], per_sample: float, dataset_voxels: float, budget: float
) -> int:
    """Patches one training step holds: what the budget allows, capped at 5% of the dataset, >= 2."""
    cap = max(2, int(DATASET_SHARE_PER_BATCH * dataset_voxels / math.prod(roi_size)))
    return max(2, min(cap, int(budget // per_sample)))


def sliding_window_batch(per_sample: float, budget: float) -> int:
    """Windows per inference pass (1..8): inference keeps no activations for backward, so a window
    costs about a third of a training sample."""
    return max(1, min(8, int(3 * budget // per_sample)))


def network_kwargs(
    pool_sizes: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]],
    init_features: int,
    device: str,
) -> dict[str, Any]:
    """Depth and width, per-axis pooling and kernels where they are not 2 and 3 everywhere, deep
    supervision, and on a CPU no non-local attention at 1/2 resolution:
    there it costs more than the rest of the network (benchmarks/README.md); the coarser levels keep
    it. Deep supervision: on real MR (MSD Hippocampus) the second foreground class is learnt late,
    and supervising the coarse decoder stages directly learns both in about half the steps
    (benchmarks/README.md, "does every class get learnt?")."""
    depth = len(pool_sizes)
    kwargs: dict[str, Any] = {"depth": depth, "init_features": init_features, "deep_supervision": depth > 1}
    if any(p != 2 for level in pool_sizes for p in level) or any(
        k != 3 for level in kernel_sizes for k in level
    ):
        kwargs["pool_sizes"] = [list(level) for level in pool_sizes]
        kwargs["kernel_sizes"] = [list(level) for level in kernel_sizes]
    if not device.startswith("cuda") and depth > 1:
        kwargs["attention_levels"] = list(range(2, depth + 1))
    return kwargs


def mirror_axes(class_offsets: np.ndarray, spacing: Sequence[float]) -> list[int]:
    """RAS axes a 3D training mirrors at random: all but those along which two foreground classes lie in
    the same order, more than one voxel apart, in every sampled case that has both (at least
    ``MIN_ORDERED_CASES`` of them).

    Mirroring such an axis shows the network anatomy that does not occur, in which classes it must tell
    apart by position have swapped places. MSD Hippocampus: the posterior class lies 15-21 mm behind and
    3-10 mm above the anterior one in every sampled case (left-right 0-6 mm, within a voxel in some);
    mirroring left-right only raised held-out Dice from 0.873 / 0.854 to 0.890 / 0.866 in the same 20
    minutes (62 cases, better in 46 and 43 of them; benchmarks/README.md).

    Args:
        class_offsets: :attr:`~attnunet.pipelines.planning.fingerprint.VoxelStatistics.class_offsets`.
        spacing: the training voxel size along each RAS axis (mm), the smallest offset that counts.
    """
    ordered = set()
    for pair in range(class_offsets.shape[1]):
        for axis in range(3):
            offsets = class_offsets[:, pair, axis]
            offsets = offsets[~np.isnan(offsets)]
            apart = np.all(offsets > spacing[axis]) or np.all(offsets < -spacing[axis])
            if offsets.size >= MIN_ORDERED_CASES and apart:
                ordered.add(axis)
    return [axis for axis in range(3) if axis not in ordered]


def _ct_window(intensities: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """nnU-Net's CT window from one channel's foreground intensities: its 0.5 / 99.5 percentiles."""
    low, high = (round(float(v), 2) for v in np.percentile(intensities, [0.5, 99.5]))
    figures = {
        "percentile_00_5": low,
        "percentile_99_5": high,
        "mean": round(float(intensities.mean()), 2),
        "std": round(float(intensities.std()), 2),
    }
    return low, high, figures


def normalisation(
    preset: str, intensities: np.ndarray, names: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """How ``preset`` normalises each channel (for the plan), and the preset options that do it.

    Args:
        preset: ``"ct"``, ``"mr"`` or ``"image2d"``.
        intensities: ``(channels, samples)`` foreground intensities
            (:attr:`~attnunet.pipelines.planning.fingerprint.VoxelStatistics.intensities`).
        names: the declared channel names; with the MR preset a channel named CT is windowed
            (``channel_windows``), every other one z-scored, as nnU-Net does.
    """
    names = list(names) or [""] * len(intensities)
    if preset == "ct":
        low, high, figures = _ct_window(intensities.ravel())
        scheme = {
            "scheme": "CT window: clip to the foreground's 0.5 / 99.5 percentiles, scale to [0, 1]",
            **figures,
        }
        return scheme, {"a_min": low, "a_max": high}
    if preset == "image2d":
        return {"scheme": "each image scaled to [0, 1] per channel (min / max)"}, {}
    windows, channels = {}, []
    for channel, name in enumerate(names):
        label = f"{name or f'channel {channel}'}: "
        if name.upper() == "CT" and channel < len(intensities):
            low, high, _ = _ct_window(intensities[channel])
            windows[str(channel)] = [low, high]
            channels.append(label + f"CT window [{low}, {high}] scaled to [0, 1]")
        else:
            channels.append(label + "z-score per case over its nonzero voxels")
    scheme: dict[str, Any] = {"scheme": "z-score per case (and channel) over its nonzero voxels"}
    if windows:
        scheme["scheme"] = "per channel: CT channels windowed, the others z-scored per case"
    if len(channels) > 1 or windows:
        scheme["channels"] = channels
    return scheme, ({"channel_windows": windows} if windows else {})
