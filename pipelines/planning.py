"""``attnunet plan``: fingerprint a dataset and choose the training settings from it, as nnU-Net does.

Every case's header is read (shape, spacing, channels); voxel statistics (intensities, class
frequencies) come from at most ``sample_cases`` cases spread over the dataset, so a 1,000-case CT set
plans in minutes. The plan is a JSON-ready dict whose training fields carry :class:`TrainConfig`'s
names (``preset``, ``pixdim``, ``roi_size``, ``batch_size``, ``network_kwargs``, ``preset_kwargs``,
``sw_batch_size``, ``overlap``), so ``attnunet train`` applies it field by field.

The rules (nnU-Net's, Isensee et al. 2021, adapted to a network that pools every axis together):

- target spacing: the median spacing per axis; when the coarsest axis is more than 3x the finest
  (anisotropic data), that axis takes the 10th percentile of its spacings instead;
- patch: the median shape after resampling, each axis rounded up to a multiple of ``2**depth``, where
  ``depth`` pools while the smallest axis keeps at least 4 voxels (at most 5 levels); the largest
  axis is shrunk while one training sample would not fit the memory budget;
- batch: as many patches as the memory budget holds, at least 2, at most the number covering 5% of
  the dataset's voxels (nnU-Net's cap);
- normalisation: CT clips to the 0.5 / 99.5 percentiles of the foreground intensities (the CT preset's
  window, scaled to [0, 1]); MR is z-scored per case, 2D images scaled to [0, 1] per channel.

Any field can be overridden (``overrides``, ``--set KEY=VALUE``); fields derived from an overridden one
follow it (overriding ``pixdim`` re-derives the resampled shapes, the patch and the batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnunet.atomic import atomic_output, refuse_existing
from attnunet.cli import key_values
from attnunet.pipelines.datasets import DatasetIndex, discover_dataset
from attnunet.pipelines.files import innermost_cause
from attnunet.pipelines.validation import DataValidationError
from attnunet.transforms.headers import binary_mask, loader_for, read_header

__all__ = [
    "PLAN_FORMAT",
    "PLAN_FIELDS",
    "plan_dataset",
    "plan_options",
    "TRAIN_FIELDS",
    "save_plan",
    "load_plan",
    "format_plan",
    "add_arguments",
    "run",
]

PLAN_FORMAT = "attnunet-plan/1"
# Fields a user may override, in the order the table prints them.
PLAN_FIELDS = (
    "preset",
    "pixdim",
    "roi_size",
    "depth",
    "init_features",
    "batch_size",
    "num_samples",
    "sw_batch_size",
    "overlap",
    "preset_kwargs",
)
ANISOTROPY_RATIO = 3.0  # nnU-Net's threshold for treating the coarsest axis separately
MIN_BOTTOM_VOXELS = 4  # the coarsest feature map keeps at least this many voxels per axis
MAX_DEPTH = 5
DATASET_SHARE_PER_BATCH = 0.05  # nnU-Net: one batch covers at most 5% of the dataset's voxels
FOREGROUND_SAMPLE_PER_CASE = 10_000
# Floats kept per voxel and per feature channel by one training step of AttentionUNet at full
# resolution (convolution, norm and activation outputs of the stem and the last decoder stage, their
# gradients, Adam's moments are per parameter and negligible); coarser levels add a geometric series.
# An estimate from the layer list, not a measurement: it errs on the large side.
FLOATS_PER_VOXEL_AND_FEATURE = 24
MR_WORDS = ("MR", "MRI", "T1", "T2", "FLAIR", "ADC", "DWI", "PD")


def _declared_preset(index: DatasetIndex) -> str | None:
    """The preset the dataset's own description implies (``"ct"``, ``"mr"``, ``"image2d"``, or the
    declared name when it is none of them), or None when it says nothing."""
    if index.modality == "image2d":
        return "image2d"
    channels = [c.strip().upper() for c in index.modality.split("+") if c.strip()]
    if not channels:
        return None
    kinds = {"ct" if c == "CT" else "mr" if any(w in c for w in MR_WORDS) else c for c in channels}
    if len(kinds) > 1:
        raise DataValidationError(
            f"{index.root}: dataset.json declares channels of different modalities ({index.modality}); "
            "one preset normalises every channel the same way, so plan CT and MR channels separately"
        )
    return kinds.pop()


def _headers(index: DatasetIndex) -> list[Any]:
    missing = [item["image"] for item in index.items if not item.get("label")]
    if missing:
        raise DataValidationError(
            [
                f"{image}: this case has no label; planning needs every training case labelled"
                for image in missing
            ]
        )
    headers, problems = [], []
    for item in index.items:
        try:
            headers.append(read_header(item["image"]))
        except (ValueError, FileNotFoundError) as error:
            problems.append(str(error))
    if problems:
        raise DataValidationError(problems)
    ranks = {len(h.spatial_shape) for h in headers}
    channels = {h.channels for h in headers}
    if len(ranks) > 1 or len(channels) > 1:
        first = headers[0]
        odd = next(
            h
            for h in headers
            if (len(h.spatial_shape), h.channels) != (len(first.spatial_shape), first.channels)
        )
        raise DataValidationError(
            f"{odd.path} has {len(odd.spatial_shape)} spatial dims and {odd.channels} channel(s) but "
            f"{first.path} has {len(first.spatial_shape)} and {first.channels}: the dataset mixes "
            "modalities or image kinds; plan and train each kind separately"
        )
    return headers


def _target_spacing(spacings: np.ndarray) -> list[float]:
    target = np.median(spacings, axis=0)
    coarsest = int(np.argmax(target))
    others = np.delete(target, coarsest)
    if others.size and target[coarsest] > ANISOTROPY_RATIO * others.min():
        target[coarsest] = np.percentile(spacings[:, coarsest], 10)
    return [round(float(s), 4) for s in target]


def _depth_for(shape: Sequence[int]) -> int:
    return int(max(1, min(MAX_DEPTH, math.floor(math.log2(min(shape) / MIN_BOTTOM_VOXELS)))))


def _round_up(shape: Sequence[float], multiple: int) -> list[int]:
    return [int(math.ceil(s / multiple) * multiple) for s in shape]


def _bytes_per_voxel(init_features: int, spatial_dims: int, depth: int) -> float:
    levels = sum(2.0**level / 2.0 ** (spatial_dims * level) for level in range(depth + 1))
    return 4.0 * FLOATS_PER_VOXEL_AND_FEATURE * init_features * levels


def _memory_budget_bytes(memory_budget_gb: float | None, device: str) -> int:
    if memory_budget_gb is not None:
        if not memory_budget_gb > 0:
            raise ValueError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
        return int(memory_budget_gb * 2**30)
    if device.startswith("cuda"):
        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return 4 * 2**30  # on a CPU the step time, not the memory, limits the batch


def _voxel_statistics(
    index: DatasetIndex, sample_cases: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Foreground intensities (a bounded random sample per case), voxel counts per class, cases read."""
    positions = np.unique(np.linspace(0, len(index.items) - 1, min(sample_cases, len(index.items))).round())
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_classes, dtype=np.int64)
    foreground: list[np.ndarray] = []
    for position in positions.astype(int):
        item = index.items[position]
        try:
            image = np.asarray(loader_for(item["image"])(item["image"]), dtype=np.float32)
            label = np.asarray(loader_for(item["label"], mask=True)(item["label"]))
        except Exception as error:  # MONAI wraps the reader's error; report the file and the cause
            raise DataValidationError(
                f"{item['image']} or its label {item['label']} cannot be read: {innermost_cause(error)}"
            ) from None
        if index.modality == "image2d":  # 2D masks are binary, often stored as 0/255
            label = binary_mask(label)
        values = np.unique(label).astype(int)
        unknown = [int(v) for v in values if not 0 <= v < num_classes]
        if unknown:
            raise DataValidationError(
                f"{item['label']}: label values {unknown} are not among the declared classes "
                f"0..{num_classes - 1}"
            )
        counts += np.bincount(label.astype(np.int64).ravel(), minlength=num_classes)[:num_classes]
        mask = label > 0
        if image.ndim > mask.ndim:  # channels last (2D RGB): one intensity per channel and voxel
            picked = image[mask].ravel()
        else:
            picked = image[mask] if image.shape == mask.shape else image.ravel()
        if picked.size:
            foreground.append(rng.choice(picked, min(picked.size, FOREGROUND_SAMPLE_PER_CASE), replace=False))
    intensities = np.concatenate(foreground) if foreground else np.zeros(1, dtype=np.float32)
    return intensities, counts, len(positions)


