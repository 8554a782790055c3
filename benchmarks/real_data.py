"""Accuracy per minute on real data: every network trained by attnunet's pipeline for one wall-clock budget.

The cases of an MSD or nnU-Net dataset (one file per case, or one file per channel) are split once
(``split_items``, ``--test-fraction``, ``--seed``); the held-out ones never reach training or planning.
Each model is then trained exactly as

    attnunet train --data TRAIN --network NAME --time-budget MINUTES --no-track

trains it (the plan of the training cases, its preset and augmentation, ``DiceCELoss``, Adam, the
schedule annealed to the end of the budget, validation on 20% of the training cases, the best
checkpoint kept), then segmented and scored as ``attnunet infer`` (sliding window, flip TTA) and
``attnunet evaluate`` do it: Dice, HD95 (mm) and surface Dice per class on the held-out cases.

Models (``--models``, labels from ``MODELS``): our network with each attention mode, MONAI's ``UNet``
and ``AttentionUnet`` at the plan's depth and width, and nnU-Net's ``PlainConvUNet`` (package
``dynamic-network-architectures``) at the widths nnU-Net plans for MSD Hippocampus 3d_fullres (32...256,
stride 1 then 2, two convolutions per stage, instance norm, leaky ReLU; what a user of nnU-Net gets).
On thick slices the plan's per-axis pooling and kernels go to every model (``plan_options``): the peers
then pool in-plane only too, nnU-Net's network with one stage per planned level (32 * 2**i features);
MONAI's two take one kernel size for all levels (``attnunet.networks`` says which).
Every model gets the plan's patch, batch and preset: the network is the only difference.

Run (the figures in README.md)::

    python benchmarks/real_data.py --data ../shared/data/Task04_Hippocampus --minutes 20 --output bench
    python benchmarks/real_data.py --data ../shared/data/Dataset101_MyoPS --output bench_myops

Each model's row is printed as a JSON line when it finishes, and the rows so far are written to ``--json``
(default ``OUTPUT/results.json``); the table follows at the end.
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
from attnunet.pipelines.data.files import case_name
from attnunet.pipelines.engines.config import config_from_plan
from attnunet.pipelines.engines.training import train
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.inference.predict import infer
from attnunet.pipelines.planning.plan import plan_dataset

# the speed benchmarks' models, and nnU-Net's network at its own widths
MODELS = {**harness.MODELS, "nnU-Net PlainConvUNet": ("nnunet_plain_conv_unet", {})}
# nnU-Net v2 dataset.json keys that an MSD one says otherwise (channel_names -> modality) or has no use for
NNUNET_ONLY_KEYS = ("channel_names", "file_ending", "overwrite_image_reader_writer", "regions_class_order")


def write_training_folder(data: Path, folder: Path, test_fraction: float, seed: int) -> list[dict]:
    """Write ``folder/dataset.json`` listing the training cases at their own paths; return the held-out rest.

    ``data`` is an MSD or nnU-Net dataset; the file written is an MSD ``dataset.json`` with absolute paths
    (a case stored one file per channel lists them, in channel order, as its ``image``), which makes the
    subset a dataset every command reads; nothing is copied.
    """
    index = discover_dataset(data)
    if index.layout not in ("msd", "nnunet"):
        raise SystemExit(
            f"{data}: the benchmark splits MSD and nnU-Net datasets (a dataset.json), not {index.layout!r}"
        )
    train_items, test_items = split_items(index.items, test_fraction, seed)
    source = json.loads((data / "dataset.json").read_text())
    meta = {key: value for key, value in source.items() if key not in NNUNET_ONLY_KEYS}
    meta.update(
        labels=dict(index.labels),
        modality=(
            {str(i): name for i, name in enumerate(index.modality.split("+"))}
            if index.modality
            else source.get("modality") or source.get("channel_names") or {}
        ),
        training=[dict(item) for item in train_items],
        numTraining=len(train_items),
        test=[],
        numTest=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return test_items


def inference_inputs(test_items: list[dict], folder: Path) -> list[str]:
    """What ``infer`` segments for the held-out cases, so that each prediction is named as its label.

    A case whose one file is named as its label is given by its path; the others (one file per channel,
    or nnU-Net's ``CASE_0000`` alone) as links ``folder/CASE_0000``, ``CASE_0001`` ..., which ``infer``
    groups into one case ``CASE`` (given one by one, each channel file would be a case of its own).
    """
    inputs, linked = [], False
    for item in test_items:
        channels = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
        case = case_name(item["label"])
        if len(channels) == 1 and case_name(channels[0]) == case:
            inputs.append(channels[0])
            continue
        folder.mkdir(parents=True, exist_ok=True)
        suffix = Path(item["label"]).name[len(case) :]  # the label's extension, e.g. .nii.gz
        for channel, path in enumerate(channels):
            (folder / f"{case}_{channel:04d}{suffix}").symlink_to(Path(path).resolve())
        linked = True
    return [*inputs, str(folder)] if linked else inputs


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
    images = inference_inputs(test_items, output / "test_images")
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
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/Task04_Hippocampus"),
        help="an MSD or nnU-Net dataset folder (default: ../shared/data/Task04_Hippocampus)",
    )
    parser.add_argument("--output", type=Path, required=True, help="new folder for the runs and predictions")
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
        help=f"models to train, in this order (default: all): {', '.join(map(repr, MODELS))}",
    )  # fmt: skip
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model (default: 20)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of the cases held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of every run")
    parser.add_argument(
        "--json", help="the rows as JSON, rewritten after each model (default: OUTPUT/results.json)"
    )
    args = parser.parse_args()
    configure_logging()  # the runs' epoch lines, as `attnunet train` prints them
    if args.output.exists():
        raise SystemExit(f"--output {args.output} exists; give a new folder (nothing in it is replaced)")

    results = args.json or str(args.output / "results.json")
    print(f"runs, predictions and scores go to {args.output}, the rows to {results}", flush=True)
    train_dir = args.output / "train"
    test_items = write_training_folder(args.data, train_dir, args.test_fraction, args.seed)
    plan = plan_dataset(train_dir)
    rows = []
    for label in args.models:
        rows.append(run_model(label, plan, train_dir, test_items, args))
        write_json(results, rows)  # after each model: a later model's failure keeps the rows so far

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
    print(f"\nrows written to {results}")


if __name__ == "__main__":
    main()
