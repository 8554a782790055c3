"""``attnunet plan``: fingerprint a dataset and choose the training settings from it, as nnU-Net does.

The fingerprint (:mod:`~attnunet.pipelines.planning.fingerprint`) reads every case's header and the
voxels of at most ``sample_cases`` cases; the rules (:mod:`~attnunet.pipelines.planning.rules`: target
spacing, patch, depth, batch, normalisation) turn it into settings. The plan is a JSON-ready dict whose
training fields carry :class:`TrainConfig`'s names (``preset``, ``pixdim``, ``roi_size``,
``batch_size``, ``network_kwargs``, ``preset_kwargs``, ``sw_batch_size``, ``overlap``), so
``attnunet train`` applies it field by field.

Any field can be overridden (``overrides``, ``--set KEY=VALUE``); fields derived from an overridden one
follow it (overriding ``pixdim`` re-derives the resampled shapes, the patch and the batch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnunet.atomic import atomic_output
from attnunet.defaults import OVERLAP
from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.data.validation import check_class_values, declared_channels, validate_items
from attnunet.pipelines.planning.fields import PLAN_FIELDS, PLAN_FORMAT, TRAIN_FIELDS

# Imported "as" themselves: constants that lived here before the split, re-exported.
from attnunet.pipelines.planning.fingerprint import (
    FOREGROUND_SAMPLE_PER_CASE as FOREGROUND_SAMPLE_PER_CASE,
)
from attnunet.pipelines.planning.fingerprint import (
    channel_names,
    class_frequencies,
    voxel_statistics,
)
from attnunet.pipelines.planning.rules import ANISOTROPY_RATIO as ANISOTROPY_RATIO
from attnunet.pipelines.planning.rules import DATASET_SHARE_PER_BATCH as DATASET_SHARE_PER_BATCH
from attnunet.pipelines.planning.rules import FLOATS_PER_VOXEL_AND_FEATURE as FLOATS_PER_VOXEL_AND_FEATURE
from attnunet.pipelines.planning.rules import MAX_DEPTH as MAX_DEPTH
from attnunet.pipelines.planning.rules import MIN_BOTTOM_VOXELS as MIN_BOTTOM_VOXELS
from attnunet.pipelines.planning.rules import (
    bytes_per_voxel,
    cap_2d_patch,
    choose_patch,
    choose_preset,
    mirror_axes,
    network_kwargs,
    normalisation,
    patches_per_batch,
    pool_and_kernel_sizes,
    reorients,
    slice_axis,
    sliding_window_batch,
    step_memory_bytes,
    target_spacing,
)
from attnunet.transforms.headers import ImageHeader

__all__ = [
    "PLAN_FORMAT",
    "PLAN_FIELDS",
    "plan_dataset",
    "plan_options",
    "TRAIN_FIELDS",
    "PlannedOptions",
    "save_plan",
    "load_plan",
    "format_plan",
]


def plan_dataset(
    data: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    sample_cases: int = 20,
    step_memory_gb: float | None = None,
    device: str | None = None,
    seed: int = 0,
    check_values: bool = True,
) -> dict[str, Any]:
    """Fingerprint the dataset at ``data`` and plan its training (:mod:`attnunet.pipelines.planning.rules`).

    Args:
        data: a dataset :func:`attnunet.pipelines.data.datasets.discover_dataset` understands.
        overrides: values for any of ``PLAN_FIELDS``; fields derived from them are re-derived.
        sample_cases: at most this many cases (spread over the dataset) are decoded for voxel statistics.
        step_memory_gb: memory one training step may use; None: 80% of the GPU's, 4 GiB on a CPU.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None picks CUDA when available. It sets the memory
            budget and the width (32 features on a GPU, 16 on a CPU).
        seed: seed of the intensity sample.
        check_values: decode every case for the checks ``attnunet train`` makes (NaN or infinite voxels,
            truncated files, label values outside the classes); False checks the classes and headers only
            (``train`` plans with False: it decodes every case itself before the first epoch).

    Returns:
        The plan, a JSON-ready dict.

    Raises:
        DataValidationError: (a ``ValueError``) what ``attnunet train`` refuses, with the same message
            (:func:`~attnunet.pipelines.data.validation.validate_items`: a case without a label, cases of
            mixed kinds or modalities, a label on another grid than its image, unreadable or corrupt files,
            NaN or infinite voxels; class values that are not 0..K-1), or an empty folder.
        ValueError: an unknown override or a bad argument.

    Example:
        >>> plan = plan_dataset("Task04_Hippocampus")  # doctest: +SKIP
        >>> plan["roi_size"], plan["network_kwargs"]  # doctest: +SKIP
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
    # train's own checks (every case labelled, of one kind, on its label's grid...): a plan is only made for
    # data train accepts
    check_class_values(str(data), index.labels)
    headers = validate_items(
        index.items, labels=index.labels, check_values=check_values, **declared_channels(index)
    )
    reorient = reorients([h.affine for h in headers])
    stats = voxel_statistics(index, int(sample_cases), len(index.labels), seed, world=reorient)
    preset, preset_source = choose_preset(index, stats.darkest, overrides)
    geometry, resampled = _geometry([h.oriented() if reorient else h for h in headers], overrides)
    spacing = geometry["pixdim"] or [1.0] * resampled.shape[1]  # 2D pictures: square pixels
    training, memory = _training(
        geometry["median_shape"], spacing, resampled, overrides, device, step_memory_gb
    )
    scheme, preset_kwargs = normalisation(preset, stats.intensities, channel_names(index))
    if geometry["pixdim"] and (axes := mirror_axes(stats.class_offsets, geometry["pixdim"])) != [0, 1, 2]:
        preset_kwargs["flip_axes"] = axes
    if geometry["pixdim"] and not reorient:
        preset_kwargs["reorient"] = False
    return {
        "format": PLAN_FORMAT,
        "dataset": str(index.root),
        "layout": index.layout,
        "cases": len(index.items),
        "modality": index.modality,
        "channels": headers[0].channels,
        "spatial_dims": len(headers[0].spatial_shape),
        "preset": preset,
        "preset_source": preset_source,
        **geometry,
        **training,
        "normalisation": scheme,
        "preset_kwargs": dict(overrides.get("preset_kwargs", preset_kwargs)),
        "classes": class_frequencies(index.labels, stats.counts),
        "regions": None if index.regions is None else index.regions.to_dict(),
        "device": device,
        **memory,
        "sampled_cases": stats.cases,
        "overrides": sorted(overrides),
    }


