"""The GPU check, in one process: what ``benchmarks/gpu_check.sh`` runs after the CUDA tests.

Steps (each prints one JSON line and adds a row to ``--json``):

1. ``train``: AMP (float16 autocast) training steps of our network, MONAI ``UNet``, MONAI
   ``AttentionUnet`` and nnU-Net's ``PlainConvUNet`` at equal widths: samples per second and peak GPU
   memory;
2. ``autocast``: our network's training step under float16 and bfloat16 autocast;
3. ``compile``: our network's training step with and without ``torch.compile`` (and the compile time);
4. ``infer``: :func:`attnunet.pipelines.inference.predict.infer` end to end on a CT-sized NIfTI (load, CT
   preset, sliding windows with Gaussian blending, stitching, inversion, argmax, write): seconds and
   peak GPU memory;
5. ``capped``: the same volume with the process's GPU memory capped below what stitching needs
   (``torch.cuda.set_per_process_memory_fraction``): the plan must stitch on the host and the labels
   must match step 4's.

``--dry-run`` runs every step on the CPU at tiny sizes (no AMP, ``torch.compile`` with the ``eager``
backend, the cap replaced by forcing host stitching), so a test keeps the script working between GPU
sessions. Run::

    python benchmarks/gpu_check.py --json gpu_check.json
    python benchmarks/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from attnunet.checkpoints import save_checkpoint
from attnunet.networks import create_network
from attnunet.pipelines.inference.devices import choose_devices, estimate_stitching_bytes
from attnunet.pipelines.inference.predict import infer
from attnunet.spec import ModelSpec

# label -> (registry name, kwargs besides spatial_dims/in_channels/out_channels)
PEERS = {
    "attnunet nonlocal": ("attention_unet", {}),
    "MONAI UNet": ("monai_unet", {}),
    "MONAI AttentionUnet": ("monai_attention_unet", {}),
    "nnU-Net PlainConvUNet": ("nnunet_plain_conv_unet", {}),
}
SIZES = {
    # patch, batch, training steps, init_features, depth, CT volume, sliding-window ROI
    "gpu": {
        "patch": 128,
        "batch": 2,
        "steps": 10,
        "features": 32,
        "depth": 4,
        "volume": (512, 512, 300),
        "roi": 96,
    },
    "dry": {
        "patch": 32,
        "batch": 1,
        "steps": 2,
        "features": 4,
        "depth": 3,
        "volume": (48, 40, 24),
        "roi": 16,
    },
}
CLASSES = 3


def _network(label: str, size: dict) -> torch.nn.Module:
    name, extra = PEERS[label]
    if name == "nnunet_plain_conv_unet":
        widths = tuple(size["features"] * 2**i for i in range(size["depth"] + 1))
        extra = {"features": widths, **extra}
    else:
        extra = {"init_features": size["features"], "depth": size["depth"], **extra}
    torch.manual_seed(0)
    return create_network(name, spatial_dims=3, in_channels=1, out_channels=CLASSES, **extra)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(
    network: torch.nn.Module, size: dict, device: torch.device, dtype: torch.dtype | None
) -> dict:
    """Time ``size["steps"]`` training steps (after two warm-up steps) of Adam on Dice-free CE."""
    network = network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    shape = (size["batch"], 1, *(size["patch"],) * 3)
    image = torch.randn(shape, device=device)
    label = torch.randint(0, CLASSES, (size["batch"], *shape[2:]), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(network(image).float(), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    started = time.perf_counter()
    for _ in range(2):
        step()
    _synchronize(device)
    warmup = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(size["steps"]):
        step()
    _synchronize(device)
    seconds = time.perf_counter() - started
    row = {
        "samples_per_s": round(size["steps"] * size["batch"] / seconds, 2),
        "warmup_s": round(warmup, 2),
        "params_m": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
    }
    if device.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return row


def _write_ct(path: Path, shape: tuple[int, ...]) -> Path:
    rng = np.random.default_rng(0)
    volume = rng.normal(40.0, 200.0, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([-0.8, -0.8, 1.5, 1.0])), str(path))
    return path


def inference_steps(size: dict, device: torch.device, dry_run: bool, folder: Path) -> list[dict]:
    """Steps 4 and 5: end-to-end inference, then the same volume with host stitching forced by a cap."""
    network = _network("attnunet nonlocal", size)
    spec = {
        "name": "attention_unet",
        "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": CLASSES},
    }
    spec["kwargs"].update(init_features=size["features"], depth=size["depth"])
    config = {
        "preset": "ct",
        "pixdim": None,
        "roi_size": [size["roi"]] * 3,
        "labels": {str(i): f"class_{i}" for i in range(CLASSES)},
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": CLASSES,
        "preset_kwargs": {},
    }
    model_spec = ModelSpec.from_config({**config, "network_spec": spec})
    checkpoint = save_checkpoint(
        folder / "model.pt", {"spec": model_spec.to_dict(), "model": network.state_dict()}
    )
    volume = _write_ct(folder / "ct.nii", size["volume"])
    options = {
        "model": checkpoint,
        "sw_batch_size": 4,
        "overlap": 0.25,
        "progress": False,
        "overwrite": True,
    }
    sw_device = "cpu" if dry_run else "cuda"
    infer(
        _write_ct(folder / "warmup.nii", (size["roi"],) * 3),
        folder / "warmup",
        sw_device=sw_device,
        **options,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    infer(volume, folder / "auto", sw_device=sw_device, device="auto", **options)
    _synchronize(device)
    rows = [
        {"step": "infer", "shape": list(size["volume"]), "seconds": round(time.perf_counter() - started, 2)}
    ]
    if device.type == "cuda":
        rows[0]["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)

    needed = estimate_stitching_bytes(size["volume"], 1, CLASSES)
    if dry_run:
        stitch = "cpu"  # no cap on a CPU: force the host stitching the cap must lead to
    else:
        torch.cuda.empty_cache()
        total = torch.cuda.mem_get_info(device)[1]
        # room for the windows (what is reserved now, plus 80% of the stitched volume), not for the volume
        cap = torch.cuda.memory_reserved(device) + 0.8 * needed
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
        stitch = "auto"
    plan = choose_devices(
        size["volume"], in_channels=1, out_channels=CLASSES, sw_device=sw_device, device=stitch
    )
    started = time.perf_counter()
    try:
        infer(volume, folder / "capped", sw_device=sw_device, device=stitch, **options)
        _synchronize(device)
    finally:
        if not dry_run:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    seconds = time.perf_counter() - started
    reference = np.asarray(nib.load(folder / "auto" / "ct.nii.gz").dataobj)
    capped = np.asarray(nib.load(folder / "capped" / "ct.nii.gz").dataobj)
    differing = int((reference != capped).sum())
    rows.append(
        {
            "step": "capped",
            "stitched_on": str(plan.device),
            "needed_gb": round(needed / 1e9, 2),
            "seconds": round(seconds, 2),
            "differing_voxels": differing,
            "ok": plan.device.type == "cpu" and differing <= 1e-5 * reference.size,
        }
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a CPU")
    size = SIZES["dry" if args.dry_run else "gpu"]
    # an indexed device: torch.cuda.set_per_process_memory_fraction rejects a bare torch.device("cuda")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    half = None if args.dry_run else torch.float16
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    emit(
        {
            "step": "environment",
            "torch": torch.__version__,
            "device": "cpu" if args.dry_run else torch.cuda.get_device_name(),
        }
    )
    for label in PEERS:
        try:
            emit({"step": "train", "model": label, **train_steps(_network(label, size), size, device, half)})
        except ImportError as error:  # nnU-Net's package is optional
            emit({"step": "train", "model": label, "error": str(error)})
    for dtype in (torch.float16, torch.bfloat16):
        used = None if args.dry_run else dtype  # no autocast on the CPU: the step's code path only
        row = train_steps(_network("attnunet nonlocal", size), size, device, used)
        emit({"step": "autocast", "dtype": str(dtype), "autocast": used is not None, **row})
    for compiled in (False, True):
        network = _network("attnunet nonlocal", size)
        if compiled:
            network = torch.compile(network, backend="eager" if args.dry_run else "inductor")
        emit({"step": "compile", "compiled": compiled, **train_steps(network, size, device, half)})
    with tempfile.TemporaryDirectory() as folder:
        for row in inference_steps(size, device, args.dry_run, Path(folder)):
            emit(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    failed = [row for row in rows if row.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
