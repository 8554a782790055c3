"""A name -> network builder registry (like timm's ``register_model`` / ``create_model``).

Checkpoints, bundles and the CLI name a network and its keyword arguments; :func:`create_network`
rebuilds it. Registered names:

- ``attention_unet``: :class:`attnunet.AttentionUNet` itself (give ``spatial_dims``, ``in_channels``,
  ``out_channels``).
- ``attention_unet_2d``: the document's defaults, 2D, ``in_channels=3``, ``out_channels=1``.
- ``attention_unet_3d``: 3D, ``in_channels=1``, ``out_channels=2``.
- ``attention_unet_3d_small``: as ``attention_unet_3d`` with ``init_features=16`` (CPU runs). Not 8: with
  8 channels in the full-resolution decoder stage that feeds the 1x1 head, training on real MR (MSD
  Hippocampus) lost one of the two foreground classes from 2 seeds of 3, and widening that one stage
  to 16 alone fixed it (benchmarks/README.md, issue 10).
- ``monai_attention_unet``, ``monai_unet``: MONAI's ``AttentionUnet`` and ``UNet`` with the same widths
  (``init_features * 2**i``, ``i = 0..depth``), as baselines.
- ``nnunet_plain_conv_unet``: nnU-Net's own ``PlainConvUNet`` (``pip install --no-deps
  dynamic-network-architectures``), as nnU-Net plans it, as a baseline.

Every preset's defaults can be overridden by keyword, e.g.
``create_network("attention_unet_3d", out_channels=3, attention="gate")``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from monai.networks import nets
from monai.utils import look_up_option
from torch import nn

from attnunet.network import AttentionUNet

__all__ = ["create_network", "list_networks", "network_arguments", "register_network"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a network builder (a class or a function returning a module) by name.

    Args:
        name: the registry name; registering a name twice raises ``ValueError``.

    Example::

        >>> @register_network("my_unet")
        ... def my_unet(spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2) -> nn.Module:
        ...     return AttentionUNet(spatial_dims, in_channels, out_channels, attention="none")
        >>> create_network("my_unet").attention
        'none'
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"register_network: the name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_networks() -> list[str]:
    """The registered network names, sorted."""
    return sorted(_REGISTRY)


def network_arguments(name: str) -> list[str]:
    """The keyword arguments the network registered as ``name`` accepts.

    Example:
        >>> "init_features" in network_arguments("monai_unet")
        True
    """
    return list(inspect.signature(look_up_option(name, _REGISTRY)).parameters)


def create_network(name: str, **kwargs: object) -> nn.Module:
    """Build the network registered as ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a name from :func:`list_networks`.
        kwargs: keyword arguments of the builder (they override a preset's defaults).

    Raises:
        ValueError: ``name`` is not registered (the message lists the names and suggests the closest),
            or ``kwargs`` do not fit the builder (the message lists the arguments it accepts).

    Example::

        >>> import torch
        >>> net = create_network("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, depth=2)
        >>> net(torch.randn(1, 1, 33, 30, 17)).shape  # padded to a multiple of 2**depth, cropped back
        torch.Size([1, 3, 33, 30, 17])
    """
    builder = look_up_option(name, _REGISTRY)
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"create_network({name!r}): {error}; it accepts {', '.join(signature.parameters)}"
        ) from None
    return builder(**kwargs)


def _widths(init_features: int, depth: int) -> tuple[int, ...]:
    return tuple(init_features * 2**i for i in range(depth + 1))


register_network("attention_unet")(AttentionUNet)
register_network("attention_unet_2d")(
    functools.partial(AttentionUNet, spatial_dims=2, in_channels=3, out_channels=1, init_features=32)
)
register_network("attention_unet_3d")(
    functools.partial(AttentionUNet, spatial_dims=3, in_channels=1, out_channels=2, init_features=32)
)
register_network("attention_unet_3d_small")(
    functools.partial(AttentionUNet, spatial_dims=3, in_channels=1, out_channels=2, init_features=16)
)


@register_network("monai_attention_unet")
def monai_attention_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    init_features: int = 32,
    depth: int = 4,
    *,
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's ``AttentionUnet`` (Oktay gates, strided convolutions) with channels
    ``init_features * 2**i``, ``i = 0..depth``, and stride 2 at each level."""
    return nets.AttentionUnet(
        spatial_dims, in_channels, out_channels, _widths(init_features, depth), (2,) * depth, dropout=dropout
    )


@register_network("monai_unet")
def monai_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    init_features: int = 32,
    depth: int = 4,
    *,
    num_res_units: int = 0,
    norm: str | tuple = "instance",
    act: str | tuple = "prelu",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's ``UNet`` with channels ``init_features * 2**i``, ``i = 0..depth``, stride 2 at each level
    (MONAI's own defaults for the other options)."""
    return nets.UNet(
        spatial_dims,
        in_channels,
        out_channels,
        _widths(init_features, depth),
        (2,) * depth,
        num_res_units=num_res_units,
        norm=norm,
        act=act,
        dropout=dropout,
    )


@register_network("nnunet_plain_conv_unet")
def nnunet_plain_conv_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: tuple[int, ...] = (32, 64, 128, 256),
    *,
    max_features: int = 320,
) -> nn.Module:
    """nnU-Net's ``PlainConvUNet`` as its planner configures it: 3x3(x3) kernels, stride 1 in the first
    stage and 2 after, two convolutions per stage in the encoder and the decoder, instance norm
    (eps 1e-5, affine), leaky ReLU (slope 0.01), no deep supervision. ``features`` are capped at
    ``max_features`` (320 in 3D, 512 in 2D for nnU-Net). The defaults are nnU-Net's 3d_fullres plan for
    MSD Hippocampus (4 stages, 32...256).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"nnunet_plain_conv_unet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        raise ImportError(
            "nnunet_plain_conv_unet needs nnU-Net's network package: pip install --no-deps "
            "dynamic-network-architectures (--no-deps: its timm and torchvision would replace your torch)"
        ) from None
    stages = len(features)
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=[min(int(f), max_features) for f in features],
        conv_op=nn.Conv3d if spatial_dims == 3 else nn.Conv2d,
        kernel_sizes=3,
        strides=[1] + [2] * (stages - 1),
        n_conv_per_stage=2,
        num_classes=out_channels,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
