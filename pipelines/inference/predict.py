"""Sliding-window segmentation of scans, written as NIfTI in each input's own geometry.

``attnunet infer INPUT --model SOURCE --output DIR`` and the bundle's ``configs/inference.json`` segment

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

Many scans: ``torchrun --nproc_per_node N -m attnunet infer ...`` splits the cases across the ranks
(one GPU each when there are GPUs); every output is checked by every rank before any is written, and
each case is written by exactly one rank.

Large scans: the windows run on the GPU while the whole volume and its stitching stay on the CPU when
the volume would not fit in the free GPU memory (:mod:`attnunet.pipelines.inference.devices`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor, NibabelWriter
from monai.inferers import SlidingWindowInferer
from monai.transforms import AsDiscrete, Compose, Invertd, KeepLargestConnectedComponent
from monai.utils import look_up_option
from tqdm import tqdm

from attnunet.atomic import atomic_output, refuse_existing
from attnunet.models import load_model
from attnunet.pipelines.data.files import innermost_cause
from attnunet.pipelines.engines.distributed import leave_distributed, setup_distributed
from attnunet.pipelines.flags import flag
from attnunet.pipelines.inference.devices import DEVICE_CHOICES, choose_devices
from attnunet.pipelines.inference.inputs import InferenceCase, discover_inputs
from attnunet.roi import fit_roi
from attnunet.spec import ModelSpec
from attnunet.transforms.dicom_seg import write_dicom_seg
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES
from attnunet.transforms.presets import build_transforms, mirrored_axes
from attnunet.transforms.readers import SimpleITKReader

__all__ = ["BLEND_MODES", "OUTPUT_FORMATS", "Windows", "infer", "segment"]

logger = logging.getLogger(__name__)

BLEND_MODES = ("gaussian", "constant")
# Label-map formats: NIfTI in any input's geometry, or a DICOM SEG referencing a DICOM series input.
OUTPUT_FORMATS = {"nifti": ".nii.gz", "dicom-seg": ".dcm"}
PROBABILITIES_DIR = "probabilities"


@dataclass(frozen=True)
class Windows:
    """How one model is applied: sliding-window settings, test-time flips and post-processing."""

    roi_size: tuple[int, ...]
    overlap: float
    sw_batch_size: int
    blend: str = "gaussian"
    tta: bool = True
    largest_component: bool = False
    sw_device: str = "auto"
    device: str = "auto"

    @classmethod
    def for_model(
        cls,
        spec: ModelSpec,
        roi_size: Sequence[int] | None,
        overlap: float | None,
        sw_batch_size: int | None,
        **options: Any,
    ) -> Windows:
        """The spec's own settings where an option is None, checked against the model."""
        roi = tuple(int(size) for size in (roi_size if roi_size is not None else spec.roi_size))
        if len(roi) != spec.spatial_dims or any(size < 1 for size in roi):
            raise ValueError(
                f"roi_size must be {spec.spatial_dims} positive sizes for this {spec.spatial_dims}D model, "
                f"got {list(roi)}"
            )
        overlap = spec.overlap if overlap is None else overlap
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        sw_batch_size = spec.sw_batch_size if sw_batch_size is None else sw_batch_size
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        options["blend"] = look_up_option(options.get("blend", "gaussian"), BLEND_MODES)
        for name in ("sw_device", "device"):
            look_up_option(str(options.get(name, "auto")).split(":")[0], DEVICE_CHOICES)
        return cls(roi, overlap, sw_batch_size, **options)


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


def _trained_flips(spec: ModelSpec) -> list[int]:
    """Batch axes of the windows to mirror at test time: those the model was mirrored along in training.

    A plan that keeps an axis unmirrored (the two hippocampus classes keep their order front to back)
    trained the model on one orientation only; a flipped window along that axis shows it anatomy it
    never saw. The infer chain puts images in RAS, so RAS axis ``a`` is window axis ``a + 2``.
    """
    return [axis + 2 for axis in mirrored_axes(spec.preset, spec.preset_kwargs)]


def _preprocessing(spec: ModelSpec, case: InferenceCase) -> Compose:
    """The spec's preset ``"infer"`` chain; a DICOM series is read by its UID."""
    kwargs: dict[str, Any] = {"pixdim": spec.pixdim, **dict(spec.preset_kwargs)}
    if case.series_uid is not None:
        kwargs["reader"] = SimpleITKReader(series_uid=case.series_uid)
    return build_transforms(spec.preset, "infer", **kwargs)


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


