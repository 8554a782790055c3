"""Accuracy per minute on real data: every network trained by attnunet's pipeline for one wall-clock budget.

The cases of an MSD dataset are split once (``split_items``, ``--test-fraction``, ``--seed``); the
held-out ones never reach training or planning. Each model is then trained exactly as

    attnunet train --data TRAIN --network NAME --time-budget MINUTES --no-track

trains it (the plan of the training cases, its preset and augmentation, ``DiceCELoss``, Adam, the
schedule annealed to the end of the budget, validation on 20% of the training cases, the best
checkpoint kept), then segmented and scored as ``attnunet infer`` (sliding window, flip TTA) and
``attnunet evaluate`` do it: Dice, HD95 (mm) and surface Dice per class on the held-out cases.

Models (``--models``, labels from ``MODELS``): our network with each attention mode, MONAI's ``UNet``
and ``AttentionUnet`` at the plan's depth and width, and nnU-Net's ``PlainConvUNet`` (package
``dynamic-network-architectures``) at the widths nnU-Net plans for MSD Hippocampus 3d_fullres (32...256,
stride 1 then 2, two convolutions per stage, instance norm, leaky ReLU; what a user of nnU-Net gets).
Every model gets the plan's patch, batch and preset: the network is the only difference.

Run (the figures in README.md)::

    python benchmarks/real_data.py --data ../shared/data/Task04_Hippocampus --minutes 20 --output bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import harness
from harness import print_rows, write_json

from attnunet.cli import configure_logging
from attnunet.models import load_model
from attnunet.pipelines.data.datasets import discover_dataset, split_items
from attnunet.pipelines.engines.config import config_from_plan
from attnunet.pipelines.engines.training import train
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.inference.predict import infer
from attnunet.pipelines.planning.plan import plan_dataset

# the speed benchmarks' models, and nnU-Net's network at its own widths
MODELS = {**harness.MODELS, "nnU-Net PlainConvUNet": ("nnunet_plain_conv_unet", {})}


def write_training_folder(data: Path, folder: Path, test_fraction: float, seed: int) -> list[dict]:
    """Write ``folder/dataset.json`` listing the training cases at their own paths; return the held-out rest.

    A ``dataset.json`` with absolute paths makes a subset a dataset every command reads; nothing is copied.
    """
    index = discover_dataset(data)
    if index.layout != "msd":
        raise SystemExit(f"{data}: the benchmark splits MSD datasets (dataset.json), not {index.layout!r}")
    train_items, test_items = split_items(index.items, test_fraction, seed)
    meta = json.loads((data / "dataset.json").read_text())
    meta.update(
        training=[{"image": item["image"], "label": item["label"]} for item in train_items],
        numTraining=len(train_items),
        test=[],
        numTest=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return test_items


def run_model(label: str, plan: dict, train_dir: Path, test_items: list[dict], args) -> dict:
    """Train one model for the budget, segment and score the held-out cases; one table row."""
    name, kwargs = MODELS[label]
    output = args.output / label.replace(" ", "_")
    config = config_from_plan(
        plan, data=str(train_dir), output=str(output), network=name, network_kwargs=dict(kwargs),
        time_budget=args.minutes, track=False, progress=False, seed=args.seed,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    minutes = (time.perf_counter() - started) / 60
    images = [item["image"] for item in test_items]
    infer(images, output / "pred", model=result.best_checkpoint, progress=False)
    summary = evaluate(
        output / "pred", [item["label"] for item in test_items], output_dir=output / "eval",
        class_names={key: value["name"] for key, value in plan["classes"].items()}, progress=False,
    )  # fmt: skip
    network, _ = load_model(result.best_checkpoint)
    row = {
        "model": label,
        "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "minutes": minutes,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "classes": summary["classes"],
    }
    print(json.dumps(row), flush=True)
    return row


def _distance(hd95: dict) -> str:
    """HD95 cell: the mean over the cases where the class was predicted, and how many those were."""
    return "-" if hd95["mean"] is None else f"{hd95['mean']:.2f} (n={hd95['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/Task04_Hippocampus"))
    parser.add_argument("--output", type=Path, required=True, help="new folder for the runs and predictions")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of the cases held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of every run")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    configure_logging()  # the runs' epoch lines, as `attnunet train` prints them
    if args.output.exists():
        raise SystemExit(f"--output {args.output} exists; give a new folder (nothing in it is replaced)")

    train_dir = args.output / "train"
    test_items = write_training_folder(args.data, train_dir, args.test_fraction, args.seed)
    plan = plan_dataset(train_dir)
    rows = [run_model(label, plan, train_dir, test_items, args) for label in args.models]

    names = [plan["classes"][key]["name"] for key in sorted(plan["classes"], key=int) if key != "0"]
    columns = {
        "params (M)": lambda row, _: f"{row['params_m']:.2f}",
        "minutes": lambda row, _: f"{row['minutes']:.1f}",
        "epochs (best)": lambda row, _: f"{row['epochs']} ({row['best_epoch']})",
    }
    for name in names:
        columns[f"Dice {name}"] = lambda row, _, n=name: f"{row['classes'][n]['dice']['mean']:.3f}"
    for name in names:
        columns[f"HD95 {name} (mm)"] = lambda row, _, n=name: _distance(row["classes"][n]["hd95"])
    print(f"\n{plan['cases']} training cases, {len(test_items)} held-out cases, {args.minutes} min each\n")
    print_rows(rows, columns)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
