"""Accuracy per minute on real data: every network trained by one pipeline for one wall-clock budget.

Each model gets the same cases, the same transforms (the project's MR or CT preset, random patches,
flips and intensity jitter), the same loss (MONAI ``DiceCELoss``), optimiser (Adam) and schedule, and the
same wall-clock budget for training. The schedule is nnU-Net's polynomial decay, on elapsed time
instead of on the epoch count, so every model is annealed to the end of its own budget however fast
it runs. Then each is scored on cases it never saw: sliding-window inference (Gaussian blending) on the
whole volume, Dice and HD95 per class (MONAI's metrics, in voxels).

Models (``--models``, labels from ``MODELS``): our network with each attention mode, MONAI's ``UNet``
and ``AttentionUnet`` at the same widths, and nnU-Net's ``PlainConvUNet`` (package
``dynamic-network-architectures``) configured as nnU-Net plans Hippocampus 3d_fullres: four stages of
32, 64, 128, 256 features (nnU-Net pools while every axis keeps at least 4 voxels: its 40x56x40 patch
allows three poolings), strides 1, 2, 2, 2, two 3x3x3 convolutions per stage, instance norm and leaky
ReLU (its own widths, not ours: that is what a user of nnU-Net gets). Every model gets the same patch
size (``--roi-size``), not nnU-Net's own.

The training is the pipeline's, written here with MONAI's ``SupervisedTrainer`` because ``attnunet
train`` has no wall-clock budget yet; validation during training is left out so that the whole budget
goes to training, the same for every model.

Run (the figures in README.md)::

    python benchmarks/real_data.py --data ../shared/data/Task04_Hippocampus --minutes 5 --test-cases 20
"""

from __future__ import annotations

import argparse
import json
import time

import harness
import torch
from harness import print_rows, write_json
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism

from attnunet.networks import create_network
from attnunet.pipelines.data.datasets import discover_dataset, split_items
from attnunet.transforms.presets import build_transforms

# the speed benchmarks' models, and nnU-Net's network at its own widths
MODELS = {**harness.MODELS, "nnU-Net PlainConvUNet": ("nnunet_plain_conv_unet", {})}
POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler


def _poly_on_time(optimizer: torch.optim.Optimizer, budget_s: float, started: list[float]):
    """LambdaLR factor ``(1 - elapsed / budget) ** 0.9``, read at every iteration."""

    def factor(_step: int) -> float:
        elapsed = time.perf_counter() - started[0] if started else 0.0
        return max(1.0 - elapsed / budget_s, 0.0) ** POLY_EXPONENT

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_for(network, train_ds, args, budget_s: float) -> dict:
    """Train ``network`` with MONAI's ``SupervisedTrainer`` until ``budget_s`` seconds have passed."""
    loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, num_workers=0)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    started: list[float] = []
    scheduler = _poly_on_time(optimizer, budget_s, started)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=10**6,  # the budget ends the run
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )

    @trainer.on(Events.STARTED)
    def _start(_engine) -> None:
        started.append(time.perf_counter())

    @trainer.on(Events.ITERATION_COMPLETED)
    def _step(engine) -> None:
        scheduler.step()
        if time.perf_counter() - started[0] >= budget_s:
            engine.terminate()

    trainer.run()
    return {"minutes": (time.perf_counter() - started[0]) / 60, "iterations": trainer.state.iteration}


def score(network, test_items, args, num_classes: int) -> dict:
    """Mean Dice and HD95 per foreground class on ``test_items`` (whole volumes, sliding window).

    HD95 is undefined for a case where a class is not predicted (or not labelled): it is averaged over
    the other cases, ``missed`` counts those cases per class, and a class never predicted has HD95 None.
    """
    dice = DiceMetric(include_background=False, reduction="mean_batch")
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    chain = build_transforms(args.preset, "val")
    network.eval()
    with torch.inference_mode():
        for item in Dataset(test_items, chain):
            image = item["image"].as_tensor()[None]
            logits = sliding_window_inference(image, args.roi_size, 4, network, overlap=0.5, mode="gaussian")
            prediction = one_hot(logits.argmax(1, keepdim=True), num_classes)
            label = one_hot(item["label"].as_tensor()[None].long(), num_classes)
            dice(prediction, label)
            hd95(prediction, label)
    distances = hd95.aggregate()  # (cases, classes), NaN or inf where a class is absent from a prediction
    missed = (~distances.isfinite()).sum(0).tolist()
    mean = distances.where(distances.isfinite(), float("nan")).nanmean(0).tolist()
    return {
        "dice": dice.aggregate().tolist(),
        # None (JSON null) for a class never predicted: there is no distance to average
        "hd95": [None if n == len(distances) else v for n, v in zip(missed, mean, strict=True)],
        "missed": missed,
    }


def run_model(label: str, train_ds, test_items, args, num_classes: int, in_channels: int) -> dict:
    set_determinism(seed=args.seed)
    name, kwargs = MODELS[label]
    kwargs = dict(kwargs, spatial_dims=len(args.roi_size), in_channels=in_channels, out_channels=num_classes)
    if name != "nnunet_plain_conv_unet":
        kwargs["init_features"] = args.init_features
    network = create_network(name, **kwargs)
    params = sum(p.numel() for p in network.parameters()) / 1e6
    row = {"model": label, "params_m": params, **train_for(network, train_ds, args, args.minutes * 60)}
    row.update(score(network, test_items, args, num_classes))
    print(json.dumps(row), flush=True)
    return row


def _distance(row: dict, c: int) -> str:
    """HD95 cell: the mean distance (``-`` for a class never predicted) and the cases missed."""
    value = row["hd95"][c]
    return f"{'-' if value is None else f'{value:.2f}'} ({row['missed'][c]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/Task04_Hippocampus")
    parser.add_argument("--preset", default="mr")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per model")
    parser.add_argument("--train-cases", type=int, default=60)
    parser.add_argument("--test-cases", type=int, default=30)
    parser.add_argument("--roi-size", type=int, nargs="+", default=[48, 64, 48])
    parser.add_argument(
        "--init-features", type=int, default=16, help="widths of all but nnU-Net's (the README table: 8)"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="cases per batch (2 patches each)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    index = discover_dataset(args.data)
    # the split is fixed by the seed; the test cases never reach the training
    train_items, test_items = split_items(index.items, val_fraction=0.3, seed=args.seed)
    train_items, test_items = train_items[: args.train_cases], test_items[: args.test_cases]
    chain = build_transforms(args.preset, "train", roi_size=args.roi_size, num_samples=2)
    train_ds = CacheDataset(train_items, chain, num_workers=0, progress=False)
    num_classes = len(index.labels)
    in_channels = int(train_ds[0][0]["image"].shape[0])
    rows = [run_model(m, train_ds, test_items, args, num_classes, in_channels) for m in args.models]

    names = [index.labels[str(c)] for c in range(1, num_classes)]
    columns = {
        "params (M)": lambda row, _: f"{row['params_m']:.2f}",
        "minutes": lambda row, _: f"{row['minutes']:.1f}",
        "iterations": lambda row, _: str(row["iterations"]),
    }
    for c, name in enumerate(names):
        columns[f"Dice {name}"] = lambda row, _, c=c: f"{row['dice'][c]:.3f}"
    for c, name in enumerate(names):
        columns[f"HD95 {name} (cases missed)"] = lambda row, _, c=c: _distance(row, c)
    print(f"\n{len(train_items)} training cases, {len(test_items)} held-out cases, {args.minutes} min each\n")
    print_rows(rows, columns)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
