"""``attnunet export``: its options declared here, without torch, so ``attnunet export --help`` does not
load torch, MONAI or MLflow; :func:`run` hands the parsed options to :func:`attnunet.export.run`."""

from __future__ import annotations

import argparse

from attnunet.pipelines.commands.summary import network_options
from attnunet.pipelines.options import Option, add_options

__all__ = ["EXPORT_OPTIONS", "ONNX_OPSET", "OPTIONS", "add_arguments", "run"]

ONNX_OPSET = 23  # attnunet.export.ONNX_OPSET, spelled out so --help needs no torch (checked equal by a test)

EXPORT_OPTIONS: tuple[Option, ...] = (
    *network_options(None),
    Option("checkpoint", "an attnunet checkpoint to export instead of a fresh --preset"),
    Option("format", "torchscript (default) or onnx", "torchscript"),
    Option("output", "the file to write", required=True),
    Option("method", "TorchScript method: script (default) or trace", "script"),
    Option("opset", f"ONNX opset (default {ONNX_OPSET})", ONNX_OPSET, type=int),
    Option("overwrite", "replace --output if it exists", False, action="store_true"),
)

OPTIONS = EXPORT_OPTIONS  # every command module's declaration, under one name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet export``."""
    add_options(parser, EXPORT_OPTIONS)


def run(args: argparse.Namespace) -> int:
    """``attnunet export``: :func:`attnunet.export.run`."""
    from attnunet.export import run as run_export

    return run_export(args)
