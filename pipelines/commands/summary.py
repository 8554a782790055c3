"""``attnunet summary``: its options declared here, without torch, so ``attnunet summary --help`` does not
load torchinfo, MONAI or MLflow; :func:`run` hands the parsed options to :func:`attnunet.summary.run`."""

from __future__ import annotations

import argparse

from attnunet.pipelines.engines.config import NETWORKS
from attnunet.pipelines.options import Option, add_options

__all__ = ["NETWORK_OPTIONS", "OPTIONS", "SUMMARY_OPTIONS", "add_arguments", "network_options", "run"]


def network_options(preset_default: str | None) -> tuple[Option, ...]:
    """The options that name a network preset and an input, shared with ``attnunet export``."""
    return (
        Option(
            "preset",
            f"registered network name, one of: {', '.join(NETWORKS)}"
            + (f" (default {preset_default})" if preset_default else ""),
            preset_default,
            metavar="NAME",
        ),
        Option("kwargs", "keyword arguments for the preset, e.g. '{\"out_channels\": 3}'", metavar="JSON"),
        Option(
            "input_size",
            "input size without batch: channels then spatial sizes (default: in_channels and "
            "256x256 in 2D, 96^3 in 3D)",
            type=int,
            nargs="+",
            metavar="N",
        ),
        Option("batch_size", "batch size of the input (default 1)", 1, type=int),
    )


NETWORK_OPTIONS = network_options("attention_unet_2d")
SUMMARY_OPTIONS: tuple[Option, ...] = (
    *NETWORK_OPTIONS,
    Option("max_depth", "levels of nested modules shown (default 4)", 4, type=int),
)

OPTIONS = SUMMARY_OPTIONS  # every command module's declaration, under one name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet summary``."""
    add_options(parser, SUMMARY_OPTIONS)


def run(args: argparse.Namespace) -> int:
    """``attnunet summary``: :func:`attnunet.summary.run`."""
    from attnunet.summary import run as run_summary

    return run_summary(args)
