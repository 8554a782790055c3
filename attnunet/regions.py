"""Region-based segmentation, as nnU-Net v2 trains it: overlapping sets of label values, one sigmoid each.

A dataset whose ``dataset.json`` ``labels`` has list-valued entries, e.g. ``{"background": 0,
"whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}`` with ``"regions_class_order":
[1, 2, 3]``, trains one output per non-background entry, in the file's order; output ``r``'s target is
the voxels whose label value is among region ``r``'s values. A prediction becomes one label map again:
each region's probability thresholded at 0.5, and ``class_order[r]`` written where region ``r`` is on,
region after region, so a later (inner) region overwrites an earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Regions"]


@dataclass(frozen=True)
class Regions:
    """The regions of a dataset: one network output each.

    Attributes:
        names: each region's name, in output order.
        values: each region's label values (a voxel is in region ``r`` when its label is among them).
        class_order: the label value written for each region, in output order (nnU-Net's
            ``regions_class_order``).

    Example:
        >>> regions = Regions(("whole", "core"), ((1, 2), (2,)), (1, 2))
        >>> regions.masks(torch.tensor([[[0, 1, 2]]]))[0].tolist()
        [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
        >>> regions.label_map(torch.tensor([[False, True, True], [False, False, True]])).tolist()
        [[0, 1, 2]]
    """

    names: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]
    class_order: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(name) for name in self.names))
        object.__setattr__(self, "values", tuple(tuple(int(v) for v in region) for region in self.values))
        object.__setattr__(self, "class_order", tuple(int(v) for v in self.class_order))
        if not self.names or not len(self.names) == len(self.values) == len(self.class_order):
            raise ValueError(
                f"regions need as many names, value lists and class_order entries, at least one, got "
                f"{len(self.names)}, {len(self.values)} and {len(self.class_order)}"
            )
        if any(not region or min(region) < 0 for region in self.values) or min(self.class_order) < 0:
            raise ValueError(
                f"region label values must be non-negative integers, at least one per region: {self}"
            )

    @property
    def num_classes(self) -> int:
        """Label values a case may hold, background included: the largest value named, plus one."""
        return max(*(max(region) for region in self.values), *self.class_order) + 1

    def masks(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *spatial)`` label values -> ``(B, R, *spatial)`` float region masks (multi-hot).

        Written here because MONAI has no general form: ``ConvertToMultiChannelBasedOnBratsClasses``
        knows BraTS's values only, and ``one_hot`` gives one channel per value, not per set of values.
        """
        return torch.cat(
            [torch.isin(labels, torch.tensor(region, device=labels.device)) for region in self.values], dim=1
        ).float()

    def label_map(self, on: torch.Tensor) -> torch.Tensor:
        """``(R, *spatial)`` region masks (bool) -> ``(1, *spatial)`` label map, ``class_order[r]`` written
        where region ``r`` is on, later regions over earlier ones (uint8 below 256 values)."""
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        labels = torch.zeros((1, *on.shape[1:]), dtype=dtype, device=on.device)
        for region, value in enumerate(self.class_order):
            labels[0][on[region]] = value
        return labels

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, as a spec or a run config keeps them."""
        return {
            "names": list(self.names),
            "values": [list(v) for v in self.values],
            "class_order": list(self.class_order),
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Sequence[Any]]) -> Regions:
        """Read what :meth:`to_dict` wrote."""
        return cls(tuple(saved["names"]), tuple(saved["values"]), tuple(saved["class_order"]))
