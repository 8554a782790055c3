"""Does a network learn every class? A short overfit on a few real MSD Hippocampus cases.

Trains one network through the project's MR training chain (whole-case patches, flips along every
axis, intensity jitter), MONAI's ``DiceCELoss`` and Adam, and every ``--every`` steps scores the very
cases it trained on (whole volumes, eval mode, as validation does). Each line gives the step, the
training loss, the Dice per foreground class, where the posterior class's voxels went (share predicted
as background / anterior / posterior), and for each non-local block the mean over queries of the
largest attention weight (``1 / keys`` when uniform, 1 when saturated), so the unscaled
``softmax(theta^T phi)`` can be checked for saturation.

Run (the figures in README.md)::

    python benchmarks/class_collapse.py --seed 2
    python benchmarks/class_collapse.py --seed 2 --kwargs '{"upsample": "deconv"}'
    python benchmarks/class_collapse.py --network monai_unet --steps 200
    python benchmarks/class_collapse.py --roi-size 40 56 40 --steps 60 --every 20 --seed 2 \
        --kwargs '{"depth": 3, "attention_levels": [2, 3], "deep_supervision": true}'
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from monai.data import DataLoader, Dataset
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.utils import set_determinism

from attnunet.blocks import NonLocalBlock
from attnunet.networks import create_network
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.engines.components import create_loss
from attnunet.transforms.presets import build_transforms


def attention_peaks(network: torch.nn.Module) -> dict[str, list[float]]:
    """Register hooks that record, per non-local block, the mean largest attention weight of each call."""
    peaks: dict[str, list[float]] = {}

    def record(name: str):
        def hook(block: NonLocalBlock, inputs: tuple[torch.Tensor], _output) -> None:
            if block.training:  # recorded on the scored volumes only
                return
            with torch.no_grad():
                h = block.project(inputs[0])
                theta = block.theta(h).flatten(2).transpose(1, 2)
                phi = block.pool(block.phi(h)).flatten(2)
                weights = torch.softmax(theta @ phi, dim=-1)  # the block's own scale: 1
                peaks.setdefault(f"{name} ({phi.shape[-1]} keys)", []).append(
                    weights.max(-1).values.mean().item()
                )

        return hook

    for name, module in network.named_modules():
        if isinstance(module, NonLocalBlock):
            module.register_forward_hook(record(name))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/Task04_Hippocampus")
    parser.add_argument("--network", default="attention_unet_3d_small")
    parser.add_argument("--kwargs", default='{"attention_levels": [2, 3, 4]}', help="network kwargs, JSON")
    parser.add_argument("--cases", type=int, default=4, help="the first N cases of the dataset")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--roi-size", type=int, nargs=3, default=[48, 64, 48])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)

    index = discover_dataset(args.data)
    cases = index.items[: args.cases]
    num_classes = len(index.labels)
    network = create_network(
        args.network, spatial_dims=3, in_channels=1, out_channels=num_classes, **json.loads(args.kwargs)
    )
    peaks = attention_peaks(network)
    chain = build_transforms("mr", "train", roi_size=args.roi_size, num_samples=2, num_classes=num_classes)
    loader = DataLoader(Dataset(cases, chain), batch_size=2, shuffle=True)
    validation = list(Dataset(cases, build_transforms("mr", "val")))
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    loss_function = create_loss("dice_ce", num_classes)  # the training pipeline's loss
    started, step = time.perf_counter(), 0
    while step < args.steps:
        for batch in loader:
            network.train()
            optimizer.zero_grad()
            loss = loss_function(network(batch["image"].as_tensor()), batch["label"].as_tensor())
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                report(network, validation, num_classes, peaks, step, loss.item(), started)
            if step == args.steps:
                break


def report(network, validation, num_classes: int, peaks, step: int, loss: float, started: float) -> None:
    dice = DiceMetric(include_background=False, reduction="mean_batch")
    went = torch.zeros(num_classes)
    network.eval()
    with torch.inference_mode():
        for item in validation:
            prediction = network(item["image"].as_tensor()[None]).argmax(1, keepdim=True)
            label = item["label"].as_tensor()[None].long()
            dice(one_hot(prediction, num_classes), one_hot(label, num_classes))
            went += torch.bincount(prediction[label == num_classes - 1], minlength=num_classes)
    shares = [round(v, 2) for v in (went / went.sum()).tolist()]
    latest = {name: round(sum(v[-8:]) / len(v[-8:]), 2) for name, v in peaks.items() if v}
    print(
        f"step {step} loss {loss:.3f} dice {[round(d, 3) for d in dice.aggregate().tolist()]} "
        f"last class -> {shares} attention peak {latest} {time.perf_counter() - started:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
