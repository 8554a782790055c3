"""``attnunet bundle init``: a copy of the template bundle set up for your own dataset.

The template in ``attention_unet/`` beside this module has the MONAI model-zoo layout (``LICENSE``,
``configs/`` with ``metadata.json``, ``train.json``, ``inference.json``, ``evaluate.json``,
``multi_gpu_train.json``, ``multi_gpu_evaluate.json``, ``logging.conf``; ``docs/README.md`` and
``docs/data_license.txt``; ``models/``). :func:`init_bundle` writes a user's classes, preset,
channels and (optionally) patch size, spacing, CT window and dataset into a copy of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import look_up_option

from attnunet.pipelines.bundle.paths import bundle_template_dir
from attnunet.transforms.presets import PRESETS, build_transforms

__all__ = ["init_bundle"]

logger = logging.getLogger(__name__)

# Files and folders a run writes into a bundle; never copied from the template into a new bundle.
_RUN_OUTPUTS = ("data", "eval", "*.pt", "*.ts", "*.db", "mlruns", "mlartifacts", "__pycache__", "run")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_sizes(name: str, values: Sequence[float] | None, spatial_dims: int, kind: type) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != spatial_dims or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
        raise ValueError(
            f"{name} must be {spatial_dims} positive numbers (one per spatial dim), got {values}"
        )
    if kind is int and any(float(v) != int(v) for v in values):
        raise ValueError(f"{name} must be whole numbers of voxels, got {values}")
    return [kind(v) for v in values]


def _settings(
    name: str,
    classes: Sequence[str],
    preset: str,
    spatial_dims: int | None,
    in_channels: int | None,
) -> tuple[str, list[str], int, int]:
    """The checked name-independent settings: (preset, classes, spatial_dims, in_channels)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"bundle name {name!r} must start with a letter or digit and use only letters, digits, _ - ."
        )
    try:
        preset = look_up_option(preset, tuple(PRESETS))
    except ValueError as error:  # look_up_option's message spans lines and does not name the setting
        raise ValueError(f"preset: {' '.join(str(error).split())}") from None
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be at least two distinct names, background first, got {classes}")
    spatial_dims = PRESETS[preset].spatial_dims if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if spatial_dims != PRESETS[preset].spatial_dims:
        dims = ", ".join(f"{name} {p.spatial_dims}D" for name, p in PRESETS.items())
        raise ValueError(f"preset {preset!r} does not work with spatial_dims={spatial_dims} ({dims})")
    in_channels = PRESETS[preset].in_channels if in_channels is None else in_channels
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    return preset, classes, spatial_dims, in_channels