def _geometry(
    headers: Sequence[ImageHeader], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], np.ndarray]:
    """The plan's spacing and shape fields, and every case's shape after resampling (one row per case),
    in the axis order the presets resample in (RAS, or the stored one where they do not reorient)."""
    spacings = np.array([h.spacing for h in headers])
    shapes = np.array([h.spatial_shape for h in headers], dtype=float)
    median_spacing = [round(float(s), 4) for s in np.median(spacings, axis=0)]
    # 2D images carry no spacing to resample to (they keep each image's own)
    pixdim = overrides.get("pixdim", target_spacing(spacings) if shapes.shape[1] == 3 else None)
    resampled = shapes * spacings / np.asarray(pixdim if pixdim is not None else median_spacing, dtype=float)
    fields = {
        "median_spacing": median_spacing,
        "pixdim": None if pixdim is None else [float(p) for p in pixdim],
        "median_shape": [int(round(s)) for s in np.median(resampled, axis=0)],
        "shape_range": [
            [int(v) for v in np.min(resampled, 0).round()],
            [int(v) for v in np.max(resampled, 0).round()],
        ],
    }
    return fields, resampled


def _in_plane(spacing: Sequence[float], sliced: int | None) -> list[float]:
    """The spacing the pooling and kernel rules see: a 2D configuration's slice axis as infinitely coarse,
    so it is neither pooled nor convolved across, and its thickness does not stop the in-plane pooling
    (CHAOS' 7.7 mm slices would otherwise end a 1.25 mm plane's pooling at 16 mm, after three levels)."""
    return [math.inf if axis == sliced else float(s) for axis, s in enumerate(spacing)]


