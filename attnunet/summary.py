"""Per-layer summary and parameter count of a network, by torchinfo.

CLI::

    attnunet summary                                              # attention_unet_2d, input (3, 256, 256)
    attnunet summary --preset attention_unet_3d --input-size 1 96 96 96
    attnunet summary --preset attention_unet --input-size 1 128 128 \
        --kwargs '{"spatial_dims": 2, "in_channels": 1, "out_channels": 2}'
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torchinfo
from torch import nn

from attnunet.networks import create_network

__all__ = [
    "default_input_size",
    "network_from_args",
    "run",
    "summarize",
]

# default spatial size per number of spatial dims: 256x256 in 2D, and a common 3D patch
DEFAULT_SPATIAL = {2: 256, 3: 96}


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """``(in_channels, *spatial)`` with 256x256 for a 2D and 96^3 for a 3D network."""
    dims = getattr(model, "spatial_dims", None) or getattr(model, "dimensions", None)
    if dims not in DEFAULT_SPATIAL or not hasattr(model, "in_channels"):
        raise ValueError(f"cannot infer an input size for {type(model).__name__}; give --input-size")
    return (model.in_channels, *[DEFAULT_SPATIAL[dims]] * dims)


def summarize(
    network: str | nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    batch_size: int = 1,
    max_depth: int = 4,
    verbose: int = 0,
    **network_kwargs: object,
) -> torchinfo.ModelStatistics:
    """Run torchinfo's summary of ``network`` for one input of ``input_size``.

    Args:
        network: a registry name (see :func:`attnunet.list_networks`) or a module.
        input_size: ``(channels, *spatial)`` without the batch dim; ``None``: ``(in_channels, 256, 256)``
            for 2D, ``(in_channels, 96, 96, 96)`` for 3D.
        batch_size: batch size of the summary's input.
        max_depth: how many levels of nested modules the table shows (torchinfo's ``depth``).
        verbose: torchinfo's verbosity (0: return the statistics without printing).
        network_kwargs: keyword arguments for :func:`attnunet.create_network` when ``network`` is a name.

    Returns:
        torchinfo's ``ModelStatistics``; ``str()`` of it is the table, ``.total_params`` the count.

    Raises:
        ValueError: unknown name or bad keyword arguments, or an input size the network does not take.

    Example::

        >>> stats = summarize("attention_unet_2d", (3, 256, 256))
        >>> print(stats)  # doctest: +ELLIPSIS
        =====...
        Layer (type:depth-idx)                        Output Shape              Param #
        ...
        Total params: ...
    """
    if isinstance(network, str):
        network = create_network(network, **network_kwargs)
    elif network_kwargs:
        raise ValueError("summarize: keyword arguments are for a registry name, not for a module")
    input_size = tuple(default_input_size(network) if input_size is None else input_size)
    sizes = (batch_size, *input_size)
    if len(input_size) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(
            "summarize: input_size must be (channels, *spatial) positive ints and batch_size a positive "
            f"int, got input_size={input_size}, batch_size={batch_size}"
        )
    try:
        return torchinfo.summary(network, input_size=sizes, depth=max_depth, verbose=verbose, device="cpu")
    except RuntimeError as error:
        # torchinfo wraps the network's own input check; surface that message, not torchinfo's
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise


def _json_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--kwargs is not valid JSON ({error}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs must be a JSON object of keyword arguments, got {text!r}")
    return kwargs


def network_from_args(args: argparse.Namespace) -> nn.Module:
    """Build the network that ``--preset`` and ``--kwargs`` name."""
    return create_network(args.preset, **_json_kwargs(args.kwargs))


def run(args: argparse.Namespace) -> int:
    """``attnunet summary``: print the per-layer table and the parameter count."""
    stats = summarize(
        network_from_args(args), args.input_size, batch_size=args.batch_size, max_depth=args.max_depth
    )
    print(stats)
    return 0