def init_bundle(
    name: str,
    directory: str | os.PathLike,
    *,
    classes: Sequence[str] = ("background", "organ", "lesion"),
    preset: str = "ct",
    roi_size: Sequence[int] | None = None,
    spatial_dims: int | None = None,
    pixdim: Sequence[float] | None = None,
    in_channels: int | None = None,
    data: str | os.PathLike | None = None,
    preset_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a MONAI bundle for your own dataset: the template with your classes and preprocessing.

    The new bundle ``directory/name`` runs with the same commands as the template. It is written in a
    temporary folder beside it and moved into place, so a failure leaves nothing behind; an existing
    folder is never overwritten.

    Args:
        name: the bundle's folder name (letters, digits, ``_``, ``-``, ``.``).
        directory: the folder to create the bundle in (created if missing).
        classes: class names, background first; the network gets one output channel per class.
        preset: ``"ct"``, ``"mr"`` or ``"image2d"`` (:func:`attnunet.transforms.presets.build_transforms`).
        roi_size: training patch and sliding-window size, one int per spatial dim; None: the plan's.
        spatial_dims: 2 or 3. Defaults to 2 for ``"image2d"`` and 3 otherwise.
        pixdim: voxel spacing to resample to (mm, one per spatial dim); None: the plan's.
        in_channels: image channels. Defaults to 3 for ``"image2d"`` and 1 otherwise.
        data: the dataset to train on by default; None keeps the embedded demo data.
        preset_kwargs: options of the preset, e.g. ``{"a_min": -200, "a_max": 300}`` for the CT window;
            None: the plan's.

    Returns:
        The new bundle's folder.

    Raises:
        FileExistsError: ``directory/name`` already exists.
        FileNotFoundError: ``data`` is given but does not exist.
        ValueError: a setting is invalid (names the setting and the rule).

    Example:
        >>> root = init_bundle("liver", "/tmp/bundles", classes=["background", "liver"])  # doctest: +SKIP
        >>> (root / "configs" / "train.json").is_file()  # doctest: +SKIP
        True
    """
    preset, classes, spatial_dims, in_channels = _settings(name, classes, preset, spatial_dims, in_channels)
    roi_size = _check_sizes("roi_size", roi_size, spatial_dims, int)
    pixdim = _check_sizes("pixdim", pixdim, spatial_dims, float)
    # The preset checks its own options (unknown names, an empty CT window, pixdim for 2D) before
    # anything is written; building a chain reads no file.
    build_transforms(preset, "infer", pixdim=pixdim, **dict(preset_kwargs or {}))
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"data {data} does not exist")
    target = Path(directory) / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another name or --dir (nothing was written)")
    configs = {f: _read_json(bundle_template_dir() / "configs" / f) for f in _EDITED}
    configs["train.json"].update(preset=preset, roi_size=roi_size, pixdim=pixdim)
    configs["train.json"]["preset_kwargs"] = dict(preset_kwargs or {})
    if data is not None:
        configs["train.json"]["data"] = str(Path(data).resolve())
    network = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=len(classes))
    configs["inference.json"]["network_def"].update(network)
    configs["evaluate.json"]["classes"] = classes
    _describe(configs["metadata.json"], name, classes, preset, roi_size or [32] * spatial_dims, in_channels)
    _write_bundle(target, configs)
    logger.info("wrote bundle %s (%s preset, %d classes)", target, preset, len(classes))
    return target


# The template's configs init_bundle writes settings into.
_EDITED = ("train.json", "inference.json", "evaluate.json", "metadata.json")


def _write_bundle(target: Path, configs: Mapping[str, dict]) -> None:
    """Copy the template to ``target`` with ``configs`` replacing its own, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        bundle = staging / target.name
        shutil.copytree(bundle_template_dir(), bundle, ignore=shutil.ignore_patterns(*_RUN_OUTPUTS))
        for name, content in configs.items():
            (bundle / "configs" / name).write_text(json.dumps(content, indent=4) + "\n")
        os.rename(bundle, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _describe(
    metadata: dict, name: str, classes: list[str], preset: str, roi_size: list[int], in_channels: int
) -> None:
    """Write the bundle's name, classes and network input/output into its metadata (in place)."""
    labels = {str(i): c for i, c in enumerate(classes)}
    metadata.update(
        name=name,
        task=f"Segmentation of {', '.join(classes[1:])} ({preset} preset)",
        data_source="your dataset, given with --data",
        label_classes="single channel integer labels: " + ", ".join(f"{i} {c}" for i, c in labels.items()),
        pred_classes=f"{len(classes)} channels of logits, one per class; argmax gives the label map",
        eval_metrics={},  # measured by nobody yet: no figure rather than a made-up one
    )
    data_format = metadata["network_data_format"]
    image = data_format["inputs"]["image"]
    described = PRESETS[preset]
    image.update(
        format=described.format, modality=described.modality, value_range=list(described.value_range)
    )
    image.update(
        num_channels=in_channels,
        spatial_shape=list(roi_size),
        channel_def={str(c): "image" if in_channels == 1 else f"channel {c}" for c in range(in_channels)},
    )
    pred = data_format["outputs"]["pred"]
    pred.update(num_channels=len(classes), spatial_shape=list(roi_size), channel_def=labels)
    if in_channels == 1 and preset != "ct":
        metadata["image_classes"] = f"single channel {described.modality} image"
    elif in_channels > 1:
        metadata["image_classes"] = f"{in_channels} channel image"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())