def _join_ranks(device: str) -> tuple[int, int]:
    """``(rank, world)``: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined (one GPU per
    rank when there are GPUs) and each rank takes every ``world``-th case, so each is written once."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    rank, world, _ = setup_distributed("cpu" if device == "cpu" else None)
    dist.barrier()
    return rank, world


def _output_paths(
    cases: Sequence[InferenceCase], output_dir: Path, output_format: str
) -> tuple[list[Path], list[Path]]:
    """Where each case's label map and probabilities go; a DICOM SEG needs every case to be a series."""
    suffix = look_up_option(output_format, OUTPUT_FORMATS)
    not_series = [case.image for case in cases if case.series_uid is None]
    if output_format == "dicom-seg" and not_series:
        raise ValueError(
            f"--output-format dicom-seg needs DICOM series folders as inputs, but {not_series[0]} is not one "
            f"({len(not_series)} such inputs); use --output-format nifti for them"
        )
    labels = [output_dir / f"{case.name}{suffix}" for case in cases]
    return labels, [output_dir / PROBABILITIES_DIR / f"{case.name}.nii.gz" for case in cases]


def _write_seg(labels: MetaTensor, case: InferenceCase, path: Path, spec: ModelSpec) -> None:
    """One DICOM SEG for a series case, written in a fresh folder beside ``path`` and renamed onto it
    (the writer never replaces a file; ``--overwrite`` replaces it here, once it is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".seg-") as folder:
        written = write_dicom_seg(
            labels, case.image, Path(folder) / path.name, spec.labels, series_uid=case.series_uid
        )
        os.replace(written, path)


def infer(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike,
    tracking_uri: str | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    blend: str = "gaussian",
    tta: bool = True,
    largest_component: bool = False,
    probabilities: bool = False,
    output_format: str = "nifti",
    overwrite: bool = False,
    device: str = "auto",
    sw_device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Segment scans with sliding windows and write label maps in each input's geometry.

    Args:
        inputs: an image file, a folder of images, a DICOM series folder, a CSV with an ``image``
            column, or a list of these (see :func:`discover_inputs`).
        output_dir: where the label maps (uint8) are written.
        model: a checkpoint, a bundle folder or ``models:/NAME@ALIAS`` (:func:`attnunet.load_model`).
        tracking_uri: the MLflow store of a ``models:/`` model (default: ``MLFLOW_TRACKING_URI``).
        roi_size, overlap, sw_batch_size: sliding windows; None: the model spec's own.
        blend: ``"gaussian"`` (down-weights window borders) or ``"constant"``.
        tta: average the softmax over flips along the axes mirrored in training (the preset's flip_axes).
        largest_component: keep only the largest connected component of each foreground class.
        output_format: ``"nifti"`` (``<case>.nii.gz``) or ``"dicom-seg"`` (``<case>.dcm``: a DICOM SEG
            per input series, a segment per foreground class, referencing the series).
        probabilities: also write class probabilities (float32) to ``output_dir/probabilities/``.
        overwrite: replace existing outputs; otherwise any existing output stops the run first.
        device: where the volume is kept and stitched: ``"auto"`` (by free GPU memory,
            :func:`~attnunet.pipelines.inference.devices.choose_devices`), ``"cpu"`` or ``"cuda"``.
        sw_device: where the network runs on each window: ``"auto"`` (CUDA when available), ``"cpu"``
            or ``"cuda[:N]"``. AMP is used on CUDA.
        progress: show a progress bar over the cases.

    Returns:
        the label-map paths written, one per case, in input order.

    Raises:
        ValueError: not a model, bad options, or bad inputs (see :func:`discover_inputs`).
        FileNotFoundError: an input or the model does not exist.
        FileExistsError: outputs exist and ``overwrite`` is False (all of them are listed).

    Example:
        >>> infer("data/imagesTs", "predictions", model="runs/best.pt", tta=True)  # doctest: +SKIP
        [PosixPath('predictions/case_004.nii.gz'), PosixPath('predictions/case_005.nii.gz')]
    """
    tta, largest_component = flag("tta", tta), flag("largest_component", largest_component)
    probabilities, overwrite = flag("probabilities", probabilities), flag("overwrite", overwrite)
    progress = flag("progress", progress)
    network, spec = load_model(model, device="cpu", tracking_uri=tracking_uri)
    windows = Windows.for_model(
        spec, roi_size, overlap, sw_batch_size, blend=blend, tta=tta,
        largest_component=largest_component, sw_device=sw_device, device=device,
    )  # fmt: skip
    suffixes = IMAGE_SUFFIXES + (IMAGE2D_SUFFIXES if spec.preset == "image2d" else ())
    cases = discover_inputs(inputs, suffixes=suffixes)

    label_paths, probability_paths = _output_paths(cases, Path(output_dir), output_format)
    refuse_existing(label_paths + (probability_paths if probabilities else []), overwrite)
    rank, world = _join_ranks(device)  # under torchrun: every rank checked every output before any is written
    planned = list(zip(cases, label_paths, probability_paths, strict=True))[rank::world]
    for case, label_path, probability_path in tqdm(planned, desc="infer", unit="case", disable=not progress):
        scores, labels = segment(network, spec, case, windows)
        if output_format == "dicom-seg":
            _write_seg(labels, case, label_path, spec)
        else:
            _write(labels, label_path, np.uint8)
        if probabilities:
            _write(scores, probability_path, np.float32)
    if world > 1:  # the cases of one rank are written; wait for the others, then leave the group
        dist.barrier()
        leave_distributed(world)
    return label_paths


