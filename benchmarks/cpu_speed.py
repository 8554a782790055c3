"""CPU speed where it counts: training steps, sliding-window inference and the 96^3 forward of our
network beside MONAI's ``UNet`` and ``AttentionUnet`` and nnU-Net's ``PlainConvUNet``, in one run.

Parts, each a markdown table with ratios to MONAI's ``AttentionUnet``:

- ``train``: one training step (forward, ``DiceCELoss``, backward, Adam step) on a batch of 2
  Hippocampus-sized 40x56x40 patches, 1 channel, 3 classes; the time of an epoch of
  ``--steps-per-epoch`` steps (nnU-Net's 250 by default) follows from it.
- ``sliding``: ``monai.inferers.sliding_window_inference`` of a 96^3 volume, ROI 40x56x40, overlap 0.5,
  Gaussian blending, ``sw_batch_size=1`` (48 windows), in eval mode under ``torch.inference_mode``.
- ``forward``: the 3D 96^3 forward, batch 1, in eval mode under ``torch.inference_mode``.

Widths are equal across the models within a part: 32, 64, 128, 256 for ``train`` and ``sliding``
(nnU-Net's own plan for MSD Hippocampus; 40x56x40 halves exactly three times, and MONAI's networks need
that), 32 ... 512 for ``forward`` (the document's widths, as ``benchmarks/network.py``). Our network
and MONAI's use their defaults otherwise (batch norm for ours and MONAI's ``AttentionUnet``, instance
norm for MONAI's ``UNet``); ``PlainConvUNet`` is nnU-Net's configuration (instance norm, leaky ReLU,
two convolutions per stage in the encoder and the decoder).

Times: one process builds every model and runs them in turn (A, B, C, D, A, B, ...) for
``--iterations`` rounds after one warm-up round, and reports each model's median. Interleaving keeps
the ratios fair on a shared machine, where a slow spell would otherwise hit one model only; the time
ratio is the median over the rounds of the ratio within each round, so a spell of load that spans a
round or two moves it less than it moves the medians of the times.
Memory: the ``forward`` part again in one fresh process per model (a warm-up and one measured forward),
whose peak resident set size (``ru_maxrss``: the whole process, Python, torch and MONAI included) is
that model's alone; these processes run side by side, before the timed one.

Run::

    python benchmarks/cpu_speed.py                  # 2 threads, 3 rounds
    python benchmarks/cpu_speed.py --iterations 5 --json cpu_speed.json
    python benchmarks/cpu_speed.py --quick          # tiny sizes and widths, seconds (tests run it)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time

from harness import peak_rss_gb, print_rows, run_worker, write_json

# label -> attnunet.networks registry name
MODELS = {
    "attnunet nonlocal": "attention_unet",
    "MONAI UNet": "monai_unet",
    "MONAI AttentionUnet": "monai_attention_unet",
    "nnU-Net PlainConvUNet": "nnunet_plain_conv_unet",
}
CLASSES = 3
SIZES = {
    "full": {
        "train": {"patch": (40, 56, 40), "batch": 2, "features": 32, "depth": 3},
        "sliding": {"volume": (96, 96, 96), "roi": (40, 56, 40), "features": 32, "depth": 3},
        "forward": {"volume": (96, 96, 96), "features": 32, "depth": 4},
    },
    "quick": {
        "train": {"patch": (16, 24, 16), "batch": 2, "features": 4, "depth": 3},
        "sliding": {"volume": (24, 32, 24), "roi": (16, 24, 16), "features": 4, "depth": 3},
        "forward": {"volume": (32, 32, 32), "features": 4, "depth": 4},
    },
}
PARTS = tuple(SIZES["full"])


def build(label: str, features: int, depth: int):
    """``label``'s network with widths ``features * 2**i``, ``i = 0..depth``, 1 channel in, 3 out."""
    from attnunet.networks import create_network

    name = MODELS[label]
    if name == "nnunet_plain_conv_unet":
        widths = tuple(features * 2**i for i in range(depth + 1))
        kwargs: dict = {"features": widths, "max_features": widths[-1]}
    else:
        kwargs = {"init_features": features, "depth": depth}
    return create_network(name, spatial_dims=3, in_channels=1, out_channels=CLASSES, **kwargs)


