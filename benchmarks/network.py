"""Forward latency and peak memory of attnunet's AttentionUNet beside MONAI's AttentionUnet and UNet.

Every (case, model) runs in a fresh subprocess, so the peak resident set size (``ru_maxrss``) is that
model's alone. Cases:

- ``cpu2d``: forward (inference mode), 2D 512x512, 1 channel, batch 1, CPU.
- ``cpu3d``: forward (inference mode), 3D 96^3, 1 channel, batch 1, CPU.
- ``gpu3d``: forward + backward with AMP (float16 autocast), 3D 128^3 patch, batch 1, on CUDA; skipped
  when ``torch.cuda.is_available()`` is False.

All models have the widths 32, 64, 128, 256, 512 (``init_features=32``, ``depth=4``) and 3 output
channels. Times are medians over the timed iterations after warm-up, the fastest of ``--rounds``
processes per model; peak memory is the largest. Ratios are to MONAI's ``AttentionUnet`` in the same
case.

Run::

    python benchmarks/network.py                      # all cases, 2 CPU threads
    python benchmarks/network.py --cases cpu3d --iterations 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "cpu2d": {"spatial_dims": 2, "size": 512, "device": "cpu", "backward": False},
    "cpu3d": {"spatial_dims": 3, "size": 96, "device": "cpu", "backward": False},
    "gpu3d": {"spatial_dims": 3, "size": 128, "device": "cuda", "backward": True},
}
# label -> (registry name, extra kwargs); the first MONAI one is the reference of the ratios
MODELS = {
    "attnunet nonlocal": ("attention_unet", {"attention": "nonlocal"}),
    "attnunet gate": ("attention_unet", {"attention": "gate"}),
    "attnunet none": ("attention_unet", {"attention": "none"}),
    "MONAI AttentionUnet": ("monai_attention_unet", {}),
    "MONAI UNet": ("monai_unet", {}),
}
REFERENCE = "MONAI AttentionUnet"


def worker(case_name: str, label: str, threads: int, warmup: int, iterations: int) -> dict:
    """Build one model, time it and measure its peak memory; runs inside its own process."""
    import torch

    from attnunet.networks import create_network

    torch.set_num_threads(threads)
    case = CASES[case_name]
    name, kwargs = MODELS[label]
    dims = case["spatial_dims"]
    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = create_network(name, spatial_dims=dims, in_channels=1, out_channels=3, **kwargs).to(device)
    x = torch.randn(1, 1, *([case["size"]] * dims), device=device)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def step() -> None:
        if case["backward"]:
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16):
                loss = model(x).float().mean()
            loss.backward()
        else:
            with torch.inference_mode():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train(case["backward"])
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    result = {
        "case": case_name,
        "model": label,
        "seconds": statistics.median(times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "baseline_rss_gb": baseline_rss / 1e9,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
    return result


def print_table(rows: list[dict]) -> None:
    for case_name in dict.fromkeys(row["case"] for row in rows):
        case_rows = [row for row in rows if row["case"] == case_name]
        reference = next((row for row in case_rows if row["model"] == REFERENCE and "error" not in row), None)
        case = CASES[case_name]
        shape = "x".join([str(case["size"])] * case["spatial_dims"])
        what = "forward+backward, AMP" if case["backward"] else "forward"
        gpu = next((row["gpu"] for row in case_rows if "gpu" in row), "")
        print(f"\n## {case_name}: {shape}, batch 1, {what} {gpu}")
        memory = "peak GPU GB" if case["device"] == "cuda" else "peak RSS GB"
        print(f"| model | params (M) | time (s) | time ratio | {memory} | memory ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        key = "peak_gpu_gb" if case["device"] == "cuda" else "peak_rss_gb"
        for row in case_rows:
            if "error" in row:
                print(f"| {row['model']} | | failed: {row['error']} | | | |")
                continue
            time_ratio = row["seconds"] / reference["seconds"] if reference else float("nan")
            memory_ratio = row[key] / reference[key] if reference else float("nan")
            print(
                f"| {row['model']} | {row['params_m']:.2f} | {row['seconds']:.3f} | {time_ratio:.2f} "
                f"| {row[key]:.3f} | {memory_ratio:.2f} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per process (median)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per model (fastest kept)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.warmup, args.iterations)))
        return 0

    import torch

    cases = [c for c in args.cases if CASES[c]["device"] == "cpu" or torch.cuda.is_available()]
    skipped = sorted(set(args.cases) - set(cases))
    if skipped:
        print(f"skipped (no CUDA device): {', '.join(skipped)}", file=sys.stderr)
    rows = []
    for case_name in cases:
        best: dict[str, dict] = {}
        # Rounds go over all models in turn, so a slow spell of a shared machine hits every model; each
        # model keeps its fastest round (and its largest peak memory).
        for _ in range(args.rounds):
            for label in args.models:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    case_name,
                    label,
                    "--threads",
                    str(args.threads),
                ]
                command += ["--warmup", str(args.warmup), "--iterations", str(args.iterations)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    error = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
                    row = {"case": case_name, "model": label, "error": error}
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(row), file=sys.stderr, flush=True)
                previous = best.get(label)
                if previous is None or "error" in previous:
                    best[label] = row
                elif "error" not in row:
                    previous["seconds"] = min(previous["seconds"], row["seconds"])
                    for key in ("peak_rss_gb", "peak_gpu_gb"):
                        if key in row:
                            previous[key] = max(previous[key], row[key])
        rows += [best[label] for label in args.models]
    print_table(rows)
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(rows, stream, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
