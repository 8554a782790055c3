"""Sliding-window segmentation of scans, written as NIfTI in each input's own geometry.

``attnunet infer INPUT --model SOURCE --output DIR`` segments

- an image file (NIfTI, NRRD, MetaImage),
- a folder of such files, or a DICOM series folder (every series in it is one case),
- a CSV file with an ``image`` column (paths relative to the CSV's folder),

with a model from a checkpoint (``.pt`` from ``attnunet train``), a MONAI bundle folder
(``configs/inference.json`` + ``models/model.pt``) or the MLflow registry (``models:/NAME@ALIAS``).

Each case goes through the checkpoint's preset ``"infer"`` transforms (reading, orientation, spacing,
intensity), MONAI's :class:`~monai.inferers.SlidingWindowInferer` (Gaussian or constant blending,
AMP on CUDA, optional flip test-time augmentation), :class:`~monai.transforms.Invertd` back to the
input's grid, then argmax and optionally :class:`~monai.transforms.KeepLargestConnectedComponent`.
The label map ``DIR/<case>.nii.gz`` has the input's shape and affine; with ``--probabilities`` the
class probabilities go to ``DIR/probabilities/<case>.nii.gz``. Existing outputs are never replaced
without ``--overwrite``, and every file is written under a temporary name and renamed when complete.

Large scans: the windows run on the GPU while the whole volume and its stitching stay on the CPU when
the volume would not fit in the free GPU memory (:mod:`attnunet.pipelines.devices`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, NibabelWriter
from monai.inferers import SlidingWindowInferer
from monai.transforms import AsDiscrete, Compose, Invertd, KeepLargestConnectedComponent
from monai.utils import look_up_option
from tqdm import tqdm

from attnunet.atomic import atomic_output, refuse_existing
from attnunet.pipelines.checkpoints import model_from_checkpoint
from attnunet.pipelines.devices import DEVICE_CHOICES, choose_devices
from attnunet.pipelines.files import (
    IMAGE2D_SUFFIXES,
    IMAGE_SUFFIXES,
    case_name,
    innermost_cause,
    list_images,
)
from attnunet.transforms.presets import build_transforms
from attnunet.transforms.readers import SimpleITKReader, list_dicom_series

__all__ = ["BLEND_MODES", "InferenceCase", "discover_inputs", "load_model", "infer", "add_arguments", "run"]

logger = logging.getLogger(__name__)

BLEND_MODES = ("gaussian", "constant")
REGISTRY_SCHEMES = ("models:/", "runs:/")
PROBABILITIES_DIR = "probabilities"
# What infer needs from a model's config (checkpoint schema); "pixdim" and "preset_kwargs" may be empty.
_REQUIRED_CONFIG = ("preset", "roi_size", "spatial_dims", "in_channels", "out_channels")
_SOURCE_KINDS = {
    "checkpoint": "checkpoint file",
    "bundle": "bundle folder",
    "model_uri": "MLflow model URI (models:/NAME@ALIAS)",
}


@dataclass(frozen=True)
class InferenceCase:
    """One scan to segment.

    Attributes:
        name: the case name; outputs are ``<name>.nii.gz``.
        image: an image file, or a DICOM series folder.
        series_uid: the DICOM series to read from ``image`` (a folder), else None.
    """

    name: str
    image: str
    series_uid: str | None = None


def _folder_cases(folder: Path, suffixes: Sequence[str]) -> list[InferenceCase]:
    images = list_images(folder, suffixes)
    if images:
        return [InferenceCase(case_name(path), str(path)) for path in images]
    series = list_dicom_series(folder)
    if not series:
        raise FileNotFoundError(f"folder {folder} holds no images ({', '.join(suffixes)}) or DICOM series")
    if len(series) == 1:
        return [InferenceCase(folder.name, str(folder), series[0].uid)]
    return [InferenceCase(f"{folder.name}_{item.uid}", str(folder), item.uid) for item in series]


def _csv_cases(path: Path, suffixes: Sequence[str]) -> list[InferenceCase]:
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"CSV {path} needs an 'image' column with one scan per row")
    cases = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if not row["image"]:
            raise ValueError(f"CSV {path} line {number}: the image column is empty")
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.exists():
            raise FileNotFoundError(f"CSV {path} line {number}: image {image} does not exist")
        cases.extend(_path_cases(image, suffixes))
    return cases


def _path_cases(path: Path, suffixes: Sequence[str]) -> list[InferenceCase]:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.is_dir():
        return _folder_cases(path, suffixes)
    if path.name.lower().endswith(".csv"):
        return _csv_cases(path, suffixes)
    if path.name.lower().endswith(tuple(suffixes)):
        return [InferenceCase(case_name(path), str(path))]
    raise ValueError(f"input {path} is not an image ({', '.join(suffixes)}), a folder or a .csv file")


def discover_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], *, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[InferenceCase]:
    """Turn files, folders, DICOM series folders and CSV files into the cases to segment.

    Args:
        inputs: one path or a list of them: an image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``,
            ``.mhd``), a folder of image files, a DICOM series folder (one case per series, named
            after the folder, ``<folder>_<SeriesInstanceUID>`` when it holds several), or a ``.csv``
            with an ``image`` column (relative paths start at the CSV's folder).
        suffixes: the file extensions that count as images; default: the volume formats
            (``IMAGE2D_SUFFIXES`` are added for a 2D model).

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no images and no DICOM series.
        ValueError: an unsupported file type, a CSV without an ``image`` column, or two inputs with
            the same case name (their outputs would collide).

    Example:
        >>> [case.name for case in discover_inputs("data/imagesTs")]  # doctest: +SKIP
        ['case_004', 'case_005']
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError("no inputs given")
    cases = [case for path in paths for case in _path_cases(Path(path), suffixes)]
    seen: dict[str, str] = {}
    for case in cases:
        if case.name in seen:
            raise ValueError(
                f"two inputs have the case name {case.name!r} ({seen[case.name]} and {case.image}); "
                "their predictions would overwrite each other, rename one"
            )
        seen[case.name] = case.image
    return cases


def _load_bundle(folder: Path, device: str | torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A bundle's network (``network_def`` in ``configs/inference.json``) with ``models/model.pt`` loaded."""
    folder = folder.resolve()
    config_file, weights = folder / "configs" / "inference.json", folder / "models" / "model.pt"
    for required in (config_file, weights):
        if not required.is_file():
            raise FileNotFoundError(f"bundle {folder} has no {required.relative_to(folder)}")
    # A bundle's configs reference each other by paths relative to the bundle root
    # ("%configs/train.json#..."), the folder MONAI's bundle commands run from.
    previous = Path.cwd()
    os.chdir(folder)
    try:
        parser = ConfigParser()
        parser.read_config(str(config_file))
        parser["bundle_root"] = str(folder)
        network = parser.get_parsed_content("network_def")
        keys = (
            "preset",
            "preset_kwargs",
            "pixdim",
            "roi_size",
            "spatial_dims",
            "in_channels",
            "out_channels",
        )
        config = {key: parser.get_parsed_content(key) for key in keys}
    finally:
        os.chdir(previous)
    metadata = folder / "configs" / "metadata.json"
    outputs = json.loads(metadata.read_text()).get("network_data_format", {}) if metadata.is_file() else {}
    channels = outputs.get("outputs", {}).get("pred", {}).get("channel_def", {})
    config["labels"] = {str(index): str(name) for index, name in channels.items()}
    state = torch.load(weights, map_location="cpu", weights_only=True)
    # MONAI's CheckpointSaver writes a bare state dict for one object, a {"model": ...} dict otherwise.
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"bundle {folder}: models/model.pt does not fit its network_def: {error}") from None
    return network.to(device).eval(), config


def _source_kind(source: str | os.PathLike) -> str:
    """``"model_uri"``, ``"bundle"`` (a folder) or ``"checkpoint"`` (anything else)."""
    if str(source).startswith(REGISTRY_SCHEMES):
        return "model_uri"
    return "bundle" if Path(source).is_dir() else "checkpoint"


def load_model(
    source: str | os.PathLike, *, device: str | torch.device = "cpu", tracking_uri: str | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model and its config from a checkpoint, a MONAI bundle folder or the MLflow registry.

    Args:
        source: a checkpoint file written by ``attnunet train``; a bundle folder (``configs/inference.json``
            with ``network_def``, ``models/model.pt``); or an MLflow model URI (``models:/NAME@ALIAS``,
            ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``).
        device: where to put the model.
        tracking_uri: the MLflow store for a model URI (default: ``MLFLOW_TRACKING_URI`` or MLflow's default).

    Returns:
        ``(model, config)``: the model in eval mode and its config (checkpoint schema: ``preset``,
        ``pixdim``, ``roi_size``, ``labels``, ``spatial_dims``, ``in_channels``, ``out_channels``,
        ``preset_kwargs``).

    Raises:
        FileNotFoundError: the file or folder does not exist, or a bundle lacks its config or weights.
        ValueError: the file is not a checkpoint, or the URI names no model.

    Example:
        >>> model, config = load_model("models:/attnunet-demo@champion")  # doctest: +SKIP
        >>> model, config = load_model("runs/best.pt", device="cuda")  # doctest: +SKIP
    """
    kind = _source_kind(source)
    if kind == "model_uri":
        from attnunet.pipelines.tracking import load_registered_model  # MLflow only when asked for

        return load_registered_model(str(source), tracking_uri=tracking_uri, device=device)
    path = Path(source)
    if kind == "bundle":
        return _load_bundle(path, device)
    if not path.exists():
        raise FileNotFoundError(
            f"model {source} does not exist (give a checkpoint file, a bundle folder or models:/NAME@ALIAS)"
        )
    return model_from_checkpoint(path, device)


def _check_options(
    config: dict[str, Any], roi_size: Sequence[int] | None, overlap: float, sw_batch_size: int
) -> tuple[int, ...]:
    """Validate the sliding-window options against the model's config; return the ROI size."""
    spatial_dims = int(config["spatial_dims"])
    roi = tuple(int(size) for size in (roi_size if roi_size is not None else config["roi_size"]))
    if len(roi) != spatial_dims or any(size < 1 for size in roi):
        raise ValueError(
            f"roi_size must be {spatial_dims} positive sizes for this {spatial_dims}D model, got "
            f"{roi_size if roi_size is not None else config['roi_size']}"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    return roi


def _predictor(
    model: torch.nn.Module, *, sigmoid: bool, flip_axes: Sequence[int], amp: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class probabilities of a batch of windows, averaged over flips of the given axes.

    Test-time augmentation is applied per window: each window is also passed flipped along each
    spatial axis, flipped back, and the softmax outputs are averaged before stitching. MONAI's
    ``TestTimeAugmentation`` samples *random* invertible transforms on the whole volume to estimate
    uncertainty; a deterministic flip average needs no sampling, and doing it per window keeps the
    memory of a large scan at one stitched volume.
    """

    def probabilities(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(window.device.type, enabled=amp):
            logits = model(window)
        logits = logits.float()
        return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    def predict(window: torch.Tensor) -> torch.Tensor:
        total = probabilities(window)
        for axis in flip_axes:
            total += probabilities(window.flip(axis)).flip(axis)
        return total / (1 + len(flip_axes))

    return predict


def _preprocessing(config: dict[str, Any], case: InferenceCase) -> Compose:
    """The config's preset ``"infer"`` chain; a DICOM series is read by its UID."""
    kwargs: dict[str, Any] = {"pixdim": config.get("pixdim"), **dict(config.get("preset_kwargs") or {})}
    if case.series_uid is not None:
        kwargs["reader"] = SimpleITKReader(series_uid=case.series_uid)
    return build_transforms(config["preset"], "infer", **kwargs)


def _load(preprocess: Compose, case: InferenceCase) -> dict[str, Any]:
    """Read and preprocess one case; a failure names the file and its first cause, not MONAI's wrapper."""
    try:
        return preprocess({"image": case.image})
    except RuntimeError as error:  # MONAI wraps a transform's error as "applying transform <...>"
        raise ValueError(f"{case.image} cannot be read or preprocessed: {innermost_cause(error)}") from error


def _write(image: torch.Tensor, path: Path, dtype: type) -> None:
    """Write a channel-first MetaTensor as NIfTI with its own affine (no resampling), atomically.

    3D: ``(X, Y, Z)`` for one channel, ``(X, Y, Z, C)`` otherwise. 2D: ``(X, Y, 1, C)``, because MONAI's
    writer cannot write a squeezed 2D array without resampling it.
    """
    writer = NibabelWriter(output_dtype=dtype)
    writer.set_data_array(image, channel_dim=0, squeeze_end_dims=image.ndim > 3)
    writer.set_metadata(image.meta, resample=False)
    with atomic_output(path) as tmp:
        writer.write(tmp)


def infer(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    model_uri: str | None = None,
    bundle: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    blend: str = "gaussian",
    tta: bool = False,
    largest_component: bool = False,
    save_probabilities: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    sw_device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Segment scans with sliding windows and write label maps in each input's geometry.

    Args:
        inputs: an image file, a folder of images, a DICOM series folder, a CSV with an ``image``
            column, or a list of these (see :func:`discover_inputs`).
        output_dir: where ``<case>.nii.gz`` (uint8 label maps) are written.
        checkpoint: a checkpoint file from ``attnunet train``.
        model_uri: an MLflow model URI, ``models:/NAME@ALIAS``.
        bundle: a MONAI bundle folder. Give exactly one of ``checkpoint``, ``model_uri``, ``bundle``.
        tracking_uri: the MLflow store holding ``model_uri`` (default: ``MLFLOW_TRACKING_URI``).
        roi_size: window size; default: the model config's ``roi_size``.
        overlap: overlap of neighbouring windows, in [0, 1). Defaults to 0.25.
        sw_batch_size: windows per forward pass. Defaults to 4.
        blend: ``"gaussian"`` (down-weights window borders) or ``"constant"``.
        tta: average the softmax over flips along each spatial axis (1 + spatial_dims passes).
        largest_component: keep only the largest connected component of each foreground class.
        save_probabilities: also write the class probabilities (float32, channels last) to
            ``output_dir/probabilities/<case>.nii.gz``.
        overwrite: replace existing outputs; otherwise any existing output stops the run before
            anything is computed.
        device: where the whole volume is kept and the windows are stitched (MONAI's ``device``):
            ``None`` chooses from the free GPU memory (see
            :func:`attnunet.pipelines.devices.choose_devices`), or ``"cpu"``/``"cuda"`` to force it.
        sw_device: where the network runs on each window (MONAI's ``sw_device``): ``"auto"`` (CUDA
            when available), ``"cpu"`` or ``"cuda[:N]"``. AMP is used on CUDA.
        progress: show a progress bar over the cases.

    Returns:
        the label-map paths written, one per case, in input order.

    Raises:
        ValueError: not exactly one model source, bad options, or bad inputs (see :func:`discover_inputs`).
        FileNotFoundError: an input or the model does not exist.
        FileExistsError: outputs exist and ``overwrite`` is False (all of them are listed).

    Example:
        >>> infer("data/imagesTs", "predictions", checkpoint="runs/best.pt", tta=True)  # doctest: +SKIP
        [PosixPath('predictions/case_004.nii.gz'), PosixPath('predictions/case_005.nii.gz')]
    """
    sources = {"checkpoint": checkpoint, "model_uri": model_uri, "bundle": bundle}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of checkpoint, model_uri or bundle, got {given or 'none'}")
    source = sources[given[0]]
    if _source_kind(source) != given[0]:
        raise ValueError(
            f"{given[0]}={str(source)!r} is not a {_SOURCE_KINDS[given[0]]}"
            + (" (it does not exist)" if given[0] == "bundle" and not Path(source).exists() else "")
        )
    blend = look_up_option(blend, BLEND_MODES)
    look_up_option(str(sw_device).split(":")[0], DEVICE_CHOICES)
    look_up_option(str(device or "auto").split(":")[0], DEVICE_CHOICES)
    model, config = load_model(source, device="cpu", tracking_uri=tracking_uri)
    missing = [key for key in _REQUIRED_CONFIG if config.get(key) is None]
    if missing:
        raise ValueError(f"the config of model {source} lacks {missing}; it needs {list(_REQUIRED_CONFIG)}")
    roi = _check_options(config, roi_size, overlap, sw_batch_size)
    suffixes = IMAGE_SUFFIXES + (IMAGE2D_SUFFIXES if config.get("preset") == "image2d" else ())
    cases = discover_inputs(inputs, suffixes=suffixes)

    output_dir = Path(output_dir)
    label_paths = [output_dir / f"{case.name}.nii.gz" for case in cases]
    probability_paths = [output_dir / PROBABILITIES_DIR / path.name for path in label_paths]
    planned = label_paths + (probability_paths if save_probabilities else [])
    refuse_existing(planned, overwrite)

    in_channels, out_channels = int(config["in_channels"]), int(config["out_channels"])
    sigmoid = out_channels == 1
    discretize = AsDiscrete(threshold=0.5) if sigmoid else AsDiscrete(argmax=True)
    keep_largest = KeepLargestConnectedComponent(applied_labels=list(range(1, max(out_channels, 2))))

    written = []
    for case, label_path, probability_path in tqdm(
        list(zip(cases, label_paths, probability_paths, strict=True)),
        desc="infer",
        unit="case",
        disable=not progress,
    ):
        preprocess = _preprocessing(config, case)
        image = (data := _load(preprocess, case))["image"]
        if image.ndim - 1 != len(roi) or image.shape[0] != in_channels:
            raise ValueError(
                f"{case.image}: the model takes {in_channels}-channel {len(roi)}D images, but the "
                f"preprocessed image has shape {tuple(image.shape)} (channels first)"
            )
        plan = choose_devices(
            image.shape[1:],
            in_channels=in_channels,
            out_channels=out_channels,
            sw_device=sw_device,
            device=device or "auto",
        )
        model.to(plan.sw_device)
        inferer = SlidingWindowInferer(
            roi_size=roi,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=blend,
            sw_device=plan.sw_device,
            device=plan.device,
        )
        predictor = _predictor(
            model,
            sigmoid=sigmoid,
            flip_axes=range(2, 2 + len(roi)) if tta else (),
            amp=plan.sw_device.type == "cuda",
        )
        logger.info(
            "%s: %s on %s, stitched on %s", case.name, tuple(image.shape[1:]), plan.sw_device, plan.device
        )
        with torch.inference_mode():
            probabilities = inferer(image.as_tensor()[None].to(plan.device), predictor)[0]
        data["pred"] = MetaTensor(probabilities, meta=image.meta, applied_operations=image.applied_operations)
        # Back through the preset's invertible transforms (orientation, spacing) to the input's grid;
        # rebinding ``data`` frees the stitched volume before the label map is made.
        invert = Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False)
        data = invert(data)
        probabilities = data["pred"]
        labels = discretize(probabilities)
        if largest_component:
            labels = keep_largest(labels)
        _write(labels, label_path, np.uint8)
        if save_probabilities:
            _write(probabilities, probability_path, np.float32)
        written.append(label_path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet infer``."""
    parser.add_argument(
        "input", nargs="+", help="image file(s), folder(s), DICOM series folder(s) or CSV file(s)"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint file, MONAI bundle folder or MLflow model URI (models:/NAME@ALIAS)",
    )
    parser.add_argument("--output", required=True, help="folder for <case>.nii.gz label maps")
    parser.add_argument(
        "--tracking-uri", help="MLflow store for a models:/ URI (default: MLFLOW_TRACKING_URI)"
    )
    parser.add_argument("--roi-size", type=int, nargs="+", help="window size (default: the model's roi_size)")
    parser.add_argument(
        "--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default: 0.25)"
    )
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    parser.add_argument(
        "--blend", choices=BLEND_MODES, default="gaussian", help="window blending (default: gaussian)"
    )
    parser.add_argument("--tta", action="store_true", help="average over flips along each axis")
    parser.add_argument(
        "--largest-component", action="store_true", help="keep the largest connected component per class"
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="also write class probabilities to OUTPUT/probabilities/"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    parser.add_argument(
        "--device",
        default="auto",
        help="where the volume is kept and stitched: auto (by free GPU memory), cpu or cuda (default: auto)",
    )
    parser.add_argument(
        "--sw-device",
        default="auto",
        help="where the network runs on each window: auto (CUDA if available), cpu, cuda[:N] (default: auto)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet infer``."""
    written = infer(
        args.input,
        args.output,
        **{_source_kind(args.model): args.model},
        tracking_uri=args.tracking_uri,
        roi_size=args.roi_size,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        blend=args.blend,
        tta=args.tta,
        largest_component=args.largest_component,
        save_probabilities=args.probabilities,
        overwrite=args.overwrite,
        device=None if args.device == "auto" else args.device,
        sw_device=args.sw_device,
        progress=not args.no_progress,
    )
    print(f"{len(written)} prediction(s) written to {args.output}")
    return 0
