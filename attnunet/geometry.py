"""Per-level, per-axis network geometry (nnU-Net's ``pool_op_kernel_sizes`` / ``conv_kernel_sizes``):
the one check of the lists :class:`~attnunet.network.AttentionUNet` and the peer networks take."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = ["sizes_per_level"]


def sizes_per_level(
    owner: str, name: str, value: object, count: int, count_text: str, spatial_dims: int, odd: bool
) -> tuple[tuple[int, ...], ...]:
    """``value`` (``count`` lists of ``spatial_dims`` ints) as a tuple of tuples.

    Args:
        owner: the network named in the messages, e.g. ``"AttentionUNet"``.
        name: the argument, e.g. ``"pool_sizes"``.
        value: the argument's value.
        count: the entries it must have (levels).
        count_text: how the messages spell ``count``, e.g. ``"depth=4"``.
        spatial_dims: the ints per entry.
        odd: kernel sizes (odd and positive) rather than pooling sizes (1 or 2).

    Raises:
        ValueError: naming ``owner``, ``name``, the rule and the entry that breaks it.

    Example:
        >>> sizes_per_level("net", "pool_sizes", [[2, 2, 1]], 1, "depth=1", 3, odd=False)
        ((2, 2, 1),)
    """
    rule = "odd and positive (padding k // 2 keeps the size)" if odd else "1 or 2 (pooled by 2, or not)"
    shape = f"{count_text} lists of spatial_dims={spatial_dims} ints, each {rule}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != count:
        raise ValueError(f"{owner}: {name} must be {shape}, got {value!r}")
    sizes = []
    for i, entry in enumerate(value):
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != spatial_dims:
            raise ValueError(f"{owner}: {name} must be {shape}; {name}[{i}] is {entry!r}")
        for size in entry:
            valid = isinstance(size, numbers.Integral) and not isinstance(size, bool)
            if not valid or (size % 2 != 1 or size < 1 if odd else size not in (1, 2)):
                raise ValueError(
                    f"{owner}: {name} must be {shape}; {name}[{i}] = {list(entry)!r} has {size!r}"
                )
        sizes.append(tuple(int(size) for size in entry))
    return tuple(sizes)