def plan_dataset(
    data: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    sample_cases: int = 20,
    memory_budget_gb: float | None = None,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fingerprint the dataset at ``data`` and plan its training (see the module docstring for the rules).

    Args:
        data: a dataset :func:`attnunet.pipelines.datasets.discover_dataset` understands.
        overrides: values for any of ``PLAN_FIELDS``; fields derived from them are re-derived.
        sample_cases: at most this many cases (spread over the dataset) are decoded for voxel statistics.
        memory_budget_gb: memory one training step may use; None: 80% of the GPU's, 4 GiB on a CPU.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None picks CUDA when available. It sets the memory
            budget and the width (32 features on a GPU as the reference document, 16 on a CPU).
        seed: seed of the intensity sample.

    Returns:
        The plan, a JSON-ready dict.

    Raises:
        DataValidationError: (a ``ValueError``) an empty folder, a case without a label, cases of mixed
            kinds or modalities, label values outside the declared classes, unreadable headers.
        ValueError: an unknown override or a bad argument.

    Example:
        >>> plan = plan_dataset("Task04_Hippocampus")  # doctest: +SKIP
        >>> plan["roi_size"], plan["network_kwargs"]
        ([40, 56, 40], {'depth': 3, 'init_features': 16})
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PLAN_FIELDS))
    if unknown:
        raise ValueError(
            f"plan: cannot override {unknown}; the fields that can be are {', '.join(PLAN_FIELDS)}"
        )
    if int(sample_cases) < 1:
        raise ValueError(f"sample_cases must be >= 1, got {sample_cases}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = discover_dataset(data)
    headers = _headers(index)
    spatial_dims = len(headers[0].spatial_shape)
    num_classes = len(index.labels)
    intensities, counts, sampled_cases = _voxel_statistics(index, int(sample_cases), num_classes, seed)

    declared = _declared_preset(index)
    guessed = "ct" if float(np.percentile(intensities, 0.5)) < -500 else "mr"  # air is -1000 HU
    if declared not in (None, "ct", "mr", "image2d") and "preset" not in overrides:
        raise DataValidationError(
            f"{index.root}: modality {index.modality!r} is neither CT nor MR; pass --set preset=ct or "
            "--set preset=mr to say how its intensities should be normalised"
        )
    preset = overrides.get("preset", declared or guessed)
    preset_source = "override" if "preset" in overrides else ("dataset" if declared else "intensities")

    spacings = np.array([h.spacing for h in headers])
    shapes = np.array([h.spatial_shape for h in headers], dtype=float)
    median_spacing = [round(float(s), 4) for s in np.median(spacings, axis=0)]
    pixdim = overrides.get("pixdim", _target_spacing(spacings) if spatial_dims == 3 else None)
    target = np.asarray(pixdim if pixdim is not None else median_spacing, dtype=float)
    resampled = shapes * spacings / target
    median_shape = [int(round(s)) for s in np.median(resampled, axis=0)]

    init_features = int(overrides.get("init_features", 32 if device.startswith("cuda") else 16))
    budget = _memory_budget_bytes(memory_budget_gb, device)
    roi_size = overrides.get("roi_size")
    depth = overrides.get("depth")
    if roi_size is None:
        patch = [float(s) for s in median_shape]
        while True:
            levels = depth or _depth_for(patch)
            candidate = _round_up(patch, 2**levels)
            if 2 * math.prod(candidate) * _bytes_per_voxel(init_features, spatial_dims, levels) <= budget:
                break
            largest = int(np.argmax(patch))
            if patch[largest] <= 2 ** (levels + 1):
                break
            patch[largest] *= 0.9
        roi_size = candidate
    roi_size = [int(r) for r in roi_size]
    depth = int(depth or _depth_for(roi_size))
    per_sample = math.prod(roi_size) * _bytes_per_voxel(init_features, spatial_dims, depth)
    dataset_voxels = float(np.sum(np.prod(resampled, axis=1)))
    cap = max(2, int(DATASET_SHARE_PER_BATCH * dataset_voxels / math.prod(roi_size)))
    patches = max(2, min(cap, int(budget // per_sample)))
    num_samples = int(overrides.get("num_samples", 2))
    batch_size = int(overrides.get("batch_size", max(1, patches // num_samples)))
    # inference keeps no activations for backward: about a third of the training step's per voxel
    sw_batch_size = int(overrides.get("sw_batch_size", max(1, min(8, int(3 * budget // per_sample)))))

    network_kwargs: dict[str, Any] = {"depth": depth, "init_features": init_features}
    if not device.startswith("cuda") and depth > 1:
        # non-local attention at 1/2 resolution costs more than the rest of the network on a CPU
        # (benchmarks/README.md); the coarser levels keep it
        network_kwargs["attention_levels"] = list(range(2, depth + 1))
    if preset == "ct":
        low, high = (float(v) for v in np.percentile(intensities, [0.5, 99.5]))
        normalisation = {
            "scheme": "CT window: clip to the foreground's 0.5 / 99.5 percentiles, scale to [0, 1]",
            "percentile_00_5": round(low, 2),
            "percentile_99_5": round(high, 2),
            "mean": round(float(intensities.mean()), 2),
            "std": round(float(intensities.std()), 2),
        }
        preset_kwargs = {"a_min": round(low, 2), "a_max": round(high, 2)}
    elif preset == "image2d":
        normalisation = {"scheme": "each image scaled to [0, 1] per channel (min / max)"}
        preset_kwargs = {}
    else:
        normalisation = {"scheme": "z-score per case (and channel) over its nonzero voxels"}
        preset_kwargs = {}
    preset_kwargs = dict(overrides.get("preset_kwargs", preset_kwargs))

    total = max(int(counts.sum()), 1)
    classes = {
        key: {"name": name, "frequency": round(float(counts[int(key)]) / total, 6)}
        for key, name in index.labels.items()
    }
    return {
        "format": PLAN_FORMAT,
        "dataset": str(index.root),
        "layout": index.layout,
        "cases": len(index.items),
        "modality": index.modality,
        "channels": headers[0].channels,
        "spatial_dims": spatial_dims,
        "preset": preset,
        "preset_source": preset_source,
        "median_spacing": median_spacing,
        "pixdim": None if pixdim is None else [float(p) for p in pixdim],
        "median_shape": median_shape,
        "shape_range": [
            [int(v) for v in np.min(resampled, 0).round()],
            [int(v) for v in np.max(resampled, 0).round()],
        ],
        "roi_size": roi_size,
        "depth": depth,
        "init_features": init_features,
        "network_kwargs": network_kwargs,
        "batch_size": batch_size,
        "num_samples": num_samples,
        "sw_batch_size": sw_batch_size,
        "overlap": float(overrides.get("overlap", 0.5)),
        "normalisation": normalisation,
        "preset_kwargs": preset_kwargs,
        "classes": classes,
        "device": device,
        "memory_budget_gb": round(budget / 2**30, 2),
        "estimated_gb_per_step": round(batch_size * num_samples * per_sample / 2**30, 3),
        "sampled_cases": sampled_cases,
        "overrides": sorted(overrides),
    }


# TrainConfig fields a plan sets (the rest keep their defaults or the user's values).
TRAIN_FIELDS = ("preset", "pixdim", "roi_size", "batch_size", "num_samples", "sw_batch_size", "overlap")


def plan_options(plan: Mapping[str, Any], network_parameters: Sequence[str] = ()) -> dict[str, Any]:
    """The :class:`~attnunet.pipelines.training.TrainConfig` options ``plan`` sets.

    Args:
        plan: a plan from :func:`plan_dataset` or :func:`load_plan`.
        network_parameters: the keyword arguments the chosen network accepts; the plan's depth and width
            are passed only to a network that takes ``depth`` and ``init_features``.
    """
    options: dict[str, Any] = {name: plan[name] for name in TRAIN_FIELDS}
    options["preset_kwargs"] = dict(plan["preset_kwargs"])
    network_kwargs = {k: v for k, v in plan["network_kwargs"].items() if k in network_parameters}
    options["network_kwargs"] = network_kwargs
    return options


def save_plan(plan: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``plan`` as JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def load_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read a plan written by :func:`save_plan`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not JSON or not an attnunet plan.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plan {path} does not exist; write one with 'attnunet plan DATA'")
    try:
        plan = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"plan {path} is not JSON: {error}") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"{path} is not an attnunet plan (format {PLAN_FORMAT!r}); write one with 'attnunet plan'"
        )
    return plan


def format_plan(plan: Mapping[str, Any]) -> str:
    """The plan as a two-column text table."""
    rows = [
        (
            "dataset",
            f"{plan['dataset']} ({plan['cases']} cases, {plan['layout']}, {plan['sampled_cases']} sampled)",
        ),
        ("modality / preset", f"{plan['modality'] or '?'} -> {plan['preset']} ({plan['preset_source']})"),
        ("median spacing", plan["median_spacing"]),
        ("target spacing", plan["pixdim"] if plan["pixdim"] is not None else "keep each image's"),
        ("median shape", plan["median_shape"]),
        ("patch", plan["roi_size"]),
        ("network", f"depth {plan['depth']}, {plan['init_features']} features"),
        ("batch", f"{plan['batch_size']} images x {plan['num_samples']} patches"),
        ("sliding window", f"{plan['sw_batch_size']} windows, overlap {plan['overlap']}"),
        ("normalisation", plan["normalisation"]["scheme"]),
        ("preset options", plan["preset_kwargs"] or "-"),
        (
            "memory",
            f"{plan['estimated_gb_per_step']} GiB per step of {plan['memory_budget_gb']} ({plan['device']})",
        ),
    ]
    rows += [
        (f"class {key}", f"{c['name']}: {100 * c['frequency']:.3f}% of voxels")
        for key, c in plan["classes"].items()
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset: MSD folder with dataset.json, image/label folders, CSV")
    parser.add_argument(
        "--output", default="plan.json", help="where to write the plan (default: ./plan.json)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. roi_size=[64,64,32]",
    )
    parser.add_argument("--sample-cases", type=int, default=20, help="cases decoded for voxel statistics")
    parser.add_argument("--memory-budget-gb", type=float, default=None, help="memory a training step may use")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plan file")


def run(args: argparse.Namespace) -> int:
    refuse_existing([args.output], args.overwrite)  # before the (long) planning, not after
    plan = plan_dataset(
        args.data,
        overrides=key_values(args.set, "--set"),
        sample_cases=args.sample_cases,
        memory_budget_gb=args.memory_budget_gb,
        device=args.device,
    )
    print(format_plan(plan))
    print(f"plan written to {save_plan(plan, args.output)}")
    return 0
