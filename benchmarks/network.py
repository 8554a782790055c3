"""Forward latency and peak memory of attnunet's AttentionUNet beside MONAI's AttentionUnet and UNet.

Cases:

- ``cpu2d``: forward (inference mode), 2D 512x512, 1 channel, batch 1, CPU.
- ``cpu3d``: forward (inference mode), 3D 96^3, 1 channel, batch 1, CPU.
- ``gpu3d``: forward + backward with AMP (float16 autocast), 3D 128^3 patch, batch 1, on CUDA; skipped
  when ``torch.cuda.is_available()`` is False.

All models have the widths 32, 64, 128, 256, 512 (``init_features=32``, ``depth=4``) and 3 output
channels. Two kinds of subprocess per case:

- memory: one fresh process per model (a warm-up and one measured step), so the peak resident set
  size (``ru_maxrss``, the whole process: Python, torch, MONAI, weights, activations) or the peak CUDA
  memory is that model's alone;
- time: one process holding all models, which runs them in turn for ``--iterations`` rounds after a
  warm-up, and reports each model's median step. Interleaving makes the ratios fair on a shared
  machine, where a slow spell would otherwise hit one model only.

``attnunet nonlocal, module path`` is our network with its CPU inference path switched off
(``has_inference_path = False``): the forward as it ran before that path existed, module by module,
with the same weights, so one run shows before and after.

Ratios are to MONAI's ``AttentionUnet`` in the same case.

Run::

    python benchmarks/network.py                      # all cases, 2 CPU threads
    python benchmarks/network.py --cases cpu3d --iterations 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from harness import MODELS as PEERS
from harness import peak_rss_gb, print_rows, ratio, run_worker, write_json

MODULE_PATH = "attnunet nonlocal, module path"
MODELS = {**PEERS, MODULE_PATH: PEERS["attnunet nonlocal"]}

CASES = {
    "cpu2d": {"spatial_dims": 2, "size": 512, "device": "cpu", "backward": False},
    "cpu3d": {"spatial_dims": 3, "size": 96, "device": "cpu", "backward": False},
    "gpu3d": {"spatial_dims": 3, "size": 128, "device": "cuda", "backward": True},
}


def _setup(case_name: str, labels: list[str], threads: int):
    import torch

    from attnunet.networks import create_network

    torch.set_num_threads(threads)
    case = CASES[case_name]
    device = torch.device(case["device"])
    torch.manual_seed(0)
    models = {}
    for label in labels:
        name, kwargs = MODELS[label]
        models[label] = create_network(
            name, spatial_dims=case["spatial_dims"], in_channels=1, out_channels=3, **kwargs
        ).to(device)
        models[label].train(case["backward"])
        if label == MODULE_PATH:
            models[label].has_inference_path = False
    x = torch.randn(1, 1, *([case["size"]] * case["spatial_dims"]), device=device)

    def step(model: torch.nn.Module) -> float:
        start = time.perf_counter()
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
        return time.perf_counter() - start

    return torch, models, step


def memory_worker(case_name: str, label: str, threads: int) -> dict:
    """Peak memory of one model's step, in a process of its own."""
    torch, models, step = _setup(case_name, [label], threads)
    model = models[label]
    baseline = peak_rss_gb()
    step(model)  # warm-up
    step(model)
    result = {
        "peak_rss_gb": peak_rss_gb(),
        "baseline_rss_gb": baseline,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if torch.cuda.is_available() and CASES[case_name]["device"] == "cuda":
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["gpu"] = torch.cuda.get_device_name()
    return result


def time_worker(case_name: str, labels: list[str], threads: int, iterations: int) -> dict:
    """Median step of each model, the models run in turn in one process."""
    _, models, step = _setup(case_name, labels, threads)
    for model in models.values():
        step(model)  # warm-up
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(iterations):
        for label, model in models.items():
            seconds[label].append(step(model))
    return {label: statistics.median(times) for label, times in seconds.items()}


def print_table(rows: list[dict]) -> None:
    for case_name in dict.fromkeys(row["case"] for row in rows):
        case_rows = [row for row in rows if row["case"] == case_name]
        case = CASES[case_name]
        shape = "x".join([str(case["size"])] * case["spatial_dims"])
        what = "forward+backward, AMP" if case["backward"] else "forward"
        gpu = next((row["gpu"] for row in case_rows if "gpu" in row), "")
        key = "peak_gpu_gb" if case["device"] == "cuda" else "peak_rss_gb"
        print(f"\n## {case_name}: {shape}, batch 1, {what} {gpu}")
        print_rows(
            case_rows,
            {
                "params (M)": lambda row, _: f"{row['params_m']:.2f}",
                "time (s)": lambda row, _: f"{row['seconds']:.3f}",
                "time ratio": lambda row, reference: ratio(row, reference, "seconds"),
                key: lambda row, _, key=key: f"{row[key]:.3f}",
                "memory ratio": lambda row, reference, key=key: ratio(row, reference, key),
            },
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--iterations", type=int, default=3, help="timed rounds over the models (default 3)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--memory-worker", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker, args.threads)))
        return 0
    if args.time_worker:
        print(json.dumps(time_worker(args.time_worker, args.models, args.threads, args.iterations)))
        return 0

    import torch

    cases = [c for c in args.cases if CASES[c]["device"] == "cpu" or torch.cuda.is_available()]
    skipped = sorted(set(args.cases) - set(cases))
    if skipped:
        print(f"skipped (no CUDA device): {', '.join(skipped)}", file=sys.stderr)
    rows = []
    common = ["--threads", str(args.threads), "--iterations", str(args.iterations), "--models", *args.models]
    for case_name in cases:
        times = run_worker(__file__, ["--time-worker", case_name, *common])
        for label in args.models:
            memory = run_worker(__file__, ["--memory-worker", case_name, label, *common])
            row = {"case": case_name, "model": label, **memory}
            if "error" in times:
                row.setdefault("error", times["error"])
            else:
                row["seconds"] = times[label]
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