def _training(
    median_shape: Sequence[int],
    spacing: Sequence[float],
    resampled: np.ndarray,
    overrides: Mapping[str, Any],
    device: str,
    step_memory_gb: float | None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The plan's network, patch and batch fields, and its memory fields (budget, estimate per step)."""
    spatial_dims = resampled.shape[1]
    init_features = int(overrides.get("init_features", 32 if device.startswith("cuda") else 16))
    budget = step_memory_bytes(step_memory_gb, device)
    roi_size = overrides.get("roi_size")
    sliced = slice_axis(median_shape, spacing, on_cpu=not device.startswith("cuda"))
    crops = None
    if roi_size is None:
        shape = [1 if axis == sliced else s for axis, s in enumerate(median_shape)]
        roi_size = choose_patch(
            shape, _in_plane(spacing, sliced), overrides.get("depth"), init_features, budget
        )
        # a 2D configuration's patches are 2D: on a CPU they are capped as 2D images' are
        roi_size, crops = cap_2d_patch(
            roi_size, 2 if sliced is not None else spatial_dims, device, slices=sliced is not None
        )
    roi_size = [int(r) for r in roi_size]
    # one slice thick along one axis (the rule's, or a given roi_size such as [256, 256, 1]): 2D configuration
    ones = [axis for axis, r in enumerate(roi_size) if r == 1]
    sliced = ones[0] if spatial_dims == 3 and len(ones) == 1 else None
    pools, kernels = pool_and_kernel_sizes(roi_size, _in_plane(spacing, sliced), overrides.get("depth"))
    per_sample = math.prod(roi_size) * bytes_per_voxel(init_features, pools)
    patches = patches_per_batch(roi_size, per_sample, float(np.sum(np.prod(resampled, axis=1))), budget)
    num_samples = int(overrides.get("num_samples", crops or 2))
    # on a CPU the step time limits training: one image's crops per step, as measured on DRIVE
    batch_size = int(overrides.get("batch_size", 1 if crops else max(1, patches // num_samples)))
    fields = {
        "configuration": "3d" if spatial_dims == 3 and sliced is None else "2d",
        "slice_axis": sliced,
        "roi_size": roi_size,
        "depth": len(pools),
        "init_features": init_features,
        "network_kwargs": network_kwargs(pools, kernels, init_features, device),
        "batch_size": batch_size,
        "num_samples": num_samples,
        "sw_batch_size": int(overrides.get("sw_batch_size", sliding_window_batch(per_sample, budget))),
        "overlap": float(overrides.get("overlap", OVERLAP)),
    }
    memory = {
        "step_memory_gb": round(budget / 2**30, 2),
        "estimated_gb_per_step": round(batch_size * num_samples * per_sample / 2**30, 3),
    }
    return fields, memory


@dataclass(frozen=True)
class PlannedOptions:
    """The part of a :class:`~attnunet.pipelines.engines.config.TrainConfig` a plan sets: ``TRAIN_FIELDS``
    and the network's and the preset's keyword arguments."""

    preset: str
    pixdim: Sequence[float] | None
    roi_size: Sequence[int]
    batch_size: int
    num_samples: int
    sw_batch_size: int
    overlap: float
    network_kwargs: Mapping[str, Any]
    preset_kwargs: Mapping[str, Any]

    def under(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``TrainConfig`` keyword arguments: ``options`` over these, ``network_kwargs`` and
        ``preset_kwargs`` key by key; the plan's preset options are dropped when ``options`` choose another
        preset, and its ``attention_levels`` when they choose ``attention="none"`` (no block to place)."""
        planned_preset = {} if options.get("preset", self.preset) != self.preset else dict(self.preset_kwargs)
        chosen = dict(options.get("network_kwargs", {}))
        network = {**self.network_kwargs, **chosen}
        if chosen.get("attention") == "none" and "attention_levels" not in chosen:
            network.pop("attention_levels", None)
        fields = {name: getattr(self, name) for name in TRAIN_FIELDS}
        return {
            **fields,
            **options,
            "network_kwargs": network,
            "preset_kwargs": {**planned_preset, **options.get("preset_kwargs", {})},
        }


def plan_options(plan: Mapping[str, Any], network_parameters: Sequence[str] = ()) -> PlannedOptions:
    """The :class:`~attnunet.pipelines.engines.config.TrainConfig` options ``plan`` sets.

    Args:
        plan: a plan from :func:`plan_dataset` or :func:`load_plan`.
        network_parameters: the keyword arguments the chosen network accepts; the plan's depth and width
            are passed only to a network that takes ``depth`` and ``init_features``.
    """
    return PlannedOptions(
        **{name: plan[name] for name in TRAIN_FIELDS},
        network_kwargs={k: v for k, v in plan["network_kwargs"].items() if k in network_parameters},
        preset_kwargs=dict(plan["preset_kwargs"]),
    )


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


def _configuration(plan: Mapping[str, Any]) -> str:
    if plan.get("slice_axis") is not None:
        return f"2D slices of the 3D volumes, along axis {plan['slice_axis']}, predicted slice by slice"
    return "2D" if plan["spatial_dims"] == 2 else "3D"


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
        ("configuration", _configuration(plan)),
        ("patch", plan["roi_size"]),
        ("network", f"depth {plan['depth']}, {plan['init_features']} features"),
        ("pooling per level", plan["network_kwargs"].get("pool_sizes", f"2 on every axis x {plan['depth']}")),
        ("kernels per level", plan["network_kwargs"].get("kernel_sizes", "3 on every axis")),
        ("batch", f"{plan['batch_size']} images x {plan['num_samples']} patches"),
        ("sliding window", f"{plan['sw_batch_size']} windows, overlap {plan['overlap']}"),
        ("normalisation", plan["normalisation"]["scheme"]),
        *((f"  channel {i}", text) for i, text in enumerate(plan["normalisation"].get("channels", []))),
        ("preset options", plan["preset_kwargs"] or "-"),
        (
            "memory",  # memory_budget_gb: the field's name in plans written before step_memory_gb
            f"{plan['estimated_gb_per_step']} GiB per step of "
            f"{plan.get('step_memory_gb', plan.get('memory_budget_gb'))} ({plan['device']})",
        ),
    ]
    rows += [
        (f"class {key}", f"{c['name']}: {100 * c['frequency']:.3f}% of voxels")
        for key, c in plan["classes"].items()
    ]
    regions = plan.get("regions")  # None, or absent from a plan written before regions were trained
    if regions:
        rows += [
            (
                f"region {name}",
                f"labels {', '.join(map(str, values))}: one sigmoid output, written as {value}",
            )
            for name, values, value in zip(
                regions["names"], regions["values"], regions["class_order"], strict=True
            )
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
