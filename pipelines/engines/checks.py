"""What a training run checks and settles before its first epoch and before its MLflow run exists, so a
refused run changes nothing: the output folder, the classes, every case's files (dimensions and channels
included), the network a resumed checkpoint was trained with, and a patch no larger than the images need.

Patch size: a ``roi_size`` axis larger than the largest training image (after orientation and
resampling, padded to the network's multiple, :func:`attnunet.roi.fit_roi`) is clamped to that size with
one warning, because beyond it every patch and validation window only adds zeros at the cost of its
volume (256^3 on 64 x 64 x 32 images ran for over 15 minutes). The bound is the largest image,
not the smallest: the planner's patch is the median image rounded up, which smaller images are padded to,
and that is kept. The clamped size is what the config and the checkpoint record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import set_determinism
from nibabel.orientations import io_orientation
from torch import nn

from attnunet.pipelines.data.datasets import DatasetIndex, discover_dataset
from attnunet.pipelines.data.validation import check_class_values, declared_channels, validate_items
from attnunet.pipelines.engines.config import TrainConfig, resolve_config
from attnunet.roi import fit_roi
from attnunet.spec import ModelSpec
from attnunet.transforms.headers import ImageHeader

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PreparedRun",
    "check_output",
    "prepare_run",
    "resampled_sizes",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# One JSON record per finished epoch, beside the checkpoints, whatever the tracking store does.
METRICS_FILE = "metrics.jsonl"
# The resolved config's record of options changed on --resume: {epoch resumed after: {option: new value}},
# so MLflow keeps the run's first parameters and gets each change as "resumed.<epoch>.<option>".
RESUMED = "resumed"
# Options that choose the validation cases: changed on resume, cases trained on would be validated on.
SPLIT_OPTIONS = ("seed", "val_fraction")


@dataclass
class PreparedRun:
    """A run's settled parts: the config (``roi_size`` fitted), classes, cases, resolved config, spec and
    the network built from it."""

    config: TrainConfig
    labels: dict[str, str]
    items: list[dict[str, str]]
    resolved: dict[str, Any]
    spec: ModelSpec
    network: nn.Module


def check_output(output: Path, resume: bool) -> Path:
    """The run's ``last.pt``; refuses an output that holds another run (unless resuming) or none to resume."""
    last = output / CHECKPOINT_DIR / "last.pt"
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} does not exist; train without --resume first")
        return last
    if last.exists() or (output / CHECKPOINT_DIR / "best.pt").exists():
        raise FileExistsError(
            f"{output} already holds a training run ({last}); pass --resume to continue it "
            "or choose another --output"
        )
    if _stopped_before_a_checkpoint(output):
        logger.info("%s holds a run that stopped before its first checkpoint; starting it again", output)
        return last
    for name in (CONFIG_FILE, METRICS_FILE):  # someone's file, or a run into another folder
        if (output / name).exists():
            raise FileExistsError(
                f"{output / name} already exists and would be overwritten; choose another --output "
                "or move that file away"
            )
    return last


