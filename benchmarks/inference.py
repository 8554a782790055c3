"""End-to-end sliding-window inference: seconds per volume and peak memory, beside MONAI's networks.

Each (case, model) runs :func:`attnunet.pipelines.inference.predict.infer` on one synthetic CT-like NIfTI
volume in a fresh subprocess: read, CT preset, ``SlidingWindowInferer`` (ROI 96^3, overlap 0.25,
Gaussian blending), ``Invertd``, argmax, write. The peak resident set size (``ru_maxrss``) is that
model's alone. Models have the widths 32..512 (``init_features=32``, ``depth=4``), 1 input channel and
3 classes, random weights (speed does not depend on them). Times are medians over the timed runs after
one warm-up run on an ROI-sized volume; ratios are to MONAI's ``AttentionUnet`` in the same case.

Cases:

- ``cpu``: a 192x192x96 volume on the CPU, 2 threads, ``sw_batch_size=1``.
- ``gpu``: a 512x512x300 CT-sized volume, windows on CUDA with AMP, ``sw_batch_size=4``; skipped when
  ``torch.cuda.is_available()`` is False. Reports volumes per minute and peak GPU memory.
- ``large`` (only with ``--large``): a 512x512x600 volume on the CPU with a tiny network
  (``init_features=4``, ``depth=2``), to show that the whole volume and its stitching fit in host
  memory (peak RSS) -- the path a scan too large for the GPU takes.

Run::

    python benchmarks/inference.py                 # cpu (and gpu when CUDA is available)
    python benchmarks/inference.py --cases cpu --models "attnunet nonlocal" "MONAI AttentionUnet"
    python benchmarks/inference.py --large --cases large
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import MODELS as ALL_MODELS
from harness import REFERENCE, peak_rss_gb, print_rows, ratio, run_worker, write_json

CASES = {
    "cpu": {"shape": (192, 192, 96), "device": "cpu", "sw_batch_size": 1, "init_features": 32, "depth": 4},
    "gpu": {"shape": (512, 512, 300), "device": "cuda", "sw_batch_size": 4, "init_features": 32, "depth": 4},
    "large": {"shape": (512, 512, 600), "device": "cpu", "sw_batch_size": 4, "init_features": 4, "depth": 2},
}
MODELS = {label: ALL_MODELS[label] for label in ("attnunet nonlocal", REFERENCE, "MONAI UNet")}
ROI, OVERLAP, CLASSES = (96, 96, 96), 0.25, 3


def _write_volume(path: Path, shape: tuple[int, ...]) -> None:
    """A CT-like volume in HU (noise around soft tissue), 1 mm spacing, uncompressed NIfTI (fast to read)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    volume = rng.normal(40.0, 200.0, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))


def worker(case_name: str, label: str, threads: int, repeats: int) -> dict:
    """Time ``infer`` for one model on one volume; runs inside its own process."""
    import torch

    from attnunet.checkpoints import save_checkpoint
    from attnunet.networks import create_network
    from attnunet.pipelines.inference.predict import infer
    from attnunet.spec import ModelSpec

    torch.set_num_threads(threads)
    case = CASES[case_name]
    name, extra = MODELS[label]
    kwargs = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": CLASSES,
        "init_features": case["init_features"],
        "depth": case["depth"],
        **extra,
    }
    torch.manual_seed(0)
    model = create_network(name, **kwargs)
    config = {
        "preset": "ct",
        "pixdim": None,
        "roi_size": list(ROI),
        "labels": {str(i): f"class_{i}" for i in range(CLASSES)},
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": CLASSES,
        "preset_kwargs": {},
    }
    device = torch.device(case["device"])
    options = {
        "overlap": OVERLAP,
        "sw_batch_size": case["sw_batch_size"],
        "blend": "gaussian",
        "sw_device": case["device"],
        "progress": False,
        "overwrite": True,
    }
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = save_checkpoint(
            root / "model.pt",
            {
                "spec": ModelSpec.from_config(
                    {**config, "network_spec": {"name": name, "kwargs": kwargs}}
                ).to_dict(),
                "model": model.state_dict(),
            },
        )
        _write_volume(root / "warmup.nii", ROI)
        _write_volume(root / "volume.nii", case["shape"])
        infer(root / "warmup.nii", root / "out", model=checkpoint, **options)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            infer(root / "volume.nii", root / "out", model=checkpoint, **options)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    result = {
        "case": case_name,
        "model": label,
        "seconds": statistics.median(times),
        "volumes_per_minute": 60.0 / statistics.median(times),
        "peak_rss_gb": peak_rss_gb(),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
    return result


def print_table(rows: list[dict]) -> None:
    for case_name in dict.fromkeys(row["case"] for row in rows):
        case = CASES[case_name]
        case_rows = [row for row in rows if row["case"] == case_name]
        gpu = next((row["gpu"] for row in case_rows if "gpu" in row), "")
        shape = "x".join(map(str, case["shape"]))
        print(
            f"\n## {case_name}: {shape}, ROI {'x'.join(map(str, ROI))}, overlap {OVERLAP}, gaussian, "
            f"sw_batch_size {case['sw_batch_size']}{', AMP ' + gpu if case['device'] == 'cuda' else ''}"
        )
        key = "peak_gpu_gb" if case["device"] == "cuda" else "peak_rss_gb"
        memory = "peak GPU GB" if case["device"] == "cuda" else "peak RSS GB"
        print_rows(
            case_rows,
            {
                "params (M)": lambda row, _: f"{row['params_m']:.2f}",
                "s / volume": lambda row, _: f"{row['seconds']:.2f}",
                "volumes / min": lambda row, _: f"{row['volumes_per_minute']:.2f}",
                "time ratio": lambda row, reference: ratio(row, reference, "seconds"),
                memory: lambda row, _, key=key: f"{row[key]:.2f}",
                "memory ratio": lambda row, reference, key=key: ratio(row, reference, key),
            },
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["cpu", "gpu"])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--large", action="store_true", help="allow the 512x512x600 'large' CPU case")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per model (default 1)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.repeats)))
        return 0

    import torch

    cases = [c for c in args.cases if (CASES[c]["device"] == "cpu" or torch.cuda.is_available())]
    cases = [c for c in cases if c != "large" or args.large]
    skipped = sorted(set(args.cases) - set(cases))
    if skipped:
        print(f"skipped (no CUDA device, or 'large' without --large): {', '.join(skipped)}", file=sys.stderr)
    rows = []
    for case_name in cases:
        # The large case shows memory, not a comparison: our network only.
        labels = ["attnunet nonlocal"] if case_name == "large" else args.models
        for label in labels:
            options = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
            row = run_worker(__file__, ["--worker", case_name, label, *options])
            if "error" in row:
                row = {"case": case_name, "model": label, **row}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
