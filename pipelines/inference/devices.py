"""Where sliding-window inference runs its windows and where it keeps the whole volume.

MONAI's :func:`monai.inferers.sliding_window_inference` takes two devices, and this module uses its
names: ``sw_device`` is where each window goes through the network, ``device`` is where the whole
volume and the stitched output (plus its count map) live. A scan too large for the GPU runs its
windows on the GPU (``sw_device="cuda"``) while the volume and the stitching stay in host memory
(``device="cpu"``).

MONAI's ``SlidingWindowInfererAdapt`` makes the same switch *after* a CUDA out-of-memory error; here
the choice is made up front from the free GPU memory (:func:`torch.cuda.mem_get_info`), so a large
scan never half-runs on the GPU first, and the decision is logged and testable with given numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.utils import look_up_option

__all__ = [
    "DEVICE_CHOICES",
    "DevicePlacement",
    "estimate_stitching_bytes",
    "fits_on_gpu",
    "gpu_free_bytes",
    "choose_devices",
]

logger = logging.getLogger(__name__)

# Accepted for both devices; "cuda:N" picks a GPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")

# Bytes per voxel and channel of the volumes held on the stitching device (float32).
_BYTES_PER_VALUE = 4
# The input and the stitched output are held at once with about two more copies of the output while it
# is post-processed (softmax, inversion to the input's geometry); 3x covers them and the count map.
_COPIES = 3


class DevicePlacement(NamedTuple):
    """The devices chosen for one volume.

    Attributes:
        sw_device: where the network runs on each window (MONAI's ``sw_device``).
        device: where the whole volume is kept and the windows are stitched (MONAI's ``device``).
        needed_bytes: estimated memory the volume needs on ``device`` (see :func:`estimate_stitching_bytes`).
        free_bytes: free memory of the GPU when it was asked, else ``None``.
    """

    sw_device: torch.device
    device: torch.device
    needed_bytes: int
    free_bytes: int | None


def estimate_stitching_bytes(spatial_shape: Sequence[int], in_channels: int, out_channels: int) -> int:
    """Estimate the memory a whole volume needs where it is stitched.

    ``voxels x (in_channels + out_channels) x 4 bytes x 3``: the float32 input and stitched output,
    with room for the count map and the copies made by post-processing.

    Args:
        spatial_shape: the volume's spatial size after preprocessing, e.g. ``(512, 512, 600)``.
        in_channels: channels of the network's input.
        out_channels: channels of the network's output.

    Example:
        >>> estimate_stitching_bytes((512, 512, 600), 1, 3) / 2**30  # GiB
        7.03125
    """
    if any(int(s) <= 0 for s in spatial_shape):
        raise ValueError(f"spatial_shape must be positive, got {tuple(spatial_shape)}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    voxels = math.prod(int(s) for s in spatial_shape)
    return voxels * (in_channels + out_channels) * _BYTES_PER_VALUE * _COPIES


def gpu_free_bytes(device: torch.device) -> int:
    """The GPU memory this process can still allocate on ``device``.

    :func:`torch.cuda.mem_get_info` reports the device's free memory, which ignores a cap set with
    :func:`torch.cuda.set_per_process_memory_fraction`; the allocator refuses anything past that cap,
    so the smaller of the two is what a stitched volume may use.
    """
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(device)
    capped = int(fraction * total) - torch.cuda.memory_reserved(device)
    return int(max(0, min(free, capped)))


def fits_on_gpu(
    spatial_shape: Sequence[int],
    *,
    in_channels: int,
    out_channels: int,
    free_bytes: int,
    memory_fraction: float = 0.8,
) -> bool:
    """Whether a volume can be stitched on a GPU with ``free_bytes`` free.

    True when :func:`estimate_stitching_bytes` is at most ``memory_fraction`` of ``free_bytes``; the
    rest is left for the network's activations on the windows.

    Args:
        spatial_shape: the volume's spatial size after preprocessing.
        in_channels: channels of the network's input.
        out_channels: channels of the network's output.
        free_bytes: free GPU memory in bytes.
        memory_fraction: the share of the free memory the stitched volume may take, in (0, 1].

    Example:
        >>> fits_on_gpu((512, 512, 600), in_channels=1, out_channels=3, free_bytes=80 * 2**30)
        True
        >>> fits_on_gpu((512, 512, 600), in_channels=1, out_channels=3, free_bytes=6 * 2**30)
        False
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    if free_bytes < 0:
        raise ValueError(f"free_bytes must be >= 0, got {free_bytes}")
    return estimate_stitching_bytes(spatial_shape, in_channels, out_channels) <= memory_fraction * free_bytes


def _cuda_device(name: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available here; use 'cpu'")
    device = torch.device(name)
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def choose_devices(
    spatial_shape: Sequence[int],
    *,
    in_channels: int,
    out_channels: int,
    sw_device: str = "auto",
    device: str = "auto",
    free_bytes: int | None = None,
    memory_fraction: float = 0.8,
) -> DevicePlacement:
    """Choose where the windows run and where the volume is stitched.

    ``sw_device="auto"`` runs the windows on the GPU when CUDA is available, else on the CPU.
    ``device="auto"`` stitches on the GPU when the windows run there and
    :func:`estimate_stitching_bytes` fits in ``memory_fraction`` of the free GPU memory (the rest is
    left for the network's activations), else on the CPU. ``"cpu"`` or ``"cuda"`` (``"cuda:1"``)
    force a device.

    Args:
        spatial_shape: the volume's spatial size after preprocessing.
        in_channels: channels of the network's input.
        out_channels: channels of the network's output.
        sw_device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``: where each window goes through the network.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``: where the volume is kept and stitched.
        free_bytes: free GPU memory in bytes; ``None`` asks :func:`gpu_free_bytes`. Given
            numbers make the choice reproducible (and testable without a GPU).
        memory_fraction: the share of the free GPU memory the stitched volume may take, in (0, 1].

    Raises:
        ValueError: an unknown device name, CUDA asked for but not available, or GPU stitching asked
            for while the windows run on the CPU.

    Example:
        >>> placement = choose_devices((512, 512, 600), in_channels=1, out_channels=3, sw_device="cpu")
        >>> placement.sw_device, placement.device
        (device(type='cpu'), device(type='cpu'))
    """
    needed = estimate_stitching_bytes(spatial_shape, in_channels, out_channels)
    sw_kind = look_up_option(str(sw_device).split(":")[0], DEVICE_CHOICES)
    stitch_kind = look_up_option(str(device).split(":")[0], DEVICE_CHOICES)

    if sw_kind == "cpu" or (sw_kind == "auto" and not torch.cuda.is_available()):
        if stitch_kind == "cuda":
            raise ValueError(
                f"device={device!r} (stitching on the GPU) needs the windows on the GPU too, but sw_device "
                f"is {sw_device!r}{'' if torch.cuda.is_available() else ' and CUDA is not available'}"
            )
        return DevicePlacement(torch.device("cpu"), torch.device("cpu"), needed, None)

    window_device = _cuda_device("cuda" if sw_kind == "auto" else str(sw_device))
    if stitch_kind == "cpu":
        return DevicePlacement(window_device, torch.device("cpu"), needed, None)
    if stitch_kind == "cuda":
        stitch_device = _cuda_device(str(device))
        return DevicePlacement(window_device, stitch_device, needed, None)

    if free_bytes is None:
        free_bytes = gpu_free_bytes(window_device)
    fits = fits_on_gpu(
        spatial_shape,
        in_channels=in_channels,
        out_channels=out_channels,
        free_bytes=free_bytes,
        memory_fraction=memory_fraction,
    )
    logger.debug(
        "volume %s needs ~%.1f GiB, %.1f GiB free on %s: stitching on %s",
        tuple(spatial_shape),
        needed / 2**30,
        free_bytes / 2**30,
        window_device,
        "the GPU" if fits else "the CPU",
    )
    return DevicePlacement(window_device, window_device if fits else torch.device("cpu"), needed, free_bytes)
