"""Export a network to TorchScript or ONNX.

- TorchScript: ``torch.jit.script`` by default (the network scripts as is: padding, cropping and the
  attention are all scriptable, so the file takes any input size); ``method="trace"`` records one input.
- ONNX: ``torch.onnx.export`` with the dynamo exporter and opset 23, where the non-local attention
  becomes ONNX's fused ``Attention`` operator (so runtimes can use their memory-efficient kernels instead
  of a positions x positions matrix). The graph is exported for the example input's shape (the padding
  to a multiple of the network's pooling, per axis, is resolved at export time); use sliding-window
  inference with that ROI size for other images. Weights are stored inside the ``.onnx`` file (no
  external data).

Files are written to a temporary name beside ``path`` and renamed when complete; an existing file is
never replaced unless ``overwrite=True``.

CLI::

    attnunet export --preset attention_unet_3d_small --format torchscript --output model.ts
    attnunet export --checkpoint runs/best.pt --format onnx --output model.onnx   # ROI size from config
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

import torch
from monai.utils import look_up_option
from torch import nn

from attnunet.atomic import atomic_output, refuse_existing
from attnunet.summary import default_input_size, network_from_args

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "export_onnx", "export_torchscript", "run"]

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 23  # the first opset with the fused Attention operator

logger = logging.getLogger(__name__)


def _check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    refuse_existing([path], overwrite)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    method: str = "script",
    example_input: torch.Tensor | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (switched to eval mode) as a TorchScript file.

    Args:
        model: the network.
        path: the output file (conventionally ``.ts`` or ``.pt``).
        method: ``"script"`` (default; keeps the network's any-size padding) or ``"trace"`` (needs
            ``example_input``; the file then runs that input's shape only).
        example_input: an input tensor, for ``"trace"``.
        overwrite: replace an existing ``path``.

    Returns:
        ``path``; load it with ``torch.jit.load(path)``.

    Example::

        >>> from attnunet import create_network
        >>> export_torchscript(create_network("attention_unet_3d_small", depth=2), "model.ts")
        PosixPath('model.ts')
    """
    method = look_up_option(method, ("script", "trace"))
    path = _check_output(path, overwrite)
    if method == "trace" and example_input is None:
        raise ValueError("export_torchscript: method='trace' needs an example_input")
    if example_input is not None and hasattr(model, "check_input_shape"):
        model.check_input_shape(list(example_input.shape))
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns that shape checks and padding become constants: the documented trace behaviour
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        module = torch.jit.script(model) if method == "script" else torch.jit.trace(model, example_input)
    with atomic_output(path) as tmp:
        torch.jit.save(module, tmp)
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor,
    *,
    opset_version: int = ONNX_OPSET,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (switched to eval mode) as an ONNX file for inputs of ``example_input``'s shape.

    Args:
        model: the network.
        path: the output ``.onnx`` file.
        example_input: an input of the shape the graph is exported for; the input is named ``"image"``
            and the output ``"logits"``.
        opset_version: ONNX opset; 23 (default) keeps the attention as one ``Attention`` node, older
            opsets spell it as MatMul/Softmax.
        overwrite: replace an existing ``path``.

    Returns:
        ``path``, checked by ``onnx.checker``.

    Example::

        >>> from attnunet import create_network
        >>> export_onnx(create_network("attention_unet_2d", depth=2), "model.onnx", torch.randn(1, 3, 64, 64))
        PosixPath('model.onnx')
    """
    import onnx  # the dev/export extra; imported only when exporting

    path = _check_output(path, overwrite)
    if hasattr(model, "check_input_shape"):  # a clear ValueError before the exporter's own traceback
        model.check_input_shape(list(example_input.shape))
    model = model.eval()
    program = torch.onnx.export(
        model,
        (example_input,),
        dynamo=True,
        opset_version=opset_version,
        input_names=["image"],
        output_names=["logits"],
        verbose=False,
    )

    with atomic_output(path) as tmp:
        program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
    return path


def run(args: argparse.Namespace) -> int:
    """``attnunet export``: build the network (preset or checkpoint) and write it in ``--format``."""
    export_format = look_up_option(args.format, EXPORT_FORMATS)
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines list every graph rewrite
        logging.getLogger(name).setLevel(logging.WARNING)
    if (args.preset is None) == (args.checkpoint is None):
        raise ValueError("give exactly one of --preset NAME or --checkpoint PATH")
    input_size = args.input_size
    if args.checkpoint is not None:
        if args.kwargs:
            raise ValueError("--kwargs applies to --preset; a checkpoint rebuilds its own network")
        from attnunet.checkpoints import model_from_checkpoint

        model, spec = model_from_checkpoint(args.checkpoint)
        if input_size is None:
            input_size = [spec.in_channels, *spec.roi_size]
    else:
        model = network_from_args(args)
    input_size = list(default_input_size(model) if input_size is None else input_size)
    if len(input_size) < 2 or min(input_size) < 1 or args.batch_size < 1:
        raise ValueError(f"--input-size must be channels then spatial sizes, all positive, got {input_size}")
    if export_format == "torchscript":
        example = torch.randn(args.batch_size, *input_size) if args.method == "trace" else None
        path = export_torchscript(
            model, args.output, method=args.method, example_input=example, overwrite=args.overwrite
        )
    else:
        example = torch.randn(args.batch_size, *input_size)
        path = export_onnx(model, args.output, example, opset_version=args.opset, overwrite=args.overwrite)
    logger.info("wrote %s (%s)", path, export_format)
    print(path)
    return 0
