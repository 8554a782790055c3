"""The Attention U-Net (a U-Net whose decoder uses non-local self-attention), in 2D and 3D."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import split_args
from monai.utils import look_up_option
from torch import nn

from attnunet.blocks import (
    DecoderStage,
    Down,
    TwoConv,
    channels_last,
    forward_inference,
    inference_path_applies,
)
from attnunet.geometry import sizes_per_level

__all__ = ["ATTENTION_MODES", "AttentionUNet"]

ATTENTION_MODES = ("nonlocal", "gate", "none")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"AttentionUNet: {name} must be a positive int, got {value!r}")
    return value


class AttentionUNet(nn.Module):
    """U-Net whose decoder levels apply attention, in 2D and 3D.

    Architecture: a stem of two 3x3 conv/norm/act at ``init_features`` (full resolution); ``depth``
    encoder stages, each a 2x max-pool and two convolutions that double the features
    (32, 64, 128, 256, 512 by default); a bottom block of two convolutions; ``depth`` decoder stages, each
    ``attention -> 2x linear upsampling -> concat with the skip -> one 3x3 convolution`` halving the
    features; a final 1x1 convolution to ``out_channels`` logits. ``pool_sizes`` and ``kernel_sizes``
    change the 2x and the 3x3 per level and per axis (nnU-Net's ``pool_op_kernel_sizes`` and
    ``conv_kernel_sizes``, MONAI ``DynUNet``'s ``strides`` and ``kernel_size``): the decoder stage that
    starts at level ``k`` upsamples by level ``k``'s pooling, and the stage that ends at level ``k`` uses
    level ``k``'s kernel.

    With ``attention="nonlocal"`` the decoder's attention is a non-local block
    (:class:`attnunet.blocks.NonLocalBlock`) applied to the coarse decoder feature before upsampling, so
    it runs at levels 1 ... depth (1/2 ... 1/2**depth of the input resolution per pooled axis), never at
    full resolution; it pools its keys by its level's pooling. ``"gate"`` puts Oktay et al.'s additive
    gates on the skips instead; ``"none"`` is the same U-Net without attention.

    Any spatial size is accepted: each spatial dim of the input is zero-padded at its end to a multiple
    of its total pooling (``2**depth`` by default; the product of that axis's ``pool_sizes``), and to at
    least twice that, so the bottom level has two voxels per dim and normalisation works in training
    with batch size 1; the output is cropped back to the input's size.

    In eval mode without autograd (``torch.no_grad``, ``torch.inference_mode``) on the CPU, with batch
    norm, the forward takes an inference path that computes the same output (to float rounding) from
    the same parameters in fewer passes: batch norm folded into the convolutions, activations in place,
    channels-last tensors, 1x1 convolutions as matrix products (see :mod:`attnunet.blocks`). It is
    eager-only and steps aside for anything that looks at the modules (forward hooks, tracing,
    TorchScript, ``torch.compile``, ONNX export); ``has_inference_path = False`` switches it off.

    References:
        Wang et al. "Non-local Neural Networks". CVPR 2018, https://arxiv.org/abs/1711.07971
        Oktay et al. "Attention U-Net: Learning Where to Look for the Pancreas". MIDL 2018,
        https://arxiv.org/abs/1804.03999

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input image.
        out_channels: channels of the output logits (classes).
        init_features: features of the stem; stage ``i`` has ``init_features * 2**i``. Defaults to 32.
        depth: number of downsamplings (and decoder stages). Defaults to 4.
        attention: ``"nonlocal"`` (default), ``"gate"`` or ``"none"``.
        attention_levels: decoder levels that get attention, each in ``1..depth``; level ``k`` is the
            stage whose coarse input is at encoder level ``k`` (``1/2**k`` of the input resolution with the
            default pooling; for ``"gate"``, the gate on the skip at level ``k - 1``). ``None`` (default):
            every level.
        norm: normalisation, a name or (name, kwargs) for MONAI's ``Norm`` factory, e.g. ``"batch"``,
            ``"instance"``, ``("group", {"num_groups": 8})``. Defaults to ``"batch"``.
        act: activation, a name or (name, kwargs) for MONAI's ``Act`` factory. Defaults to ``"relu"``.
        dropout: dropout probability after each 3x3 convolution. Defaults to 0.
        upsample: MONAI ``UpSample`` mode of the decoder: ``"nontrainable"`` (linear interpolation, as the
            document, default) or ``"deconv"`` (transposed convolution).
        zero_init_attention: initialise each non-local block's output projection ``W`` to zero, so the
            block starts as the identity on its projected input (Wang et al.). Defaults to False.
        deep_supervision: add a 1x1 head to every decoder stage but the last; in training mode (with
            autograd) the forward then returns a list of logits, full resolution first, then 1/2, 1/4 ...
            (each cropped to the input's size at its scale), for ``monai.losses.DeepSupervisionLoss``.
            Eval mode returns the full-resolution logits alone, as without it. Defaults to False (the
            document has none; the training recipe turns it on, benchmarks/README.md). With
            ``pool_sizes``, each output's scale is per axis (the product of the poolings above it).
        pool_sizes: ``depth`` entries, encoder levels 1 ... depth, each ``spatial_dims`` ints in {1, 2}: the
            max-pooling (kernel and stride) of that downsampling per axis, e.g.
            ``[[2, 2, 1], [2, 2, 1], [2, 2, 2]]`` for thick slices along the last axis. ``None`` (default):
            2 on every axis.
        kernel_sizes: ``depth + 1`` entries, the stem (full resolution) then encoder levels 1 ... depth,
            each ``spatial_dims`` odd ints (padding ``k // 2``), e.g. ``[[3, 3, 1], [3, 3, 1], [3, 3, 3],
            [3, 3, 3]]``; the bottom block uses level ``depth``'s. ``None`` (default): 3 on every axis.

    Shapes:
        input ``(B, in_channels, *spatial)`` -> output ``(B, out_channels, *spatial)`` (with
        ``deep_supervision`` in training mode, a list of such tensors at decreasing resolutions).

    Example::

        >>> net = AttentionUNet(3, in_channels=1, out_channels=3, init_features=8)
        >>> net(torch.randn(1, 1, 40, 37, 33)).shape
        torch.Size([1, 3, 40, 37, 33])
        >>> thick = AttentionUNet(3, 1, 3, init_features=4, depth=2, pool_sizes=[[2, 2, 1], [2, 2, 1]],
        ...     kernel_sizes=[[3, 3, 1], [3, 3, 1], [3, 3, 3]])
        >>> thick.multiple, thick(torch.randn(1, 1, 40, 37, 3)).shape
        ([4, 4, 1], torch.Size([1, 3, 40, 37, 3]))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        init_features: int = 32,
        depth: int = 4,
        *,
        attention: str = "nonlocal",
        attention_levels: Sequence[int] | None = None,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
        upsample: str = "nontrainable",
        zero_init_attention: bool = False,
        deep_supervision: bool = False,
        pool_sizes: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"AttentionUNet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        _positive_int("in_channels", in_channels)
        _positive_int("out_channels", out_channels)
        _positive_int("init_features", init_features)
        _positive_int("depth", depth)
        attention = look_up_option(attention, ATTENTION_MODES)
        upsample = look_up_option(upsample, ("nontrainable", "deconv"))
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"AttentionUNet: dropout must be in [0, 1), got {dropout!r}")
        levels = tuple(range(1, depth + 1)) if attention_levels is None else tuple(attention_levels)
        if attention == "none" and attention_levels is not None:
            raise ValueError("AttentionUNet: attention_levels has no effect with attention='none'; drop it")
        bad = [level for level in levels if not isinstance(level, int) or not 1 <= level <= depth]
        if bad:
            raise ValueError(
                f"AttentionUNet: attention_levels must be ints in 1..depth={depth} "
                f"(level k runs at 1/2**k of the input resolution), got {list(levels)}"
            )
        pools = ((2,) * spatial_dims,) * depth
        if pool_sizes is not None:
            pools = sizes_per_level(
                "AttentionUNet", "pool_sizes", pool_sizes, depth, f"depth={depth}", spatial_dims, odd=False
            )
        kernels = ((3,) * spatial_dims,) * (depth + 1)
        if kernel_sizes is not None:
            kernels = sizes_per_level(
                "AttentionUNet", "kernel_sizes", kernel_sizes, depth + 1, f"depth + 1 = {depth + 1}",
                spatial_dims, odd=True,
            )  # fmt: skip

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.pool_sizes = pools
        self.kernel_sizes = kernels
        # scales[k]: per axis, how many input voxels one voxel of level k spans (the poolings above it)
        self.scales = [
            [math.prod(p[axis] for p in pools[:k]) for axis in range(spatial_dims)] for k in range(depth + 1)
        ]
        self.multiple = self.scales[depth]  # per axis: the padded size is a multiple of it
        self.attention = attention
        self.attention_levels = levels if attention != "none" else ()

        features = [init_features * 2**i for i in range(depth + 1)]
        options = {"norm": norm, "act": act, "dropout": dropout}
        self.stem = TwoConv(spatial_dims, in_channels, features[0], kernel_size=kernels[0], **options)
        # encoder[i] pools from level i to level i + 1 by pools[i] and convolves with kernels[i + 1]
        self.encoder = nn.ModuleList(
            Down(
                spatial_dims,
                features[i],
                features[i + 1],
                pool_size=pools[i],
                kernel_size=kernels[i + 1],
                **options,
            )
            for i in range(depth)
        )
        self.bottom = TwoConv(spatial_dims, features[-1], features[-1], kernel_size=kernels[depth], **options)
        # decoder[j] starts at level depth - j (1/2**(depth - j) resolution) and ends at depth - j - 1
        self.decoder = nn.ModuleList(
            DecoderStage(
                spatial_dims,
                features[level],
                features[level - 1],
                attention=attention if level in self.attention_levels else "none",
                norm=norm,
                act=act,
                dropout=dropout,
                upsample=upsample,
                zero_init_attention=zero_init_attention,
                scale_factor=pools[level - 1],
                kernel_size=kernels[level - 1],
            )
            for level in range(depth, 0, -1)
        )
        self.head = Convolution(spatial_dims, features[0], out_channels, kernel_size=1, conv_only=True)
        # supervision_heads[j] reads decoder[j]'s output (1/2**(depth - j - 1) resolution); empty without
        # deep supervision, so the parameters of a network without it are unchanged
        self.supervision_heads = nn.ModuleList(
            Convolution(spatial_dims, features[level - 1], out_channels, kernel_size=1, conv_only=True)
            for level in range(depth, 1, -1)
            if deep_supervision
        )
        # The CPU inference path (see forward) needs batch norm, which it folds into the convolutions;
        # instance and group norm need statistics of each input and would copy channels-last tensors back.
        self.has_inference_path = split_args(norm)[0].lower() == "batch"

    def check_input_shape(self, shape: list[int]) -> None:
        """Raise a ``ValueError`` saying what was expected unless ``shape`` is (B, in_channels, *spatial)."""
        if len(shape) != self.spatial_dims + 2:
            raise ValueError(
                f"AttentionUNet(spatial_dims={self.spatial_dims}) expects a {self.spatial_dims + 2}D input "
                f"(batch, {self.in_channels} channels, {self.spatial_dims} spatial dims), got shape {shape}"
            )
        if shape[1] != self.in_channels:
            raise ValueError(
                f"AttentionUNet(in_channels={self.in_channels}) expects {self.in_channels} input channels "
                f"in dim 1, got shape {shape}"
            )

    def padded_size(self, spatial: list[int]) -> list[int]:
        """The spatial size the network computes on: each dim rounded up to a multiple of its total
        pooling ``multiple`` (``2**depth`` by default), and at least twice that, so that the bottom level
        keeps two voxels along it; a dim that is never pooled is left as it is (a 2D configuration's
        patches of one slice stay one slice)."""
        padded: list[int] = []
        for size, multiple in zip(spatial, self.multiple, strict=True):
            padded.append(max(-(-size // multiple), 2 if multiple > 1 else 1) * multiple)
        return padded

    def forward(self, x: torch.Tensor):  # a tensor, or a list of them (see ``deep_supervision``)
        self.check_input_shape(list(x.shape))
        spatial = list(x.shape[2:])
        padded = self.padded_size(spatial)
        pad: list[int] = []
        for i in range(len(spatial) - 1, -1, -1):  # F.pad lists the last dim first
            pad += [0, padded[i] - spatial[i]]
        if padded != spatial:
            x = F.pad(x, pad)

        # TorchScript skips, without compiling it, the block of a bare `if not torch.jit.is_scripting():`
        # (a combined condition would be compiled, hence two ifs): scripted networks run the modules.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self.has_inference_path and inference_path_applies(self, x):
                return self._crop(self._forward_inference(x), spatial, padded).contiguous()
            if len(self.supervision_heads) and self.training and torch.is_grad_enabled():
                return self._forward_supervised(x, spatial)
        h, skips = self._encode(x)
        for stage in self.decoder:
            h = stage(h, skips)  # pops the skip it uses
        return self._crop(self.head(h), spatial, padded)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The bottom block's output and the skips, finest first."""
        h = self.stem(x)
        skips: list[torch.Tensor] = []
        for down in self.encoder:
            skips.append(h)
            h = down(h)
        return self.bottom(h), skips

    def _forward_supervised(self, x: torch.Tensor, spatial: list[int]) -> list[torch.Tensor]:
        """``forward`` with deep supervision in training: the full-resolution logits, then each
        supervised decoder stage's, finest first, each cropped to ``ceil(spatial / scale)`` per axis."""
        h, skips = self._encode(x)
        coarse: list[torch.Tensor] = []
        for j, stage in enumerate(self.decoder):
            h = stage(h, skips)
            if j < len(self.supervision_heads):
                scale = self.scales[self.depth - j - 1]  # decoder[j] ends at level depth - j - 1
                size = [-(-s // f) for s, f in zip(spatial, scale, strict=True)]
                logits = self.supervision_heads[j](h)
                coarse.append(self._crop(logits, size, list(logits.shape[2:])))
        return [self._crop(self.head(h), spatial, list(h.shape[2:])), *reversed(coarse)]

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` before cropping, on the inference path: the same modules and parameters through
        :func:`attnunet.blocks.forward_inference`, on channels-last tensors, in which oneDNN convolves
        without reordering each input and output and max-pooling and trilinear upsampling are several
        times faster than channels-first (``benchmarks/README.md``: the 3D 96^3 forward takes about 20%
        less time than module by module).
        """
        h = forward_inference(self.stem, x.contiguous(memory_format=channels_last(self.spatial_dims)))
        skips: list[torch.Tensor] = []
        for down in self.encoder:
            skips.append(h)
            h = forward_inference(down, h)
        h = forward_inference(self.bottom, h)
        for stage in self.decoder:
            h = stage.forward_inference(h, skips)
        return forward_inference(self.head, h)

    @staticmethod
    def _crop(out: torch.Tensor, spatial: list[int], padded: list[int]) -> torch.Tensor:
        """``out``, computed at the ``padded`` size, cropped back to the input's ``spatial`` size."""
        if padded != spatial:
            for i in range(len(spatial)):
                out = out.narrow(i + 2, 0, spatial[i])
        return out
