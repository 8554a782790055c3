"""Per-channel intensity normalisation for images whose channels are of different kinds (CT + MR, CT + PET).

MONAI's ``NormalizeIntensityd`` and ``ScaleIntensityRanged`` apply one scheme to every channel; nnU-Net
normalises each channel by its own scheme, so this picks MONAI's array transform per channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRange

__all__ = ["NormalizeChannelsd"]


class NormalizeChannelsd(MapTransform):
    """Each channel by its own scheme: a channel in ``windows`` is clipped to its window and scaled to
    [0, 1] (a CT channel, as the CT preset does), every other one z-scored over its non-zero voxels (MR,
    PET ...).

    Args:
        keys: the image keys.
        windows: channel index (int, or str as JSON keeps it) -> ``(a_min, a_max)``.
        allow_missing_keys: skip missing keys instead of raising ``KeyError``.

    Raises:
        ValueError: a window with ``a_min >= a_max`` or a negative channel index; at call time, a
            channel index beyond the image's channels.

    Example:
        >>> import torch
        >>> image = torch.tensor([[[0.0, 500.0]], [[2.0, 4.0]]])  # a CT and an MR channel
        >>> NormalizeChannelsd("image", {0: (-100, 300)})({"image": image})["image"].tolist()
        [[[0.25, 1.0]], [[-1.0, 1.0]]]
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: Mapping[int | str, Sequence[float]],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windows: dict[int, ScaleIntensityRange] = {}
        for channel, window in windows.items():
            low, high = (float(v) for v in window)
            if int(channel) < 0 or low >= high:
                raise ValueError(
                    f"channel_windows: channel {channel!r} needs an index >= 0 and a window a_min < a_max, "
                    f"got {list(window)}"
                )
            self.windows[int(channel)] = ScaleIntensityRange(low, high, 0.0, 1.0, clip=True)
        self.zscore = NormalizeIntensity(nonzero=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            beyond = sorted(c for c in self.windows if c >= image.shape[0])
            if beyond:
                raise ValueError(
                    f"channel_windows names channel {beyond[0]} but {key!r} has {image.shape[0]} channel(s)"
                )
            out = image.clone() if isinstance(image, torch.Tensor) else image.copy()
            for channel in range(image.shape[0]):
                scheme = self.windows.get(channel, self.zscore)
                out[channel] = scheme(image[channel : channel + 1])[0]
            d[key] = out
        return d