def segment(
    model: torch.nn.Module, spec: ModelSpec, case: InferenceCase, windows: Windows
) -> tuple[MetaTensor, MetaTensor]:
    """``(probabilities, labels)`` of one case, channel first, on the input's own grid.

    The case goes through the spec's preset ``"infer"`` chain, MONAI's sliding-window inferer on the
    devices :func:`~attnunet.pipelines.inference.devices.choose_devices` picks, then back through the
    preset's invertible transforms (orientation, spacing) with ``Invertd``. A window axis larger than the
    image padded to the network's multiple is clamped to that size, logged with the case (a bigger window only
    computes zeros: 256^3 windows on a 64 x 64 x 32 image ran for over 15 minutes).
    """
    preprocess = _preprocessing(spec, case)
    image = (data := _load(preprocess, case))["image"]
    if image.ndim - 1 != spec.spatial_dims or image.shape[0] != spec.in_channels:
        raise ValueError(
            f"{case.image}: the model takes {spec.in_channels}-channel {spec.spatial_dims}D images, but "
            f"the preprocessed image has shape {tuple(image.shape)} (channels first)"
        )
    plan = choose_devices(
        image.shape[1:],
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        sw_device=windows.sw_device,
        device=windows.device,
    )
    model.to(plan.sw_device)
    roi_size = fit_roi(windows.roi_size, image.shape[1:], model, spec.network_kwargs)
    inferer = SlidingWindowInferer(
        roi_size=roi_size,
        sw_batch_size=windows.sw_batch_size,
        overlap=windows.overlap,
        mode=windows.blend,
        sw_device=plan.sw_device,
        device=plan.device,
    )
    predictor = _predictor(
        model,
        sigmoid=spec.out_channels == 1,
        flip_axes=_trained_flips(spec) if windows.tta else (),
        amp=plan.sw_device.type == "cuda",
    )
    # An image smaller than the planned patch is the common case (the patch covers the median shape),
    # so the shrunken window is reported, not warned about.
    logger.info(
        "%s: %s voxels, windows %s on %s, stitched on %s",
        case.name, tuple(image.shape[1:]), list(roi_size), plan.sw_device, plan.device,
    )  # fmt: skip
    with torch.inference_mode():
        probabilities = inferer(image.as_tensor()[None].to(plan.device), predictor)[0]
    data["pred"] = MetaTensor(probabilities, meta=image.meta, applied_operations=image.applied_operations)
    # Rebinding ``data`` frees the stitched volume before the label map is made. A 2D picture's chain moves
    # no pixel (nothing to invert, and MONAI would warn so for every image).
    if image.applied_operations:
        data = Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False)(data)
    probabilities = data["pred"]
    sigmoid = spec.out_channels == 1
    labels = (AsDiscrete(threshold=0.5) if sigmoid else AsDiscrete(argmax=True))(probabilities)
    if windows.largest_component:
        labels = KeepLargestConnectedComponent(applied_labels=list(range(1, max(spec.out_channels, 2))))(
            labels
        )
    return probabilities, labels