def make_step(part: str, size: dict, model):
    """The timed unit of ``part`` for ``model``: a function of no arguments (the inputs are fixed)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    generator = torch.Generator().manual_seed(0)
    if part == "train":
        model.train()
        image = torch.randn(size["batch"], 1, *size["patch"], generator=generator)
        label = torch.randint(0, CLASSES, (size["batch"], 1, *size["patch"]), generator=generator)
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_function(model(image), label).backward()
            optimizer.step()

        return step
    model.eval()
    volume = torch.randn(1, 1, *size["volume"], generator=generator)
    if part == "sliding":

        def step() -> None:
            with torch.inference_mode():
                sliding_window_inference(
                    volume, size["roi"], 1, model, overlap=0.5, mode="gaussian", progress=False
                )

        return step

    def step() -> None:
        with torch.inference_mode():
            model(volume)

    return step


def time_worker(sizes: dict, labels: list[str], threads: int, iterations: int) -> dict:
    """Median seconds per part and model; within a part the models run in turn, round after round."""
    import torch

    torch.set_num_threads(threads)
    result: dict = {}
    for part, size in sizes.items():
        torch.manual_seed(0)
        steps = {
            label: make_step(part, size, build(label, size["features"], size["depth"])) for label in labels
        }
        for step in steps.values():
            step()  # warm-up: allocations, oneDNN primitives, Adam's state
        seconds: dict[str, list[float]] = {label: [] for label in labels}
        for _ in range(iterations):
            for label, step in steps.items():
                start = time.perf_counter()
                step()
                seconds[label].append(time.perf_counter() - start)
        result[part] = {label: statistics.median(times) for label, times in seconds.items()}
        result[part + "_all"] = seconds
    return result


def memory_worker(size: dict, label: str, threads: int) -> dict:
    """Peak RSS of one model's ``forward`` part, in a process of its own."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(label, size["features"], size["depth"])
    step = make_step("forward", size, model)
    baseline = peak_rss_gb()
    step()  # warm-up
    step()
    return {
        "peak_rss_gb": peak_rss_gb(),
        "baseline_rss_gb": baseline,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def round_ratio(row: dict, reference: dict | None, part: str) -> str:
    """Median over the rounds of ``row``'s time over ``reference``'s time in the same round."""
    if reference is None:
        return "-"
    pairs = zip(row["seconds_all"][part], reference["seconds_all"][part], strict=True)
    return f"{statistics.median(mine / theirs for mine, theirs in pairs):.2f}"


def print_tables(rows: list[dict], sizes: dict, steps_per_epoch: int) -> None:
    def shape(values: tuple[int, ...]) -> str:
        return "x".join(map(str, values))

    def widths(size: dict) -> str:
        return ", ".join(str(size["features"] * 2**i) for i in range(size["depth"] + 1))

    def seconds(key: str, scale: float = 1.0, digits: int = 3):
        return lambda row, _: f"{row[key] * scale:.{digits}f}"

    train, sliding, forward = sizes["train"], sizes["sliding"], sizes["forward"]
    print(
        f"\n### train: one step, batch {train['batch']} x {shape(train['patch'])}, {CLASSES} classes, "
        f"DiceCE + Adam (widths {widths(train)})\n"
    )
    print_rows(
        rows,
        {
            "s / step": seconds("train"),
            "time ratio": lambda row, reference: round_ratio(row, reference, "train"),
            f"min / epoch ({steps_per_epoch} steps)": seconds("train", steps_per_epoch / 60, 1),
        },
    )
    windows = 1
    for size, roi in zip(sliding["volume"], sliding["roi"], strict=True):
        windows *= -(-max(size - roi, 0) // max(int(roi * 0.5), 1)) + 1
    print(
        f"\n### sliding: sliding-window inference of a {shape(sliding['volume'])} volume, ROI "
        f"{shape(sliding['roi'])}, overlap 0.5, Gaussian, sw_batch_size 1 ({windows} windows; widths "
        f"{widths(sliding)})\n"
    )
    print_rows(
        rows,
        {
            "s / volume": seconds("sliding"),
            "time ratio": lambda row, reference: round_ratio(row, reference, "sliding"),
        },
    )
    print(
        f"\n### forward: {shape(forward['volume'])}, batch 1, eval, inference mode "
        f"(widths {widths(forward)})\n"
    )
    print_rows(
        rows,
        {
            "params (M)": lambda row, _: f"{row['params_m']:.2f}",
            "time (s)": seconds("forward"),
            "time ratio": lambda row, reference: round_ratio(row, reference, "forward"),
            "peak RSS (GB)": seconds("peak_rss_gb"),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--iterations", type=int, default=3, help="timed rounds over the models (default 3)")
    parser.add_argument("--steps-per-epoch", type=int, default=250, help="for the epoch time (default 250)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and widths, one round")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--time-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    iterations = 1 if args.quick else args.iterations

    if args.time_worker:
        print(json.dumps(time_worker(sizes, args.models, args.threads, iterations)))
        return 0
    if args.memory_worker:
        print(json.dumps(memory_worker(sizes["forward"], args.memory_worker, args.threads)))
        return 0

    import monai
    import torch

    start_load = os.getloadavg()
    common = ["--threads", str(args.threads), "--iterations", str(iterations)] + ["--quick"] * args.quick
    # The memory workers run side by side (each process's peak RSS is its own, whatever runs beside it),
    # then the time worker alone, so nothing else competes for the cores it is timed on.
    with concurrent.futures.ThreadPoolExecutor(len(args.models)) as pool:
        memory = list(
            pool.map(lambda label: run_worker(__file__, ["--memory-worker", label, *common]), args.models)
        )
    times = run_worker(__file__, ["--time-worker", "--models", *args.models, *common])
    rows = []
    for label, measured in zip(args.models, memory, strict=True):
        row = {"model": label, **measured}
        if "error" in times:
            row.setdefault("error", times["error"])
        elif "error" not in row:
            row.update({part: times[part][label] for part in PARTS})
            row["seconds_all"] = {part: times[part + "_all"][label] for part in PARTS}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    end_load = os.getloadavg()
    print(
        f"torch {torch.__version__}, MONAI {monai.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {iterations} rounds, "
        f"medians; load average {start_load[0]:.1f} at the start, {end_load[0]:.1f} at the end"
    )
    print_tables(rows, sizes, args.steps_per_epoch)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