def _stopped_before_a_checkpoint(output: Path) -> bool:
    """Whether ``output``'s config file is a run's own, written for this very folder: a run that failed or
    was killed before its first ``last.pt``, which its rerun replaces (with its metrics file)."""
    try:
        saved = json.loads((output / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(saved, dict) and saved.get("output") == str(output.resolve())


def _checked_labels(config: TrainConfig, index: DatasetIndex) -> dict[str, str]:
    """The dataset's classes (0..K-1, :func:`check_class_values`), checked against ``out_channels``."""
    labels = dict(index.labels)
    check_class_values(config.data, labels)
    out_channels = config.out_channels or len(labels)
    if out_channels == 1 and len(labels) != 2:
        raise ValueError(
            f"out_channels=1 (one binary output) needs exactly 2 classes, {config.data} has {labels}"
        )
    if out_channels not in (1, len(labels)):
        raise ValueError(
            f"out_channels must be 1 or the number of classes ({len(labels)}), got {out_channels}"
        )
    return labels


def resampled_sizes(headers: Sequence[ImageHeader], pixdim: Sequence[float] | None) -> np.ndarray:
    """Each image's spatial size (one row per image) after the presets turn it to RAS and resample it to
    ``pixdim`` (None: each image keeps its spacing)."""
    rows = []
    for header in headers:
        # stored axis j becomes RAS axis ras[j] (Orientationd), then is resampled along it (Spacingd)
        ras = io_orientation(header.affine)[:, 0].astype(int)
        size = np.zeros(len(header.spatial_shape))
        for j, k in enumerate(ras):
            scale = header.spacing[j] / pixdim[k] if pixdim is not None else 1.0
            size[k] = header.spatial_shape[j] * scale
        rows.append(size)
    return np.rint(np.asarray(rows)).astype(int)


def _model_spec(config: TrainConfig, resolved: dict[str, Any], resumed: dict[str, Any] | None) -> ModelSpec:
    """The spec of the network the options give; a resumed run must have been trained with it."""
    resolved["network_spec"] = {
        "name": config.network,
        "kwargs": {
            **config.network_kwargs,
            **{k: resolved[k] for k in ("spatial_dims", "in_channels", "out_channels")},
        },
    }
    spec = ModelSpec.from_config(resolved)
    if resumed is not None:
        before = ModelSpec.from_dict(resumed["spec"])
        if (before.network, dict(before.network_kwargs)) != (spec.network, dict(spec.network_kwargs)):
            raise ValueError(
                f"--resume: {Path(config.output) / CHECKPOINT_DIR / 'last.pt'} was trained with network "
                f"{before.network} {dict(before.network_kwargs)}, the options now give {spec.network} "
                f"{dict(spec.network_kwargs)}; resume with the same options or train into a new --output"
            )
    return spec


def _fitted_patch(
    config: TrainConfig, headers: Sequence[ImageHeader], network: nn.Module, spec: ModelSpec, rank: int
) -> tuple[int, ...]:
    """``config.roi_size`` clamped to the largest image's padded size, with a warning (from rank 0) when it
    changes."""
    largest = resampled_sizes(headers, config.pixdim).max(axis=0)
    roi = fit_roi(config.roi_size, largest, network, spec.network_kwargs)
    if roi != config.roi_size and rank == 0:
        logger.warning(
            "--roi-size %s is larger than the largest training image needs (%s voxels after resampling, "
            "padded to the network's multiple); training uses --roi-size %s",
            list(config.roi_size), [int(s) for s in largest], list(roi),
        )  # fmt: skip
    return roi


def _record_resumed_changes(resolved: dict[str, Any], resumed: dict[str, Any], rank: int) -> None:
    """Add to ``resolved`` the options that differ from the resumed checkpoint's (they are applied), under
    :data:`RESUMED`; refuse a changed :data:`SPLIT_OPTIONS`."""
    before, epoch = resumed["config"], int(resumed["epoch"])
    changed = {k: v for k, v in resolved.items() if k not in ("resume", RESUMED) and before.get(k) != v}
    for name in SPLIT_OPTIONS:
        if name in changed:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"--resume: the run was trained with {flag} {before.get(name)}, the options now give "
                f"{changed[name]}, which would change the validation cases; resume with {flag} "
                f"{before.get(name)} or train into a new --output"
            )
    history = dict(before.get(RESUMED, {}))  # earlier resumes' changes
    if changed:
        history[str(epoch)] = changed
        if rank == 0:
            logger.info(
                "--resume after epoch %d with changed options (applied, recorded as %s.%d.* in the config "
                "and MLflow): %s", epoch, RESUMED, epoch,
                ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in changed.items()),
            )  # fmt: skip
    if history:
        resolved[RESUMED] = history


def prepare_run(config: TrainConfig, resumed: dict[str, Any] | None, rank: int = 0) -> PreparedRun:
    """Check the classes, every case's files and a resumed checkpoint's network; fit the patch size (every
    DDP rank does, ``rank`` 0 says so). Options a resume changes are recorded in the resolved config.

    Raises:
        ValueError: bad classes, bad files (:func:`~attnunet.pipelines.data.validation.validate_items`:
            each names the file, and the shape found and expected), or a resumed checkpoint trained with
            another network or another split of the cases (``seed``, ``val_fraction``).
    """
    index = discover_dataset(config.data)
    labels = _checked_labels(config, index)
    headers = validate_items(
        index.items, labels=labels, spatial_dims=len(config.roi_size), **declared_channels(index)
    )
    resolved = resolve_config(
        config, labels, headers[0].channels, config.out_channels or len(labels), index.regions
    )
    spec = _model_spec(config, resolved, resumed)
    set_determinism(seed=config.seed)  # the initial weights depend on the seed alone
    network = spec.build()
    roi = _fitted_patch(config, headers, network, spec, rank)
    if roi != config.roi_size:
        config = dataclasses.replace(config, roi_size=roi)
        resolved["roi_size"] = list(roi)
        spec = dataclasses.replace(spec, roi_size=roi)
    if resumed is not None:
        _record_resumed_changes(resolved, resumed, rank)
    return PreparedRun(config, labels, list(index.items), resolved, spec, network)
