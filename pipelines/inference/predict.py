"""Sliding-window segmentation of scans, written as NIfTI in each input's own geometry.

``attnunet infer INPUT --model SOURCE --output DIR`` and the bundle's ``configs/inference.json`` segment

- an image file (NIfTI, NRRD, MetaImage),
- a folder of such files, or a DICOM series folder (every series in it is one case),
- a CSV file with an ``image`` column (paths relative to the CSV's folder),

with a model from a checkpoint (``.pt`` from ``attnunet train``), a MONAI bundle folder
(``configs/inference.json`` + ``models/model.pt``) or the MLflow registry (``models:/NAME@ALIAS``), or
with the ensemble of several such models, or of a cross-validation folder's folds
(:mod:`~attnunet.pipelines.inference.ensemble`: their probabilities averaged).

Each case goes through :func:`~attnunet.pipelines.inference.apply.apply_model`, the one model-apply path
(the MLflow model runs it too): the checkpoint's preset ``"infer"`` transforms (reading, orientation,
spacing, intensity), MONAI's :class:`~monai.inferers.SlidingWindowInferer` (Gaussian or constant
blending, AMP on CUDA, optional flip test-time augmentation), :class:`~monai.transforms.Invertd` back to
the input's grid, then argmax and optionally :class:`~monai.transforms.KeepLargestConnectedComponent`.
The label map ``DIR/<case>.nii.gz`` has the input's shape and affine; with ``--probabilities`` the
class probabilities go to ``DIR/probabilities/<case>.nii.gz``. Existing outputs are never replaced
without ``--overwrite``, and every file is written under a temporary name and renamed when complete.

Many scans: ``torchrun --nproc_per_node N -m attnunet infer ...`` splits the cases across the ranks
(one GPU each when there are GPUs); every output is checked by every rank before any is written, and
each case is written by exactly one rank.

A case whose file cannot be read or used is logged as one line naming it and skipped; every other case
is still written, and the run then fails with the list of those cases (under ``torchrun``, rank 0 lists
every rank's).

Large scans: the windows run on the GPU while the whole volume and its stitching stay on the CPU when
the volume would not fit in the free GPU memory (:mod:`attnunet.pipelines.inference.devices`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor
from monai.utils import look_up_option
from tqdm import tqdm

from attnunet.atomic import atomic_output, refuse_existing
from attnunet.pipelines.data.files import check_writable_folder
from attnunet.pipelines.distributed import leave_distributed, setup_distributed
from attnunet.pipelines.flags import flag
from attnunet.pipelines.inference.apply import BLEND_MODES, Windows, apply_model, write_nifti
from attnunet.pipelines.inference.ensemble import ModelSource, load_ensemble
from attnunet.pipelines.inference.inputs import InferenceCase, discover_inputs
from attnunet.spec import ModelSpec
from attnunet.transforms.dicom_seg import write_dicom_seg
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES

__all__ = ["BLEND_MODES", "OUTPUT_FORMATS", "infer"]

logger = logging.getLogger(__name__)

# Label-map formats: NIfTI in any input's geometry, or a DICOM SEG referencing a DICOM series input.
OUTPUT_FORMATS = {"nifti": ".nii.gz", "dicom-seg": ".dcm"}
PROBABILITIES_DIR = "probabilities"
# What one case's file raises when it cannot be read or used (apply_model names the file); anything else
# (a full disk, a bug) stops the run.
CASE_ERRORS = (ValueError, FileNotFoundError)


def _write(image: torch.Tensor, path: Path, dtype: type) -> None:
    """Write a channel-first MetaTensor as NIfTI in its own geometry, under a temporary name first."""
    with atomic_output(path) as tmp:
        write_nifti(image, tmp, dtype)


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
    model: ModelSource | Sequence[ModelSource],
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
        model: a checkpoint, a bundle folder or ``models:/NAME@ALIAS`` (:func:`attnunet.load_model`), a
            cross-validation folder (``splits.json``, ``fold_N/checkpoints/best.pt``: all its folds, and the
            classes its ``postprocessing.json`` keeps the largest component of), or a list of these: their
            ensemble, the class probabilities averaged
            (:func:`~attnunet.pipelines.inference.ensemble.load_ensemble`).
        tracking_uri: the MLflow store of a ``models:/`` model (default: ``MLFLOW_TRACKING_URI``).
        roi_size, overlap, sw_batch_size: sliding windows; None: the model spec's own.
        blend: ``"gaussian"`` (down-weights window borders) or ``"constant"``.
        tta: average the softmax over flips along the axes mirrored in training (the preset's flip_axes).
        largest_component: keep only the largest connected component of each foreground class (a
            cross-validation folder's ``postprocessing.json`` classes are kept so without it).
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
        ValueError: not a model, models that cannot be ensembled, bad options, or bad inputs (see
            :func:`discover_inputs`); or cases that could not be segmented (all listed, raised once every
            other case is written; under ``torchrun`` by rank 0 only).
        NotADirectoryError, PermissionError: ``output_dir`` cannot be written.
        FileNotFoundError: an input or the model does not exist.
        FileExistsError: outputs exist and ``overwrite`` is False (all of them are listed).

    Example:
        >>> infer("data/imagesTs", "predictions", model="runs/best.pt", tta=True)  # doctest: +SKIP
        [PosixPath('predictions/case_004.nii.gz'), PosixPath('predictions/case_005.nii.gz')]
    """
    tta, largest_component = flag("tta", tta), flag("largest_component", largest_component)
    probabilities, overwrite = flag("probabilities", probabilities), flag("overwrite", overwrite)
    progress = flag("progress", progress)
    check_writable_folder(output_dir)
    network, spec = load_ensemble(model, device="cpu", tracking_uri=tracking_uri)
    windows = Windows.for_model(
        spec, roi_size, overlap, sw_batch_size, blend=blend, tta=tta,
        largest_component=largest_component, sw_device=sw_device, device=device,
    )  # fmt: skip
    suffixes = IMAGE_SUFFIXES + (IMAGE2D_SUFFIXES if spec.preset == "image2d" else ())
    cases = discover_inputs(inputs, suffixes=suffixes, channels=spec.in_channels)

    label_paths, probability_paths = _output_paths(cases, Path(output_dir), output_format)
    refuse_existing(label_paths + (probability_paths if probabilities else []), overwrite)
    rank, world = _join_ranks(device)  # under torchrun: every rank checked every output before any is written
    planned = list(zip(cases, label_paths, probability_paths, strict=True))[rank::world]
    failures: list[str] = []
    for case, label_path, probability_path in tqdm(planned, desc="infer", unit="case", disable=not progress):
        try:
            scores, labels = apply_model(
                network, spec, case.image, windows, series_uid=case.series_uid, name=case.name, log=logger
            )
        except CASE_ERRORS as error:  # this case's file; the other cases are still segmented
            failures.append(str(error).splitlines()[0])
            logger.error("%s", failures[-1])
            continue
        if output_format == "dicom-seg":
            _write_seg(labels, case, label_path, spec)
        else:
            _write(labels, label_path, np.uint8)
        if probabilities:
            _write(scores, probability_path, np.float32)
    if world > 1:  # this rank's cases are done; rank 0 learns every rank's failures, then all leave
        every_rank: list[list[str]] = [[] for _ in range(world)]
        dist.all_gather_object(every_rank, failures)
        failures = [failure for part in every_rank for failure in part]
        leave_distributed(world)
    if failures and rank == 0:
        raise ValueError(
            f"{len(failures)} of {len(cases)} case(s) could not be segmented (the others are written): "
            + "; ".join(failures)
        )
    return label_paths
