"""MONAI bundles of the Attention U-Net: the template, the helpers its configs call, ``attnunet bundle``.

The template under ``bundles/attention_unet`` has MONAI's standard layout (``configs/metadata.json``,
``train.json``, ``inference.json``, ``evaluate.json``, ``multi_gpu_train.json``, ``logging.conf``,
``docs/README.md``, ``models/``) and runs with MONAI's own commands::

    cd my_bundle
    python -m monai.bundle run --config_file configs/train.json                      # demo data
    python -m monai.bundle run --config_file configs/train.json --dataset_dir /data  # your data
    python -m monai.bundle run --config_file configs/inference.json --input_dir /scans

Its configs use MONAI's engines, handlers, datasets and inferers directly; the few steps MONAI has no
component for (writing the embedded demo data, reading a dataset folder into a split data list,
listing the scans of a folder, joining ``torchrun``'s process group) are the Python functions below,
called by ``_target_`` (STYLE.md: logic in Python functions, not in config strings).
:func:`init_bundle` copies the template and writes a user's classes, preset, ROI size, spatial dims
and spacing into it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import look_up_option

from attnunet.pipelines.datasets import discover_dataset, split_items
from attnunet.pipelines.demo_data import write_demo_dataset
from attnunet.pipelines.files import IMAGE_SUFFIXES
from attnunet.transforms.presets import PRESETS, build_transforms

__all__ = [
    "bundle_template_dir",
    "default_dataset_dir",
    "bundle_datalist",
    "image_datalist",
    "init_distributed",
    "init_bundle",
    "add_arguments",
    "run",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")

# What metadata.json says about the input of each preset (MONAI's network_data_format vocabulary).
_PRESET_FORMAT = {
    "ct": {"format": "hounsfield", "modality": "CT", "value_range": [0, 1]},
    "mr": {"format": "magnitude", "modality": "MR", "value_range": []},
    "image2d": {"format": "RGB", "modality": "regular", "value_range": [0, 1]},
}
# Files and folders a run writes into a bundle; never copied from the template into a new bundle.
_RUN_OUTPUTS = ("data", "eval", "*.pt", "*.ts", "*.db", "mlruns", "mlartifacts", "__pycache__")
_SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def bundle_template_dir() -> Path:
    """The template bundle shipped with attnunet (``attnunet/pipelines/bundles/attention_unet``).

    Example:
        >>> (bundle_template_dir() / "configs" / "train.json").is_file()
        True
    """
    return Path(__file__).resolve().parent / "bundles" / "attention_unet"


def default_dataset_dir(bundle_root: str | os.PathLike) -> str:
    """The dataset a bundle trains on when no ``--dataset_dir`` is given: the embedded demo data.

    Written once into ``<bundle_root>/data/demo`` by :func:`attnunet.pipelines.demo_data.write_demo_dataset`
    (atomically, so an interrupted first run leaves nothing half-written) and reused afterwards.

    Args:
        bundle_root: the bundle's folder.

    Returns:
        The dataset folder as a string (MONAI configs join paths with ``+``).

    Example:
        >>> default_dataset_dir("/tmp/my_bundle")  # doctest: +SKIP
        '/tmp/my_bundle/data/demo'
    """
    root = Path(bundle_root) / "data" / "demo"
    if not (root / "dataset.json").is_file():
        logger.info("writing the attnunet demo dataset to %s (no --dataset_dir given)", root)
        write_demo_dataset(root)
    return str(root)


def bundle_datalist(
    dataset_dir: str | os.PathLike,
    split: str,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    out_channels: int | None = None,
) -> list[dict[str, str]]:
    """The ``{"image", "label"}`` items of one split of a dataset folder, for a bundle's datasets.

    The folder is read by :func:`attnunet.pipelines.datasets.discover_dataset` (an MSD folder with
    ``dataset.json``, image/label folder pairs or a CSV) and split by
    :func:`attnunet.pipelines.datasets.split_items`, so a bundle and ``attnunet train`` given the same
    ``val_fraction`` and ``seed`` train and validate on the same cases.

    Args:
        dataset_dir: the dataset folder.
        split: ``"train"`` or ``"val"``.
        val_fraction: fraction of the cases held out for validation. Defaults to 0.2.
        seed: seed of the split. Defaults to 0.
        out_channels: the bundle's number of classes; when given, every label of the dataset must be
            below it (one output channel per class).

    Raises:
        ValueError: unknown ``split``, or the dataset has labels ``>= out_channels``.
        FileNotFoundError: ``dataset_dir`` does not exist.

    Example:
        >>> items = bundle_datalist("/data/Task09_Spleen", "val", seed=0)  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['image', 'label']
    """
    split = look_up_option(split, SPLITS)
    if not Path(dataset_dir).exists():
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} does not exist; give an existing folder with --dataset_dir"
        )
    index = discover_dataset(dataset_dir)
    highest = max((int(k) for k in index.labels), default=0)
    if out_channels is not None and highest >= out_channels:
        raise ValueError(
            f"dataset {dataset_dir} has labels up to {highest} ({dict(index.labels)}) but the bundle's "
            f"out_channels is {out_channels}; write a bundle for it with "
            "'attnunet bundle init NAME --dir DIR --classes ...'"
        )
    train, val = split_items(index.items, val_fraction=val_fraction, seed=seed)
    return [dict(item) for item in (train if split == "train" else val)]


def image_datalist(folder: str | os.PathLike, suffixes: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The ``{"image": path}`` items of the images directly in ``folder``, sorted by name.

    Args:
        folder: a folder of scans.
        suffixes: file endings to take (case-insensitive); None means the volume formats of
            :data:`attnunet.pipelines.files.IMAGE_SUFFIXES` (NIfTI, NRRD, MetaImage). 2D bundles
            give ``[".png", ".jpg", ...]``.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no such files.

    Example:
        >>> image_datalist("/data/imagesTs")  # doctest: +SKIP
        [{'image': '/data/imagesTs/case_001.nii.gz'}]
    """
    suffixes = tuple(s.lower() for s in (suffixes or IMAGE_SUFFIXES))
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"input_dir {folder} is not a folder; give a folder of scans with --input_dir"
        )
    images = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(suffixes)
    )
    if not images:
        raise FileNotFoundError(f"input_dir {folder} holds no images ({', '.join(suffixes)})")
    return [{"image": str(path)} for path in images]


