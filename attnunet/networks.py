"""A name -> network builder registry (like timm's ``register_model`` / ``create_model``).

Checkpoints, bundles and the CLI name a network and its keyword arguments; :func:`create_network`
rebuilds it. Registered names:

- ``attention_unet``: :class:`attnunet.AttentionUNet` itself (give ``spatial_dims``, ``in_channels``,
  ``out_channels``); with ``pool_sizes`` and ``kernel_sizes`` of 1 along one axis at every level, the
  same network in 2D applied slice by slice (:class:`attnunet.slicewise.SliceWise`). The presets below
  build it the same way.
- ``attention_unet_2d``: the 2D network of 256 x 256 RGB images, ``in_channels=3``, ``out_channels=1``.
- ``attention_unet_3d``: 3D, ``in_channels=1``, ``out_channels=2``.
- ``attention_unet_3d_small``: as ``attention_unet_3d`` with ``init_features=16`` (CPU runs). Not 8: with
  8 channels in the full-resolution decoder stage that feeds the 1x1 head, training on real MR (MSD
  Hippocampus) lost one of the two foreground classes from 2 seeds of 3, and widening that one stage
  to 16 alone fixed it (benchmarks/README.md, "does every class get learnt?").
- ``monai_attention_unet``, ``monai_unet``: MONAI's ``AttentionUnet`` and ``UNet`` with the same widths
  (``init_features * 2**i``, ``i = 0..depth``), as baselines.
- ``nnunet_plain_conv_unet``: nnU-Net's own ``PlainConvUNet`` (``pip install --no-deps
  dynamic-network-architectures``), as nnU-Net plans it, as a baseline.

The three baselines take a plan's ``pool_sizes`` and ``kernel_sizes`` as ``AttentionUNet`` does, so on
thick slices they pool in-plane only too; MONAI's two take one kernel size for all levels (each builder
says what it gets).

Every preset's defaults can be overridden by keyword, e.g.
``create_network("attention_unet_3d", out_channels=3, attention="gate")``; per-level, per-axis geometry
is plain lists (as read from JSON), e.g. ``create_network("attention_unet_3d", depth=2,
pool_sizes=[[2, 2, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 1], [3, 3, 1], [3, 3, 3]])`` for thick slices.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

from monai.networks import nets
from monai.utils import look_up_option
from torch import nn

from attnunet.geometry import sizes_per_level
from attnunet.slicewise import attention_unet

__all__ = ["create_network", "list_networks", "network_arguments", "register_network"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a network builder (a class or a function returning a module) by name.

    Args:
        name: the registry name; registering a name twice raises ``ValueError``.

    Example::

        >>> from attnunet import AttentionUNet
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


def _length(network: str, name: str, value: object) -> int:
    """``len(value)`` of a list argument, or a ``ValueError`` naming ``network`` and ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{network}: {name} must be a list of per-axis lists, got {value!r}")
    return len(value)


def _monai_geometry(
    network: str,
    spatial_dims: int,
    depth: int,
    pool_sizes: Sequence[Sequence[int]] | None,
    kernel_sizes: Sequence[Sequence[int]] | None,
) -> tuple[tuple[int, ...] | tuple[tuple[int, ...], ...], int | tuple[int, ...]]:
    """MONAI's ``strides`` and single ``kernel_size`` for the per-level ``pool_sizes`` and ``kernel_sizes``:
    the pool sizes as the strides, and the elementwise max of the kernels (3 along every axis that some
    level convolves with 3). ``None`` gives MONAI's arguments as before: stride 2 per level, kernel 3."""
    strides: tuple = (2,) * depth
    kernel: int | tuple[int, ...] = 3
    if pool_sizes is not None:
        strides = sizes_per_level(
            network, "pool_sizes", pool_sizes, depth, f"depth={depth}", spatial_dims, odd=False
        )
    if kernel_sizes is not None:
        kernels = sizes_per_level(
            network,
            "kernel_sizes",
            kernel_sizes,
            depth + 1,
            f"depth + 1 = {depth + 1}",
            spatial_dims,
            odd=True,
        )
        kernel = tuple(max(level[axis] for level in kernels) for axis in range(spatial_dims))
    return strides, kernel


