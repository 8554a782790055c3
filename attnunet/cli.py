"""The ``attnunet`` command line.

Each command lives in the module that does its work and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``. The table below maps command names to those
modules; a module is imported only when its command runs, so ``attnunet --help`` stays fast and
does not pull in MLflow or MONAI's engines. A command module imports only its option declarations
(:mod:`attnunet.pipelines.options`) at module level and the rest in its ``run``, so
``attnunet CMD --help`` loads neither torch nor MONAI (importing any of MONAI loads MLflow and ignite).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from attnunet.atomic import DiskFullError

__all__ = ["COMMANDS", "USER_ERRORS", "configure_logging", "key_values", "main"]

# Errors that mean "the input, the arguments or the machine's room are wrong", as opposed to a bug.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
    DiskFullError,  # a full disk or quota, or the file-size limit: attnunet.atomic names the file
)

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "attnunet.pipelines.commands.demo",
        "write the embedded demo data, train, register, segment, report Dice",
    ),
    "plan": (
        "attnunet.pipelines.commands.plan",
        "fingerprint a dataset and write plan.json (patch, spacing, batch)",
    ),
    "train": ("attnunet.pipelines.commands.train", "train a network with MONAI engines, tracked in MLflow"),
    "cv": (
        "attnunet.pipelines.commands.cv",
        "summarise a cross-validation's finished folds (Dice, HD95, surface Dice, post-processing)",
    ),
    "infer": (
        "attnunet.pipelines.commands.infer",
        "sliding-window segmentation of files, folders or DICOM series",
    ),
    "evaluate": (
        "attnunet.pipelines.commands.evaluate",
        "Dice, HD95 and surface Dice of predictions against labels",
    ),
    "sync": (
        "attnunet.pipelines.commands.sync",
        "send what a training run kept on disk (metrics, model) to an MLflow store",
    ),
    "summary": (
        "attnunet.pipelines.commands.summary",
        "per-layer summary and parameter count of a network preset",
    ),
    "export": ("attnunet.pipelines.commands.export", "export a network or checkpoint to TorchScript or ONNX"),
    "bundle": ("attnunet.pipelines.commands.bundle", "write a MONAI bundle for your own dataset"),
    "view": (
        "attnunet.pipelines.commands.view",
        "serve evaluate's report, or one image with its overlays, to a browser",
    ),
}


def key_values(pairs: Sequence[str] | None, option: str) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options (``--network-option``, ``--set``); values are read as JSON
    when they parse (numbers, lists), else kept as words (``preset=ct``).

    Example:
        >>> key_values(["depth=3", "norm=instance"], "--network-option")
        {'depth': 3, 'norm': 'instance'}
    """
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def configure_logging(verbose: bool = False) -> None:
    """attnunet's own progress (one line per epoch, per case) at INFO, or DEBUG when ``verbose``; other
    libraries only warn (highdicom logs every attribute it copies)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("attnunet").setLevel(logging.DEBUG if verbose else logging.INFO)


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnunet",
        description="Attention U-Net segmentation toolkit on MONAI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items())
        + "\n\nRun 'attnunet COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG level and show tracebacks of errors"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnunet`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_level_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    command = top.parse_args(argv[:1]).command
    configure_logging(verbose)
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"attnunet {command}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as error:
        # Bad input is reported as one line naming the file/argument; -v keeps the traceback.
        if verbose:
            raise
        print(f"attnunet {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
