"""The pieces of a training run, one small factory each: loss, optimiser, schedule, the MONAI trainer
and evaluator. ``attnunet train`` and the bundle's ``configs/train.json`` (by ``_target_``) build them
here, so both run the same components.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer, default_prepare_batch
from monai.handlers import IgniteMetricHandler, MeanDice
from monai.inferers import SimpleInferer
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss, DiceLoss
from monai.utils import convert_to_tensor, look_up_option

from attnunet.pipelines.engines.config import LOSSES, SCHEDULERS
from attnunet.pipelines.inference.apply import ValidationInferer, Windows
from attnunet.regions import Regions
from attnunet.spec import ModelSpec

__all__ = [
    "RegionLoss",
    "create_evaluator",
    "create_loss",
    "create_optimizer",
    "create_scheduler",
    "create_trainer",
    "prepare_batch",
]

# nnU-Net's Dice: over the whole batch (a class absent from one patch adds no noisy per-patch term, so small
# classes get a stable gradient) and over the foreground classes only (cross-entropy covers background).
_DICE = {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}

# name -> MONAI loss for one softmax output per class (labels as class indices)
_SOFTMAX_LOSSES: Mapping[str, Callable[[], torch.nn.Module]] = {
    "dice_ce": lambda: DiceCELoss(**_DICE),
    "dice_focal": lambda: DiceFocalLoss(**_DICE),
    "dice": lambda: DiceLoss(**_DICE),
}

# A region model's Dice: each region's sigmoid, over the whole batch; every output is a region, none is
# background to leave out.
_REGION_DICE = {"sigmoid": True, "batch": True}

# name -> MONAI losses summed on a region model's multi-hot targets. "dice_ce" composes Dice and BCE:
# MONAI's DiceCELoss takes a softmax cross-entropy over several outputs, wrong for overlapping regions.
_REGION_LOSSES: Mapping[str, Callable[[], list[torch.nn.Module]]] = {
    "dice_ce": lambda: [DiceLoss(**_REGION_DICE), torch.nn.BCEWithLogitsLoss()],
    "dice_focal": lambda: [DiceFocalLoss(**_REGION_DICE)],
    "dice": lambda: [DiceLoss(**_REGION_DICE)],
    "bce": lambda: [torch.nn.BCEWithLogitsLoss()],
}


class RegionLoss(torch.nn.Module):
    """The sum of ``losses`` on one mask per region, made from the label map here: inside
    ``DeepSupervisionLoss``, which resizes the label map to each scale by nearest neighbour first.

    Args:
        regions: the model's regions.
        losses: MONAI losses of ``(B, R, *spatial)`` logits and region masks.
    """

    def __init__(self, regions: Regions, losses: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        self.regions = regions
        self.losses = torch.nn.ModuleList(losses)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: ``(B, R, *spatial)`` logits; ``target``: ``(B, 1, *spatial)`` label values."""
        masks = self.regions.masks(target)
        return sum(loss(input, masks) for loss in self.losses)


def create_loss(name: str, out_channels: int, regions: Regions | None = None) -> torch.nn.Module:
    """The loss called ``name`` (one of :data:`~attnunet.pipelines.engines.config.LOSSES`).

    ``"auto"`` is ``DiceCELoss`` for one output per class and ``BCEWithLogitsLoss`` for one binary
    output; ``"bce"`` needs that one output, the Dice losses need one per class.
    With ``regions`` (one sigmoid output per region, as nnU-Net's region-based training) every name is a
    :class:`RegionLoss`: ``"auto"`` and ``"dice_ce"`` are batch Dice + BCE, as nnU-Net trains regions.
    It is wrapped in MONAI's ``DeepSupervisionLoss``, which scores one tensor as the loss itself and
    the list a deeply supervised network gives in training (``AttentionUNet(deep_supervision=True)``,
    full resolution first) as the sum over its scales weighted 1, 1/2, 1/4 ..., the labels resized to
    each scale by nearest neighbour.

    Example:
        >>> type(create_loss("auto", 3).loss).__name__, type(create_loss("auto", 1).loss).__name__
        ('DiceCELoss', 'BCEWithLogitsLoss')
    """
    name = look_up_option(name, LOSSES)
    if regions is not None:
        losses = _REGION_LOSSES["dice_ce" if name == "auto" else name]()
        return DeepSupervisionLoss(RegionLoss(regions, losses), weight_mode="exp")
    if name == "auto":
        name = "bce" if out_channels == 1 else "dice_ce"
    if (name == "bce") != (out_channels == 1):
        raise ValueError(
            f"loss {name!r} does not fit out_channels={out_channels}: 'bce' is for one binary output, "
            f"{sorted(_SOFTMAX_LOSSES)} for one output per class"
        )
    loss = torch.nn.BCEWithLogitsLoss() if name == "bce" else _SOFTMAX_LOSSES[name]()
    return DeepSupervisionLoss(loss, weight_mode="exp")


