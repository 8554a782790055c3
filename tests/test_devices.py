"""Choosing where sliding windows run and where a volume is stitched (pipelines/devices.py)."""

from __future__ import annotations

import math

import pytest
import torch

from attnunet.pipelines.inference.devices import (
    choose_devices,
    estimate_stitching_bytes,
    fits_on_gpu,
    gpu_free_bytes,
)

CUDA = torch.cuda.is_available()
GIB = 2**30
CT_SCAN = (512, 512, 600)


@pytest.mark.parametrize(
    "shape, in_channels, out_channels", [((24, 24, 16), 1, 3), ((512, 512, 600), 1, 3), ((64, 48), 3, 1)]
)
def test_estimate_grows_with_voxels_and_channels(shape, in_channels, out_channels):
    base = estimate_stitching_bytes(shape, in_channels, out_channels)
    doubled = estimate_stitching_bytes((*shape[:-1], shape[-1] * 2), in_channels, out_channels)
    more_classes = estimate_stitching_bytes(shape, in_channels, out_channels + 1)
    assert doubled == 2 * base
    # every extra channel costs one float32 volume per copy; at least the stitched volume itself
    assert more_classes - base >= math.prod(shape) * 4
    assert base >= math.prod(shape) * (in_channels + out_channels) * 4


def test_ct_scan_fits_an_80gb_gpu_but_not_a_small_one():
    needed = estimate_stitching_bytes(CT_SCAN, 1, 3)
    assert fits_on_gpu(CT_SCAN, in_channels=1, out_channels=3, free_bytes=80 * GIB)
    assert not fits_on_gpu(CT_SCAN, in_channels=1, out_channels=3, free_bytes=needed // 2)


def test_fits_on_gpu_boundary_follows_memory_fraction():
    needed = estimate_stitching_bytes(CT_SCAN, 1, 3)
    for fraction in (0.5, 0.8, 1.0):
        free = math.ceil(needed / fraction)
        assert fits_on_gpu(CT_SCAN, in_channels=1, out_channels=3, free_bytes=free, memory_fraction=fraction)
        assert not fits_on_gpu(
            CT_SCAN, in_channels=1, out_channels=3, free_bytes=free - 64, memory_fraction=fraction
        )


ILL_ESTIMATES = [
    ({"spatial_shape": (0, 10, 10), "in_channels": 1, "out_channels": 2}, "spatial_shape"),
    ({"spatial_shape": (10, 10, 10), "in_channels": 0, "out_channels": 2}, "in_channels"),
]


@pytest.mark.parametrize("kwargs, message", ILL_ESTIMATES)
def test_estimate_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_stitching_bytes(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message", [({"memory_fraction": 0.0}, "memory_fraction"), ({"free_bytes": -1}, "free_bytes")]
)
def test_fits_on_gpu_rejects_bad_numbers(kwargs, message):
    options = {"in_channels": 1, "out_channels": 2, "free_bytes": GIB, **kwargs}
    with pytest.raises(ValueError, match=message):
        fits_on_gpu((16, 16, 16), **options)


@pytest.mark.parametrize("sw_device, device", [("cpu", "auto"), ("cpu", "cpu"), ("auto", "cpu")])
def test_cpu_windows_stitch_on_cpu(sw_device, device):
    if sw_device == "auto" and CUDA:
        pytest.skip("with CUDA, sw_device='auto' runs the windows on the GPU")
    plan = choose_devices(CT_SCAN, in_channels=1, out_channels=3, sw_device=sw_device, device=device)
    assert plan.sw_device == torch.device("cpu") and plan.device == torch.device("cpu")
    assert plan.needed_bytes == estimate_stitching_bytes(CT_SCAN, 1, 3)


def test_gpu_stitching_needs_gpu_windows():
    with pytest.raises(ValueError, match="windows on the GPU"):
        choose_devices((16, 16, 16), in_channels=1, out_channels=2, sw_device="cpu", device="cuda")


def test_unknown_device_name_is_rejected():
    with pytest.raises(ValueError, match="tpu"):
        choose_devices((16, 16, 16), in_channels=1, out_channels=2, sw_device="tpu")


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        choose_devices((16, 16, 16), in_channels=1, out_channels=2, sw_device="cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_auto_stitching_follows_free_gpu_memory():
    needed = estimate_stitching_bytes(CT_SCAN, 1, 3)
    roomy = choose_devices(CT_SCAN, in_channels=1, out_channels=3, free_bytes=2 * needed)
    tight = choose_devices(CT_SCAN, in_channels=1, out_channels=3, free_bytes=needed // 2)
    assert roomy.sw_device.type == "cuda" and roomy.device.type == "cuda"
    assert tight.sw_device.type == "cuda" and tight.device == torch.device("cpu")
    assert tight.free_bytes == needed // 2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_forced_stitching_device_ignores_free_memory():
    plan = choose_devices(CT_SCAN, in_channels=1, out_channels=3, device="cpu", free_bytes=1000 * GIB)
    assert plan.sw_device.type == "cuda" and plan.device == torch.device("cpu")
    plan = choose_devices(CT_SCAN, in_channels=1, out_channels=3, device="cuda", free_bytes=0)
    assert plan.device.type == "cuda"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_free_bytes_respects_the_per_process_cap():
    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.mem_get_info(device)[1]
    try:
        torch.cuda.set_per_process_memory_fraction(0.01, device)
        assert gpu_free_bytes(device) <= 0.01 * total  # mem_get_info alone would report nearly all of it
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert gpu_free_bytes(device) > 0.01 * total
