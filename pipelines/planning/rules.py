"""The rules that turn a dataset fingerprint into training settings.

nnU-Net's rules (Isensee et al. 2021), adapted to a network that pools every axis together:

- target spacing: the median spacing per axis; when the coarsest axis is more than 3x the finest
  (anisotropic data), that axis takes the 10th percentile of its spacings instead;
- patch: the median shape after resampling, each axis rounded up to a multiple of ``2**depth``, where
  ``depth`` pools while the smallest axis keeps at least 4 voxels (at most 5 levels); the largest
  axis is shrunk while one training sample would not fit the memory budget; on a CPU a 2D patch is at
  most ``CPU_2D_PATCH`` per axis, ``CPU_2D_CROPS`` of them drawn per image (see :func:`cap_2d_patch`);
- mirroring: every RAS axis except one along which two classes keep their order (:func:`mirror_axes`);
- batch: as many patches as the memory budget holds, at least 2, at most the number covering 5% of
  the dataset's voxels (nnU-Net's cap);
- normalisation: CT clips to the 0.5 / 99.5 percentiles of the foreground intensities (the CT preset's
  window, scaled to [0, 1]); MR is z-scored per case, 2D images scaled to [0, 1] per channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from attnunet.pipelines.data.datasets import DatasetIndex
from attnunet.pipelines.data.validation import DataValidationError
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
    "depth_for",
    "memory_budget_bytes",
    "mirror_axes",
    "network_kwargs",
    "normalisation",
    "patches_per_batch",
    "sliding_window_batch",
    "target_spacing",
]

ANISOTROPY_RATIO = 3.0  # nnU-Net's threshold for treating the coarsest axis separately
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

    Undeclared, a dataset is CT when the darkest case's 0.5th intensity percentile over the whole image
    (``darkest``) is air in Hounsfield units: the foreground alone would call a liver CT MR."""
    declared = declared_preset(index)
    if declared not in (None, "ct", "mr", "image2d") and "preset" not in overrides:
        raise DataValidationError(
            f"{index.root}: modality {index.modality!r} is neither CT nor MR; pass --set preset=ct or "
            "--set preset=mr to say how its intensities should be normalised"
        )
    if "preset" in overrides:
        return overrides["preset"], "override"
    if declared:
        return declared, "dataset"
    return ("ct" if darkest < _AIR_HU else "mr"), "intensities"


def target_spacing(spacings: np.ndarray) -> list[float]:
    """The spacing to resample to, from every case's spacing (one row per case)."""
    target = np.median(spacings, axis=0)
    coarsest = int(np.argmax(target))
    others = np.delete(target, coarsest)
    if others.size and target[coarsest] > ANISOTROPY_RATIO * others.min():
        target[coarsest] = np.percentile(spacings[:, coarsest], 10)
    return [round(float(s), 4) for s in target]


def depth_for(shape: Sequence[float]) -> int:
    """Poolings that keep at least ``MIN_BOTTOM_VOXELS`` on the smallest axis (1..``MAX_DEPTH``)."""
    return int(max(1, min(MAX_DEPTH, math.floor(math.log2(min(shape) / MIN_BOTTOM_VOXELS)))))


def _round_up(shape: Sequence[float], multiple: int) -> list[int]:
    return [int(math.ceil(s / multiple) * multiple) for s in shape]


def bytes_per_voxel(init_features: int, spatial_dims: int, depth: int) -> float:
    """Estimated training-step memory per patch voxel (float32, all levels)."""
    levels = sum(2.0**level / 2.0 ** (spatial_dims * level) for level in range(depth + 1))
    return 4.0 * FLOATS_PER_VOXEL_AND_FEATURE * init_features * levels


def memory_budget_bytes(memory_budget_gb: float | None, device: str) -> int:
    """The given budget, else 80% of the GPU's memory, else 4 GiB."""
    if memory_budget_gb is not None:
        if not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
        return int(memory_budget_gb * 2**30)
    if device.startswith("cuda"):
        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return 4 * 2**30  # on a CPU the step time, not the memory, limits the batch


def choose_patch(
    median_shape: Sequence[int], depth: int | None, init_features: int, spatial_dims: int, budget: float
) -> list[int]:
    """The median shape rounded up to ``2**depth``, its largest axis shrunk until two samples fit."""
    patch = [float(s) for s in median_shape]
    while True:
        levels = depth or depth_for(patch)
        candidate = _round_up(patch, 2**levels)
        if 2 * math.prod(candidate) * bytes_per_voxel(init_features, spatial_dims, levels) <= budget:
            return candidate
        largest = int(np.argmax(patch))
        if patch[largest] <= 2 ** (levels + 1):
            return candidate
        patch[largest] *= 0.9


def cap_2d_patch(patch: Sequence[int], spatial_dims: int, device: str) -> tuple[list[int], int | None]:
    """``(patch, crops per image)``: on a CPU a 2D patch of at most ``CPU_2D_PATCH`` per axis, with
    ``CPU_2D_CROPS`` crops per image when it is capped (None: the default count).

    On a CPU the time budget, not the memory, limits training, and whole-image patches give few optimizer
    steps per minute. DRIVE (565 x 584 fundus images), 20-minute budget, the same 5 held-out images: whole
    576 x 608 patches, 2 per step, vessel Dice 0.786; 256 x 256 crops, 4 per step (3.3x the steps) 0.802
    (benchmarks/README.md). 3D patches are left to nnU-Net's rule: they are small already.
    """
    if spatial_dims != 2 or device.startswith("cuda") or max(patch) <= CPU_2D_PATCH:
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


def network_kwargs(depth: int, init_features: int, device: str) -> dict[str, Any]:
    """Depth and width, deep supervision, and on a CPU no non-local attention at 1/2 resolution:
    there it costs more than the rest of the network (benchmarks/README.md); the coarser levels keep
    it. Deep supervision: on real MR (MSD Hippocampus) the second foreground class is learnt late,
    and supervising the coarse decoder stages directly learns both in about half the steps
    (benchmarks/README.md, issue 10)."""
    kwargs: dict[str, Any] = {"depth": depth, "init_features": init_features, "deep_supervision": depth > 1}
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


def normalisation(preset: str, intensities: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """How ``preset`` normalises intensities (for the plan), and the preset options that do it."""
    if preset == "ct":
        low, high = (float(v) for v in np.percentile(intensities, [0.5, 99.5]))
        scheme = {
            "scheme": "CT window: clip to the foreground's 0.5 / 99.5 percentiles, scale to [0, 1]",
            "percentile_00_5": round(low, 2),
            "percentile_99_5": round(high, 2),
            "mean": round(float(intensities.mean()), 2),
            "std": round(float(intensities.std()), 2),
        }
        return scheme, {"a_min": round(low, 2), "a_max": round(high, 2)}
    if preset == "image2d":
        return {"scheme": "each image scaled to [0, 1] per channel (min / max)"}, {}
    return {"scheme": "z-score per case (and channel) over its nonzero voxels"}, {}