def init_distributed() -> torch.device:
    """Join the ``torchrun`` process group and return this process's device (``multi_gpu_train.json``).

    NCCL and ``cuda:LOCAL_RANK`` on GPUs; Gloo and the CPU otherwise (so the multi-GPU config can be
    tried on a laptop with ``torchrun --nproc_per_node=2``).

    Raises:
        ValueError: not started by ``torchrun`` (no ``LOCAL_RANK`` in the environment).

    Example:
        >>> init_distributed()  # under torchrun  # doctest: +SKIP
        device(type='cuda', index=0)
    """
    if "LOCAL_RANK" not in os.environ:
        raise ValueError(
            "multi_gpu_train.json runs under torchrun: torchrun --nproc_per_node=N -m monai.bundle run "
            "--config_file \"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    torch.cuda.set_device(device)
    return device


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
    dataset_dir: str | os.PathLike | None = None,
    preset_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a MONAI bundle for your own dataset: the template with your classes and preprocessing.

    The new bundle ``directory/name`` runs with the same commands as the template
    (``python -m monai.bundle run --config_file configs/train.json --dataset_dir ...``, ``inference.json``,
    ``verify_net_in_out``, ``ckpt_export``). It is written in a temporary folder beside it and moved
    into place, so a failure leaves nothing behind; an existing folder is never overwritten.

    Args:
        name: the bundle's folder name (letters, digits, ``_``, ``-``, ``.``).
        directory: the folder to create the bundle in (created if missing).
        classes: class names, background first; the network gets one output channel per class.
        preset: preprocessing preset of :func:`attnunet.transforms.presets.build_transforms`:
            ``"ct"``, ``"mr"`` or ``"image2d"``.
        roi_size: training patch and sliding-window size, one int per spatial dim. Defaults to the
            template's ``[48, 48, 32]`` in 3D and ``[256, 256]`` in 2D.
        spatial_dims: 2 or 3. Defaults to 2 for ``"image2d"`` and 3 otherwise.
        pixdim: voxel spacing to resample to (mm, one per spatial dim), or None to keep each scan's own.
        in_channels: image channels. Defaults to 3 for ``"image2d"`` and 1 otherwise.
        dataset_dir: the dataset to train on by default; None keeps the embedded demo data (until
            ``--dataset_dir`` is given on the command line).
        preset_kwargs: options of the preset, e.g. ``{"a_min": -200, "a_max": 300}`` for the CT window
            (the CT default is the template's ``[-175, 250]`` HU), written to ``train.json``'s
            ``preset_kwargs`` that every preprocessing chain of the bundle passes to the preset.

    Returns:
        The new bundle's folder.

    Raises:
        FileExistsError: ``directory/name`` already exists.
        FileNotFoundError: ``dataset_dir`` is given but is not a folder.
        ValueError: a setting is invalid (names the setting and the rule).

    Example:
        >>> root = init_bundle(
        ...     "liver", "/tmp/bundles", classes=["background", "liver"], roi_size=[96, 96, 64]
        ... )  # doctest: +SKIP
        >>> (root / "configs" / "train.json").is_file()  # doctest: +SKIP
        True
    """
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
    spatial_dims = (2 if preset == "image2d" else 3) if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if (preset == "image2d") != (spatial_dims == 2):
        raise ValueError(
            f"preset {preset!r} does not work with spatial_dims={spatial_dims}: image2d is 2D, ct/mr 3D"
        )
    roi_size = _check_sizes("roi_size", roi_size, spatial_dims, int)
    pixdim = _check_sizes("pixdim", pixdim, spatial_dims, float)
    in_channels = (3 if preset == "image2d" else 1) if in_channels is None else in_channels
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if dataset_dir is not None and not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} is not a folder")

    target = Path(directory) / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another name or --dir (nothing was written)")
    template = bundle_template_dir()
    train = _read_json(template / "configs" / "train.json")
    inference = _read_json(template / "configs" / "inference.json")
    metadata = _read_json(template / "configs" / "metadata.json")
    options = dict(train["preset_kwargs"]) if preset == "ct" else {}
    options.update(preset_kwargs or {})
    # The preset checks its own options (unknown names, an empty CT window, pixdim for 2D) before
    # anything is written; building a chain reads no file.
    build_transforms(preset, "infer", pixdim=pixdim, **options)
    roi_size = roi_size or ([256, 256] if spatial_dims == 2 else train["roi_size"])
    train.update(
        preset=preset,
        pixdim=pixdim,
        roi_size=roi_size,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=len(classes),
    )
    if dataset_dir is not None:
        train["dataset_dir"] = str(Path(dataset_dir).resolve())
    _set_preset_options(train, inference, options)
    if preset == "image2d":
        inference["datalist"]["suffixes"] = list(_SUFFIXES_2D)
    _describe(metadata, name, classes, preset, roi_size, in_channels)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        bundle = staging / name
        shutil.copytree(template, bundle, ignore=shutil.ignore_patterns(*_RUN_OUTPUTS))
        _write_json(bundle / "configs" / "train.json", train)
        _write_json(bundle / "configs" / "inference.json", inference)
        _write_json(bundle / "configs" / "metadata.json", metadata)
        os.rename(bundle, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote bundle %s (%s preset, %d classes, roi %s)", target, preset, len(classes), roi_size)
    return target


def _set_preset_options(train: dict, inference: dict, options: Mapping[str, Any]) -> None:
    """Replace the template's preset options (the CT window) by ``options`` in both configs (in place).

    The options live in ``train.json``'s ``preset_kwargs`` (``inference.json`` takes it by macro); each
    preprocessing chain passes them to the preset as ``"a_min": "@preset_kwargs#a_min"`` and so on.
    """
    chains = [train["train"]["preprocessing"], train["validate"]["preprocessing"], inference["preprocessing"]]
    for chain in chains:
        for key in train["preset_kwargs"]:  # the template's own (its CT window)
            chain.pop(key, None)
        chain.update({key: f"@preset_kwargs#{key}" for key in options})
    train["preset_kwargs"] = dict(options)


def _describe(
    metadata: dict, name: str, classes: list[str], preset: str, roi_size: list[int], in_channels: int
) -> None:
    """Write the bundle's name, classes and network input/output into its metadata (in place)."""
    labels = {str(i): c for i, c in enumerate(classes)}
    metadata.update(
        name=name,
        task=f"Segmentation of {', '.join(classes[1:])} ({preset} preset)",
        data_source="your dataset, given with --dataset_dir",
        label_classes="single channel integer labels: " + ", ".join(f"{i} {c}" for i, c in labels.items()),
        pred_classes=f"{len(classes)} channels of logits, one per class; argmax gives the label map",
        eval_metrics={"mean_dice": 0.0},
    )
    data_format = metadata["network_data_format"]
    image = data_format["inputs"]["image"]
    image.update(_PRESET_FORMAT[preset])
    image.update(
        num_channels=in_channels,
        spatial_shape=list(roi_size),
        channel_def={str(c): "image" if in_channels == 1 else f"channel {c}" for c in range(in_channels)},
    )
    pred = data_format["outputs"]["pred"]
    pred.update(num_channels=len(classes), spatial_shape=list(roi_size), channel_def=labels)
    if in_channels == 1 and preset != "ct":
        metadata["image_classes"] = f"single channel {_PRESET_FORMAT[preset]['modality']} image"
    elif in_channels > 1:
        metadata["image_classes"] = f"{in_channels} channel image"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=4) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``attnunet bundle``: ``init NAME --dir DIR`` and the dataset's settings."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write a MONAI bundle for your own dataset",
        description="Write a MONAI bundle (configs for train, inference, evaluate, multi-GPU training) for "
        "your dataset's classes and preprocessing. Then, inside it: python -m monai.bundle run "
        "--config_file configs/train.json --dataset_dir DATA",
    )
    init.add_argument("name", help="the bundle's folder name")
    init.add_argument("--dir", required=True, type=Path, help="folder to create the bundle in")
    init.add_argument(
        "--classes",
        nargs="+",
        default=["background", "organ", "lesion"],
        help="class names, background first",
    )
    init.add_argument("--preset", default="ct", help="preprocessing preset: ct, mr or image2d (default: ct)")
    init.add_argument("--roi-size", nargs="+", type=int, help="patch / sliding-window size per spatial dim")
    init.add_argument("--spatial-dims", type=int, help="2 or 3 (default: 2 for image2d, else 3)")
    init.add_argument("--pixdim", nargs="+", type=float, help="spacing to resample to, mm per spatial dim")
    init.add_argument("--in-channels", type=int, help="image channels (default: 3 for image2d, else 1)")
    init.add_argument("--dataset-dir", type=Path, help="dataset to train on by default (else the demo data)")
    init.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("A_MIN", "A_MAX"),
        help="CT preset: the HU window scaled to [0, 1] (default: -175 250)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet bundle``; returns the exit code."""
    root = init_bundle(
        args.name,
        args.dir,
        classes=args.classes,
        preset=args.preset,
        roi_size=args.roi_size,
        spatial_dims=args.spatial_dims,
        pixdim=args.pixdim,
        in_channels=args.in_channels,
        dataset_dir=args.dataset_dir,
        preset_kwargs=None if args.window is None else {"a_min": args.window[0], "a_max": args.window[1]},
    )
    print(f"wrote {root}\nnext: cd {root} && python -m monai.bundle run --config_file configs/train.json")
    return 0