register_network("attention_unet")(attention_unet)
register_network("attention_unet_2d")(
    functools.partial(attention_unet, spatial_dims=2, in_channels=3, out_channels=1, init_features=32)
)
register_network("attention_unet_3d")(
    functools.partial(attention_unet, spatial_dims=3, in_channels=1, out_channels=2, init_features=32)
)
register_network("attention_unet_3d_small")(
    functools.partial(attention_unet, spatial_dims=3, in_channels=1, out_channels=2, init_features=16)
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
    pool_sizes: Sequence[Sequence[int]] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """MONAI's ``AttentionUnet`` (Oktay gates, strided convolutions) with channels
    ``init_features * 2**i``, ``i = 0..depth``, and stride 2 at each level.

    Args:
        pool_sizes: ``depth`` lists of ``spatial_dims`` ints in {1, 2}, as :class:`attnunet.AttentionUNet`
            takes them: level ``i``'s strided convolution (and the transposed one back) strides by
            ``pool_sizes[i - 1]`` per axis, e.g. ``[[2, 2, 1], ...]`` keeps thick slices. ``None``: 2.
        kernel_sizes: ``depth + 1`` lists of ``spatial_dims`` odd ints (stem, then levels 1 ... depth).
            MONAI's ``AttentionUnet`` takes one ``kernel_size`` for every level, so it gets their
            elementwise max: 3 along each axis that any level convolves with 3 (the plan's in-plane-only
            kernels at the fine levels become 3 along the slice axis too; the coarse levels keep the
            inter-slice context the plan gives them, which a smaller kernel would take away). Its
            transposed convolutions (``up_kernel_size``) and the 3x3(x3) convolution merging each skip stay 3
            on every axis: MONAI fixes the latter. ``None``: 3.
    """
    strides, kernel = _monai_geometry("monai_attention_unet", spatial_dims, depth, pool_sizes, kernel_sizes)
    return nets.AttentionUnet(
        spatial_dims,
        in_channels,
        out_channels,
        _widths(init_features, depth),
        strides,
        kernel_size=kernel,
        dropout=dropout,
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
    pool_sizes: Sequence[Sequence[int]] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """MONAI's ``UNet`` with channels ``init_features * 2**i``, ``i = 0..depth``, stride 2 at each level
    (MONAI's own defaults for the other options).

    Args:
        pool_sizes: ``depth`` lists of ``spatial_dims`` ints in {1, 2}, as :class:`attnunet.AttentionUNet`
            takes them: level ``i``'s strided convolution (and the transposed one back) strides by
            ``pool_sizes[i - 1]`` per axis, e.g. ``[[2, 2, 1], ...]`` keeps thick slices. ``None``: 2.
        kernel_sizes: ``depth + 1`` lists of ``spatial_dims`` odd ints (stem, then levels 1 ... depth).
            MONAI's ``UNet`` takes one ``kernel_size`` for every level, so it gets their elementwise max:
            3 along each axis that any level convolves with 3 (the plan's in-plane-only kernels at the
            fine levels become 3 along the slice axis too; the coarse levels keep the inter-slice context
            the plan gives them, which a smaller kernel would take away). ``up_kernel_size`` stays 3.
            ``None``: 3.
    """
    strides, kernel = _monai_geometry("monai_unet", spatial_dims, depth, pool_sizes, kernel_sizes)
    return nets.UNet(
        spatial_dims,
        in_channels,
        out_channels,
        _widths(init_features, depth),
        strides,
        kernel_size=kernel,
        num_res_units=num_res_units,
        norm=norm,
        act=act,
        dropout=dropout,
    )


# nnU-Net's widths: 32 at full resolution (UNet_base_num_features), doubling per stage
_NNUNET_BASE_FEATURES = 32
_NNUNET_HIPPOCAMPUS_FEATURES = (32, 64, 128, 256)


@register_network("nnunet_plain_conv_unet")
def nnunet_plain_conv_unet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: Sequence[int] | None = None,
    *,
    max_features: int = 320,
    pool_sizes: Sequence[Sequence[int]] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """nnU-Net's ``PlainConvUNet`` as its planner configures it: 3x3(x3) kernels, stride 1 in the first
    stage and 2 after (per stage and axis from ``kernel_sizes`` and ``pool_sizes`` when given, as
    nnU-Net plans thick slices), two convolutions per stage in the encoder and the decoder, instance norm
    (eps 1e-5, affine), leaky ReLU (slope 0.01), no deep supervision.

    Args:
        features: features per stage, one stage per resolution (the first at full resolution), capped at
            ``max_features`` (320 in 3D, 512 in 2D for nnU-Net). ``None`` (default): nnU-Net's
            ``32 * 2**i`` for ``len(pool_sizes) + 1`` stages (or ``len(kernel_sizes)``) when they are given,
            otherwise nnU-Net's 3d_fullres plan for MSD Hippocampus (4 stages, 32...256).
        pool_sizes: one list of ``spatial_dims`` ints in {1, 2} per stage after the first, as
            :class:`attnunet.AttentionUNet` takes them (``depth`` entries): the strides of the stages,
            ``[[1, ...]] + pool_sizes`` in nnU-Net's plan (``pool_op_kernel_sizes``). ``None``: 2.
        kernel_sizes: one list of ``spatial_dims`` odd ints per stage (``depth + 1`` entries, nnU-Net's
            ``conv_kernel_sizes``); the decoder stage at a resolution uses that stage's kernels, as
            nnU-Net's. ``None``: 3.

    Raises:
        ValueError: ``features``, ``pool_sizes`` and ``kernel_sizes`` disagree on the number of stages.
    """
    name = "nnunet_plain_conv_unet"
    if spatial_dims not in (2, 3):
        raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    given = features is not None
    if features is None and pool_sizes is not None:
        features = _widths(_NNUNET_BASE_FEATURES, _length(name, "pool_sizes", pool_sizes))
    elif features is None and kernel_sizes is not None:
        features = _widths(_NNUNET_BASE_FEATURES, _length(name, "kernel_sizes", kernel_sizes) - 1)
    elif features is None:
        features = _NNUNET_HIPPOCAMPUS_FEATURES
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence) or len(features) < 2:
        raise ValueError(f"{name}: features must be at least 2 ints (one per stage), got {features!r}")
    stages = len(features)
    strides: int | list = [1] + [2] * (stages - 1)
    kernels: int | list = 3
    source = f"features {tuple(features)}" if given else "pool_sizes"
    hint = "; leave features out to get nnU-Net's 32 * 2**i per stage" if given else ""
    for argument, value, count in (
        ("pool_sizes", pool_sizes, stages - 1),
        ("kernel_sizes", kernel_sizes, stages),
    ):
        if value is not None and _length(name, argument, value) != count:
            raise ValueError(
                f"{name}: {argument} has {len(value)} entries but {source} gives {stages} stages, "
                f"so it needs {count}{hint}"
            )
    if pool_sizes is not None:
        pools = sizes_per_level(
            name, "pool_sizes", pool_sizes, stages - 1, "len(features) - 1", spatial_dims, False
        )
        strides = [[1] * spatial_dims] + [list(pool) for pool in pools]
    if kernel_sizes is not None:
        kernels = sizes_per_level(
            name, "kernel_sizes", kernel_sizes, stages, "len(features)", spatial_dims, True
        )
        kernels = [list(kernel) for kernel in kernels]
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        raise ImportError(
            "nnunet_plain_conv_unet needs nnU-Net's network package: pip install --no-deps "
            "dynamic-network-architectures (--no-deps: its timm and torchvision would replace your torch)"
        ) from None
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=[min(int(f), max_features) for f in features],
        conv_op=nn.Conv3d if spatial_dims == 3 else nn.Conv2d,
        kernel_sizes=kernels,
        strides=strides,
        n_conv_per_stage=2,
        num_classes=out_channels,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