def create_optimizer(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adam."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def create_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """An epoch-level schedule: ``"cosine"`` annealed to 0 at ``epochs``, or ``"constant"``."""
    if look_up_option(name, SCHEDULERS) == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def prepare_batch(batch: dict[str, Any], device: torch.device, non_blocking: bool = False, **kwargs):
    """MONAI's ``default_prepare_batch`` giving plain tensors: the network needs no metadata, and
    every operation on a ``MetaTensor`` pays for ``__torch_function__`` dispatch."""
    image, label = default_prepare_batch(batch, device, non_blocking, **kwargs)
    return convert_to_tensor(image, track_meta=False), convert_to_tensor(label, track_meta=False)


def _pred_label(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, label) of a batch as plain tensors (MONAI's LossMetric cannot index a 0-d MetaTensor)."""
    pred, label = output["pred"], output["label"]
    return convert_to_tensor(pred, track_meta=False), convert_to_tensor(label, track_meta=False)


def _discrete_pred_label(spec: ModelSpec) -> Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
    """Output transform for Dice: class indices for softmax outputs, a 0/1 mask for one sigmoid output,
    and for a region model a mask per region against the label values each region holds."""

    def transform(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, label = _pred_label(output)
        if spec.regions is not None:
            return (logits > 0).float(), spec.regions.masks(label)
        return ((logits > 0).float() if spec.out_channels == 1 else logits.argmax(dim=1, keepdim=True)), label

    return transform


def create_evaluator(
    network: torch.nn.Module,
    loader: DataLoader,
    loss_function: torch.nn.Module,
    *,
    spec: ModelSpec,
    roi_size: tuple[int, ...],
    sw_batch_size: int,
    overlap: float,
    device: torch.device,
    amp: bool,
) -> SupervisedEvaluator:
    """Sliding-window validation: ``val_mean_dice`` (key metric), ``val_dice`` per class, ``val_loss``.

    The windows are inference's own (:class:`~attnunet.pipelines.inference.apply.ValidationInferer`:
    the same stitching of class probabilities, without test-time flips). Softmax outputs are scored on
    the foreground classes from class indices; sigmoid outputs (one binary output, or one per region) on
    their masks.
    """
    dice_args = {
        "include_background": spec.sigmoid,  # a sigmoid output is never background
        "num_classes": None if spec.sigmoid else spec.out_channels,
        "output_transform": _discrete_pred_label(spec),
    }
    windows = Windows.for_model(
        spec, roi_size, overlap, sw_batch_size, tta=False, sw_device=str(device), device=str(device)
    )
    inferer = ValidationInferer(spec, windows, amp=amp)
    return SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        inferer=inferer,
        key_val_metric={"val_mean_dice": MeanDice(**dice_args)},
        additional_metrics={
            "val_dice": MeanDice(reduction="mean_batch", **dice_args),
            "val_loss": IgniteMetricHandler(loss_fn=loss_function, output_transform=_pred_label),
        },
        amp=amp,
        decollate=False,
        prepare_batch=prepare_batch,
    )


def create_trainer(
    network: torch.nn.Module,
    loader: DataLoader,
    loss_function: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    device: torch.device,
    amp: bool,
) -> SupervisedTrainer:
    """MONAI's supervised trainer on whole patches (no sliding window), batches as plain tensors."""
    return SupervisedTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=SimpleInferer(),
        amp=amp,
        decollate=False,
        prepare_batch=prepare_batch,
    )
