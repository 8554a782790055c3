"""The dataset fingerprint ``attnunet plan`` starts from: headers of every case, voxel statistics of a sample.

Every case's header is read (shape, spacing, channels) by the checks ``attnunet train`` makes
(:func:`~attnunet.pipelines.data.validation.validate_items`); voxel statistics (foreground intensities,
class frequencies) come from at most ``sample_cases`` cases spread over the dataset, so a 1,000-case CT set
plans in minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import ndimage

from attnunet.pipelines.data.datasets import DatasetIndex
from attnunet.pipelines.data.files import innermost_cause
from attnunet.pipelines.data.validation import DataValidationError
from attnunet.transforms.headers import binary_mask, loader_for

__all__ = [
    "FOREGROUND_SAMPLE_PER_CASE",
    "VoxelStatistics",
    "channel_names",
    "class_frequencies",
    "declared_preset",
    "voxel_statistics",
]

FOREGROUND_SAMPLE_PER_CASE = 10_000


def channel_names(index: DatasetIndex) -> list[str]:
    """The channel names the dataset declares (``dataset.json``), in channel order; empty when undeclared."""
    return [c.strip() for c in index.modality.split("+") if c.strip()] if index.modality != "image2d" else []


def declared_preset(index: DatasetIndex) -> str | None:
    """The preset the dataset's own description implies, by nnU-Net's rule: ``"ct"`` when every channel
    is named CT, ``"mr"`` (per-case z-score; CT channels among them windowed, see
    :func:`~attnunet.pipelines.planning.rules.normalisation`) when any is named otherwise (MR, T1c,
    bSSFP, LGE, ADC, PET ...), ``"image2d"`` for 2D pictures, None when it says nothing."""
    if index.modality == "image2d":
        return "image2d"
    names = channel_names(index)
    if not names:
        return None
    return "ct" if all(name.upper() == "CT" for name in names) else "mr"


@dataclass(frozen=True)
class VoxelStatistics:
    """What the sampled cases' voxels say.

    Attributes:
        intensities: ``(channels, samples)``: each channel's foreground intensities, a bounded random
            sample of the same voxels per case.
        counts: voxels per class.
        cases: cases read.
        darkest: the darkest case's 0.5th intensity percentile over the whole image (air, for a CT).
        class_offsets: ``(cases, pairs, 3)`` world (RAS, mm; or along the voxel axes) offsets from the
            centroid of foreground class ``i`` to that of class ``j``, for each pair ``i < j``; NaN where
            a case lacks either class.
            ``(0, 0, 3)`` for 2D images and for fewer than two foreground classes.
    """

    intensities: np.ndarray
    counts: np.ndarray
    cases: int
    darkest: float
    class_offsets: np.ndarray


def voxel_statistics(
    index: DatasetIndex, sample_cases: int, num_classes: int, seed: int, *, world: bool = True
) -> VoxelStatistics:
    """The :class:`VoxelStatistics` of at most ``sample_cases`` cases spread evenly over the dataset;
    ``world=False`` gives the class offsets along the stored voxel axes (in mm) instead of RAS."""
    positions = np.unique(np.linspace(0, len(index.items) - 1, min(sample_cases, len(index.items))).round())
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_classes, dtype=np.int64)
    foreground: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    darkest = np.inf
    for position in positions.astype(int):
        image, label, affine = _read_case(index.items[position], index.modality, num_classes)
        darkest = min(darkest, float(np.percentile(image, 0.5)))
        case_counts = np.bincount(label.astype(np.int64).ravel(), minlength=num_classes)[:num_classes]
        counts += case_counts
        if label.ndim == 3 and num_classes > 2:
            if not world:
                affine = np.diag([*np.linalg.norm(affine[:3, :3], axis=0), 1.0])
            offsets.append(_class_offsets(label, affine, case_counts[1:] > 0))
        mask = label > 0
        picked = image[:, mask] if image.shape[1:] == mask.shape else image.reshape(len(image), -1)
        if picked.size:
            chosen = rng.choice(
                picked.shape[1], min(picked.shape[1], FOREGROUND_SAMPLE_PER_CASE), replace=False
            )
            foreground.append(picked[:, chosen])
    intensities = np.concatenate(foreground, axis=1) if foreground else np.zeros((1, 1), dtype=np.float32)
    class_offsets = np.stack(offsets) if offsets else np.zeros((0, 0, 3))
    return VoxelStatistics(intensities, counts, len(positions), darkest, class_offsets)


def _class_offsets(label: np.ndarray, affine: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``(pairs, 3)``: world offsets between the foreground classes' centroids (NaN where one is absent);
    ``present[k]`` says whether class ``k + 1`` has voxels in ``label``."""
    centres = np.full((present.size, 3), np.nan)
    found = [int(c) for c in np.flatnonzero(present) + 1]
    if found:
        voxels = np.asarray(ndimage.center_of_mass(np.ones(label.shape, np.uint8), label, found))
        centres[present] = voxels @ affine[:3, :3].T + affine[:3, 3]
    return np.array([centres[j] - centres[i] for i, j in combinations(range(present.size), 2)])


def _read_case(
    item: Mapping[str, str], modality: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A case's image (channels first), label and the label's RAS affine; label values outside the classes
    are an error."""
    try:
        image = np.asarray(
            loader_for(item["image"], ensure_channel_first=True)(item["image"]), dtype=np.float32
        )
        loaded = loader_for(item["label"], mask=True)(item["label"])
        label, affine = np.asarray(loaded), np.asarray(loaded.affine, dtype=np.float64)
    except Exception as error:  # MONAI wraps the reader's error; report the file and the cause
        raise DataValidationError(
            f"{item['image']} or its label {item['label']} cannot be read: {innermost_cause(error)}"
        ) from None
    if modality == "image2d":  # 2D masks are binary, often stored as 0/255
        label = binary_mask(label)
    unknown = [int(v) for v in np.unique(label).astype(int) if not 0 <= v < num_classes]
    if unknown:
        raise DataValidationError(
            f"{item['label']}: label values {unknown} are not among the declared classes 0..{num_classes - 1}"
        )
    return image, label, affine


def class_frequencies(labels: Mapping[str, str], counts: np.ndarray) -> dict[str, dict[str, object]]:
    """Class index -> its name and share of the sampled voxels."""
    total = max(int(counts.sum()), 1)
    return {
        key: {"name": name, "frequency": round(float(counts[int(key)]) / total, 6)}
        for key, name in labels.items()
    }
