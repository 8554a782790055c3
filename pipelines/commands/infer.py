"""``attnunet infer``: its options, one per argument of
:func:`~attnunet.pipelines.inference.predict.infer`."""

from __future__ import annotations

import argparse
import os

from attnunet.pipelines.bundle.runner import run_config
from attnunet.pipelines.inference.predict import BLEND_MODES, OUTPUT_FORMATS

__all__ = ["INFERENCE_KEYS", "add_arguments", "run"]

# The keys of configs/inference.json the flags set (dest names = keys).
INFERENCE_KEYS = (
    "input",
    "model",
    "output",
    "tracking_uri",
    "roi_size",
    "overlap",
    "sw_batch_size",
    "blend",
    "tta",
    "largest_component",
    "probabilities",
    "output_format",
    "overwrite",
    "device",
    "sw_device",
    "progress",
)


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
    parser.add_argument("--output", required=True, help="folder for the label maps")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store for a models:/ URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--roi-size", type=int, nargs="+", help="window size (default: the model's roi_size)")
    parser.add_argument(
        "--overlap", type=float, help="window overlap in [0, 1) (default: the model's, 0.25 unless planned)"
    )
    parser.add_argument(
        "--sw-batch-size", type=int, help="windows per forward pass (default: the model's, 4 unless planned)"
    )
    parser.add_argument(
        "--blend", choices=BLEND_MODES, default="gaussian", help="window blending (default: %(default)s)"
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average over flips along each axis the model was trained mirrored along (default: on)",
    )
    parser.add_argument(
        "--largest-component",
        action="store_true",
        help="keep the largest connected component per class, or per region (default: off)",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write class probabilities to OUTPUT/probabilities/ (default: off)",
    )
    parser.add_argument(
        "--output-format",
        choices=list(OUTPUT_FORMATS),
        default="nifti",
        help="label maps as NIfTI (<case>.nii.gz) or, for DICOM series inputs, one DICOM SEG each "
        "(<case>.dcm) (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing predictions (default: off)"
    )
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
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (default: shown)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet infer``: the bundle's ``configs/inference.json`` with the flags as its keys."""
    overrides = {key: value for key, value in vars(args).items() if key in INFERENCE_KEYS}
    written = run_config("inference.json", "inference", overrides)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary under torchrun, for all ranks' cases
        print(f"{len(written)} prediction(s) written to {args.output}")
    return 0
