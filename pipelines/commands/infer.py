"""``attnunet infer``: its options, one per argument of
:func:`~attnunet.pipelines.inference.predict.infer` and key of the bundle's ``configs/inference.json``,
declared once in :data:`INFER_OPTIONS`. Only :func:`run` imports the inference (torch, MONAI), so
``attnunet infer --help`` starts in a fraction of a second."""

from __future__ import annotations

import argparse
import os

from attnunet.defaults import OVERLAP, SW_BATCH_SIZE
from attnunet.pipelines.options import Option, add_options, config_overrides

__all__ = [
    "BLEND_MODES",
    "INFERENCE_KEYS",
    "INFER_OPTIONS",
    "OPTIONS",
    "OUTPUT_FORMATS",
    "add_arguments",
    "run",
]

# predict.py's BLEND_MODES and OUTPUT_FORMATS, spelled out so --help needs no torch (checked equal by
# tests/test_option_declarations.py).
BLEND_MODES = ("gaussian", "constant")
OUTPUT_FORMATS = ("nifti", "dicom-seg")

INFER_OPTIONS: tuple[Option, ...] = (
    Option(
        "input",
        "image file(s), folder(s), DICOM series folder(s) or CSV file(s)",
        flag=None,
        nargs="+",
        required=True,
    ),
    Option(
        "model",
        "checkpoint file, MONAI bundle folder, MLflow model URI (models:/NAME@ALIAS) or cross-validation "
        "folder (all its folds); several: their ensemble, the class probabilities averaged",
        nargs="+",
        required=True,
    ),
    Option("output", "folder for the label maps", required=True),
    Option(
        "tracking_uri",
        "MLflow store for a models:/ URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    ),
    Option("roi_size", "window size (default: the model's roi_size)", type=int, nargs="+"),
    Option(
        "overlap",
        f"window overlap in [0, 1) (default: the model's, {OVERLAP} unless planned)",
        type=float,
    ),
    Option(
        "sw_batch_size",
        f"windows per forward pass (default: the model's, {SW_BATCH_SIZE} unless planned)",
        type=int,
    ),
    Option("blend", "window blending (default: %(default)s)", "gaussian", choices=BLEND_MODES),
    Option(
        "tta",
        "average over flips along each axis the model was trained mirrored along (default: on)",
        True,
        action=argparse.BooleanOptionalAction,
    ),
    Option(
        "largest_component",
        "keep the largest connected component of every class, or region (default: off; a "
        "cross-validation folder's postprocessing.json still applies to the classes it lists)",
        False,
        action="store_true",
    ),
    Option(
        "probabilities",
        "also write class probabilities to OUTPUT/probabilities/ (default: off)",
        False,
        action="store_true",
    ),
    Option(
        "output_format",
        "label maps as NIfTI (<case>.nii.gz) or, for DICOM series inputs, one DICOM SEG each "
        "(<case>.dcm) (default: %(default)s)",
        "nifti",
        choices=OUTPUT_FORMATS,
    ),
    Option("overwrite", "replace existing predictions (default: off)", False, action="store_true"),
    Option(
        "device",
        "where the volume is kept and stitched: auto (by free GPU memory), cpu or cuda (default: auto)",
        "auto",
    ),
    Option(
        "sw_device",
        "where the network runs on each window: auto (CUDA if available), cpu, cuda[:N] (default: auto)",
        "auto",
    ),
    Option("progress", "no progress bar (default: shown)", True, flag="--no-progress", action="store_false"),
)
OPTIONS = INFER_OPTIONS  # every command module's declaration, under one name
# The keys of configs/inference.json the flags set (dest names = keys).
INFERENCE_KEYS = tuple(opt.key for opt in INFER_OPTIONS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet infer``."""
    add_options(parser, INFER_OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet infer``: the bundle's ``configs/inference.json`` with the flags as its keys."""
    from attnunet.pipelines.bundle.runner import run_config

    written = run_config("inference.json", "inference", config_overrides(INFER_OPTIONS, args))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary under torchrun, for all ranks' cases
        print(f"{len(written)} prediction(s) written to {args.output}")
    return 0
