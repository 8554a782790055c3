"""``attnunet bundle init``: a MONAI bundle for your own dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``attnunet bundle``: ``init NAME --dir DIR`` and the dataset's settings."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write a MONAI bundle for your own dataset",
        description="Write a MONAI bundle (configs for train, inference, evaluate, multi-GPU training) for "
        "your dataset's classes and preprocessing. Then, inside it: python -m monai.bundle run "
        "--config_file DIR/NAME/configs/train.json --bundle_root DIR/NAME --data DATA",
    )
    init.add_argument("name", help="the bundle's folder name")
    init.add_argument("--dir", required=True, type=Path, help="folder to create the bundle in")
    init.add_argument(
        "--classes",
        nargs="+",
        default=["background", "organ", "lesion"],
        help="class names, background first (default: %(default)s)",
    )
    init.add_argument("--preset", default="ct", help="preprocessing preset: ct, mr or image2d (default: ct)")
    init.add_argument(
        "--roi-size",
        nargs="+",
        type=int,
        help="patch / sliding-window size per spatial dim (default: the plan's)",
    )
    init.add_argument("--spatial-dims", type=int, help="2 or 3 (default: 2 for image2d, else 3)")
    init.add_argument(
        "--pixdim",
        nargs="+",
        type=float,
        help="spacing to resample to, mm per spatial dim (default: the plan's)",
    )
    init.add_argument("--in-channels", type=int, help="image channels (default: 3 for image2d, else 1)")
    init.add_argument("--data", type=Path, help="dataset to train on by default (default: the demo data)")
    init.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("A_MIN", "A_MAX"),
        help="CT preset: the HU window scaled to [0, 1] (default: the plan's foreground percentiles)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet bundle``; returns the exit code."""
    from attnunet.pipelines.bundle.templates import init_bundle  # MONAI: loaded only to run

    root = init_bundle(
        args.name,
        args.dir,
        classes=args.classes,
        preset=args.preset,
        roi_size=args.roi_size,
        spatial_dims=args.spatial_dims,
        pixdim=args.pixdim,
        in_channels=args.in_channels,
        data=args.data,
        preset_kwargs=None if args.window is None else {"a_min": args.window[0], "a_max": args.window[1]},
    )
    print(
        f"wrote {root}\nnext: python -m monai.bundle run --config_file {root}/configs/train.json "
        f"--bundle_root {root}"
    )
    return 0
